"""Tests of the audio-visual AutoAttack parts: APGD-T and its targeted DLR loss, the Square attack, and
agreement of our APGD and Square with torchattacks' on a visual-only model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from attacks import (
    APGD,
    APGDTargeted,
    Square,
    build_attack,
    margin,
    square_fraction,
    targeted_difference_of_logits_ratio,
)
from attacks.threat import ThreatModel
from models import AVModel, ModelOutput, build_model
from tests.test_attacks import fit, with_range_extremes

C, SIZE, FRAMES, L, N = 6, 16, 2, 1024, 32
STD = torch.tensor([0.229, 0.224, 0.225])
NEW_ATTACKS = {"apgd-t": {"steps": 5, "n_target_classes": 3, "random_start": True}, "square": {"queries": 30}}
Batch = tuple[Tensor, Tensor, Tensor]

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_batch(n: int, gen: torch.Generator, colours: Tensor, freqs: Tensor) -> Batch:
    """Class-dependent frame colour and tone, both under noise; pixels kept inside (0.05, 0.95)."""
    labels = torch.arange(n) % C
    frames = colours[labels].view(n, 3, 1, 1, 1) + 0.2 * torch.randn(n, 3, FRAMES, SIZE, SIZE, generator=gen)
    t = torch.arange(L) / 11025
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    audio = 0.3 * torch.sin(2 * math.pi * freqs[labels, None] * t + phase) + 0.1 * torch.randn(n, L, generator=gen)
    return frames.clamp(0.05, 0.95), audio.clamp(-0.9, 0.9)[:, None], labels


def train(head: str, steps: int = 40) -> tuple[AVModel, Batch]:
    """A small model (``head`` 'visual' or 'concat') trained with SGD, in eval mode, and a held-out batch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    colours = 0.5 + 0.15 * (2 * torch.rand(C, 3, generator=gen) - 1)
    freqs = torch.linspace(300, 900, C)
    model = build_model(arch_frame="smallcnn", frame_dim=16, arch_sound="anet", sound_dim=16,
                        arch_classifier=head, cls_num=C)
    model = fit(model, lambda n: synthetic_batch(n, gen, colours, freqs), batch_size=64, steps=steps, lr=0.05)
    return model, synthetic_batch(N, gen, colours, freqs)


@pytest.fixture(scope="module")
def visual() -> tuple[AVModel, Batch]:
    return train("visual")


@pytest.fixture(scope="module")
def audio_visual() -> tuple[AVModel, Batch]:
    return train("concat")


def accuracy(model: nn.Module, frames: Tensor, audio: Tensor | None, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(frames, audio).logits.argmax(1) == labels).float().mean().item()


class FramesOnly(nn.Module):
    """A visual-only model as torchattacks sees an image classifier: ``[B, 3, H, W]`` in [0, 1] -> logits
    (one-frame clips). Built in eval mode: torchattacks puts a model that was in training mode back into
    training mode after an attack, which would switch the wrapped model's batch norm to batch statistics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.unsqueeze(2), None).logits


class Recorder(nn.Module):
    """Passes calls to the model and records every forward's inputs, logits and grad mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[Tensor, Tensor | None, Tensor, bool]] = []

    def forward(self, frames: Tensor, audio: Tensor | None) -> ModelOutput:
        out = self.model(frames, audio)
        self.calls.append((frames.detach().clone(), None if audio is None else audio.detach().clone(),
                           out.logits.detach(), torch.is_grad_enabled()))
        return out


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_y - max_{i!=y} z_i`` from the sorted logits."""
    top2 = logits.sort(dim=1, descending=True).values[:, :2]
    z_y = logits[torch.arange(labels.numel()), labels]
    return torch.where(top2[:, 0] == z_y, z_y - top2[:, 1], z_y - top2[:, 0])


def span(mask: Tensor) -> Tensor:
    """Per row of ``mask [N, K]``, the length from its first True to its last (0 without any)."""
    positions = torch.arange(mask.shape[1])
    first = torch.where(mask, positions, mask.shape[1]).amin(dim=1)
    last = torch.where(mask, positions, -1).amax(dim=1)
    return (last - first + 1).clamp_min(0)


# ------------------------------------------------------------------ losses and schedules by hand


def test_targeted_dlr_matches_hand_computed_values() -> None:
    logits = torch.tensor([[4.0, 2.0, 1.0, 0.0, -1.0],
                           [4.0, 2.0, 1.0, 0.0, -1.0],
                           [0.0, 1.0, 5.0, 3.0, 2.0]])
    labels = torch.tensor([0, 2, 2])
    targets = torch.tensor([1, 0, 3])
    # pi1 = 4, pi3 = 1, pi4 = 0 -> denominator 3.5 in the first two rows; 5 - (2 + 1) / 2 = 3.5 in the third.
    expected = torch.tensor([-(4 - 2) / 3.5, -(1 - 4) / 3.5, -(5 - 3) / 3.5])
    loss = targeted_difference_of_logits_ratio(targets)
    out = ModelOutput(logits, None, None, None)
    torch.testing.assert_close(loss(out, labels), expected)
    torch.testing.assert_close(loss(out._replace(logits=3 * logits + 7), labels), expected)  # shift and scale
    with pytest.raises(ValueError, match="at least 4 classes"):
        loss(out._replace(logits=logits[:, :3]), labels)


def test_margin_matches_hand_computed_values() -> None:
    logits = torch.tensor([[3.0, 1.0, -2.0], [3.0, 1.0, -2.0], [0.5, 0.5, 0.0]])
    got = margin(ModelOutput(logits, None, None, None), torch.tensor([0, 2, 1]))
    torch.testing.assert_close(got, torch.tensor([1.0 - 3.0, 3.0 - -2.0, 0.0]))


def test_square_fraction_follows_the_paper_schedule() -> None:
    # 10000 queries: p_init up to iteration 10, halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    got = [square_fraction(i, 10000, 0.8) for i in (0, 10, 11, 50, 51, 200, 201, 4001, 8000, 8001, 9999)]
    assert got == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 128, 0.8 / 256, 0.8 / 512, 0.8 / 512])
    # 5000 queries: the same schedule rescaled, so iteration 6 is 12 of 10000.
    assert [square_fraction(i, 5000, 0.5) for i in (5, 6, 2500)] == pytest.approx([0.5, 0.25, 0.5 / 128])


def test_target_classes_are_the_highest_other_logits() -> None:
    from attacks import target_classes
    logits = torch.tensor([[0.1, 3.0, 2.0, 5.0, -1.0], [4.0, 1.0, 2.0, 3.0, 0.0]])
    assert target_classes(logits, torch.tensor([1, 0]), 3).tolist() == [[3, 2, 0], [3, 2, 1]]


# ------------------------------------------------------------------ feasibility, untouched inputs, determinism


@pytest.mark.parametrize("units", ["normalized", "pixel"])
@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_new_attacks_stay_in_the_ball_and_the_range(audio_visual, name: str, units: str) -> None:
    model, (frames, audio, labels) = audio_visual
    frames, audio = with_range_extremes(frames, audio, rows=3, samples=128)
    eps = {"visual": 0.2, "audio": 0.05}
    adv_frames, adv_audio = build_attack(name, model, ThreatModel.of(eps, units=units), seed=0, **NEW_ATTACKS[name])(
        frames, audio, labels)
    bound_v = eps["visual"] * (STD if units == "normalized" else torch.ones(3))
    delta_v = (adv_frames - frames).abs().amax(dim=(0, 2, 3, 4))
    assert (delta_v <= bound_v + 1e-6).all(), (delta_v, bound_v)
    assert (adv_audio - audio).abs().max() <= eps["audio"] + 1e-6
    assert adv_frames.min() >= 0 and adv_frames.max() <= 1
    assert adv_audio.min() >= -1 and adv_audio.max() <= 1
    assert (delta_v > bound_v / 2).all() and (adv_audio - audio).abs().max() > eps["audio"] / 2


@pytest.mark.parametrize("zero", ["visual", "audio"])
@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_new_attacks_return_a_zero_budget_modality_as_passed_in(audio_visual, name: str, zero: str) -> None:
    model, (frames, audio, labels) = audio_visual
    other = "audio" if zero == "visual" else "visual"
    adv = dict(zip(("visual", "audio"), build_attack(name, model, {zero: 0.0, other: 0.2}, seed=0,
                                                     **NEW_ATTACKS[name])(frames, audio, labels)))
    clean = {"visual": frames, "audio": audio}
    assert adv[zero] is clean[zero]
    assert not torch.equal(adv[other], clean[other])


@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_new_attacks_are_deterministic_for_a_seed(audio_visual, name: str) -> None:
    model, (frames, audio, labels) = audio_visual
    eps = {"visual": 0.2, "audio": 0.02}

    def run(seed: int) -> tuple[Tensor, Tensor]:
        return build_attack(name, model, eps, seed=seed, **NEW_ATTACKS[name])(frames, audio, labels)

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# ------------------------------------------------------------------ APGD-T


def test_apgd_t_fools_at_least_as_many_as_apgd_ce(visual) -> None:
    """With all 5 other classes as targets, 20 steps each, against APGD-CE with 20 steps; one target
    alone does worse here, so the targets after the first do work."""
    model, (frames, _, labels) = visual
    eps = {"visual": 0.04}
    ce = accuracy(model, *build_attack("apgd", model, ThreatModel.of(eps, units="pixel"),
                                       steps=20)(frames, None, labels), labels)
    targeted = {n: accuracy(model, *APGDTargeted(model, ThreatModel.of(eps, units="pixel"),
                                                 steps=20, n_target_classes=n)(
        frames, None, labels), labels) for n in (1, 5)}
    assert targeted[5] <= ce < accuracy(model, frames, None, labels)
    assert targeted[5] < targeted[1]


def test_apgd_t_attacks_each_target_on_the_samples_not_yet_fooled(visual) -> None:
    """Each target's run starts on the samples no earlier run fooled, and within a run a fooled sample leaves
    the batch at once (the recorded batches only shrink)."""
    model, (frames, _, labels) = visual
    recorder = Recorder(model)
    steps, targets = 4, 5
    runs: list[tuple[int, int]] = []  # (samples attacked, samples the run fooled)

    class Counted(APGDTargeted):
        def run(self, problem):
            best = super().run(problem)
            runs.append((problem.labels.numel(), int(best.fooled.sum())))
            return best

    adv, _ = Counted(recorder, ThreatModel.of({"visual": 0.04}, units="pixel"),
                     steps=steps, n_target_classes=targets)(frames, None, labels)
    sizes = [c[0].shape[0] for c in recorder.calls]
    assert sizes[0] == N and not recorder.calls[0][3]  # the clean logits that pick the targets
    clean_fooled = int((recorder.calls[0][2].argmax(1) != labels).sum())
    assert 1 < len(runs) <= targets and runs[0][0] == N - clean_fooled
    for (size, fooled), (next_size, _) in zip(runs, runs[1:]):
        assert next_size == size - fooled  # the next target attacks exactly the samples still standing
    assert len(sizes) - 1 <= len(runs) * (steps + 1) and any(b < a for a, b in zip(sizes[1:], sizes[2:]))
    robust = int((model(adv, None).logits.argmax(1) == labels).sum())
    assert robust == runs[-1][0] - runs[-1][1]


def test_apgd_t_options(visual) -> None:
    model, _ = visual
    attack = build_attack("apgd-t", model, {"visual": 0.1}, steps=None, alpha=0.5, loss="ce", queries=10,
                          n_target_classes=3, random_start=True, restarts=2, eot_iter=2, seed=1)
    assert (attack.steps, attack.n_target_classes, attack.restarts, attack.eot_iter, attack.seed) == (100, 3, 2, 2, 1)
    with pytest.raises(ValueError, match="n_target_classes"):
        APGDTargeted(model, {"visual": 0.1}, n_target_classes=0)


def test_apgd_t_needs_four_classes(visual) -> None:
    _, (frames, _, labels) = visual
    model = build_model(arch_frame="smallcnn", frame_dim=16, arch_classifier="visual", cls_num=3).eval()
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGDTargeted(model, {"visual": 0.1}, steps=2)(frames, None, labels % 3)


# ------------------------------------------------------------------ Square


def test_square_options(visual) -> None:
    """The shared gradient-attack flags are ignored by Square (its defaults stay); bad values raise."""
    model, _ = visual
    square = build_attack("square", model, {"visual": 0.1}, steps=7, alpha=0.01, loss="dlr", random_start=True,
                          restarts=1, eot_iter=1, queries=None, p_init=0.3, seed=2, n_target_classes=4)
    assert (square.queries, square.p_init, square.seed, square.loss_name) == (5000, 0.3, 2, "margin")
    with pytest.raises(ValueError, match="queries"):
        Square(model, {"visual": 0.1}, queries=0)
    with pytest.raises(ValueError, match="p_init"):
        Square(model, {"visual": 0.1}, p_init=1.5)


def replay_square(calls: list, labels: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Replays Square's acceptance rule on its recorded queries: the first is every sample's start; each
    later one holds a candidate for each sample not yet misclassified (in index order), kept if it lowers
    that sample's margin. Returns the kept frames and audio, and each query's sample indices."""
    frames, audio, logits = calls[0][0].clone(), calls[0][1].clone(), calls[0][2]
    best = logit_margin(logits, labels)
    fooled = logits.argmax(1) != labels
    queried = [torch.arange(labels.numel())]
    for cand_frames, cand_audio, cand_logits, _ in calls[1:]:
        index = (~fooled).nonzero().squeeze(1)
        assert cand_frames.shape[0] == index.numel()
        new = logit_margin(cand_logits, labels[index])
        keep = new < best[index]
        rows = index[keep]
        frames[rows], audio[rows], best[rows] = cand_frames[keep], cand_audio[keep], new[keep]
        fooled[rows] = cand_logits[keep].argmax(1) != labels[rows]
        queried.append(index)
    return frames, audio, queried


def test_square_keeps_a_candidate_only_if_the_margin_falls_and_queries_only_robust_samples(audio_visual) -> None:
    model, (frames, audio, labels) = audio_visual
    recorder = Recorder(model)
    queries = 40
    adv = Square(recorder, {"visual": 0.3, "audio": 0.03}, queries=queries, seed=0)(frames, audio, labels)
    assert not any(c[3] for c in recorder.calls)  # logits only: no graph, no gradients
    assert all(p.grad is None for p in model.parameters())
    kept_frames, kept_audio, queried = replay_square(recorder.calls, labels)
    assert torch.equal(adv[0], kept_frames) and torch.equal(adv[1], kept_audio)
    sizes = [q.numel() for q in queried]
    assert len(sizes) <= queries + 1 and sizes == sorted(sizes, reverse=True) and 0 < sizes[-1] < N


def test_square_windows(audio_visual) -> None:
    """The start: vertical stripes of ±eps (per sample, channel and column) and ±eps per waveform sample.
    Each query: the frames change only inside one square (side from the schedule), in the same place on
    every frame, and the waveform only inside one window of the scheduled length; every value stays at
    clean ± eps. A budget small enough that no sample is fooled keeps every query on the whole batch."""
    model, (frames, audio, labels) = audio_visual
    recorder = Recorder(model)
    eps = {"visual": 0.01, "audio": 0.001}
    queries, p_init = 12, 0.8
    Square(recorder, ThreatModel.of(eps, units="pixel"), queries=queries, p_init=p_init, seed=1)(frames, audio, labels)
    calls = recorder.calls
    assert len(calls) == queries + 1 and all(c[0].shape[0] == N for c in calls)
    for cand_frames, cand_audio, _, _ in calls:
        torch.testing.assert_close((cand_frames - frames).abs(), torch.full_like(frames, eps["visual"]))
        torch.testing.assert_close((cand_audio - audio).abs(), torch.full_like(audio, eps["audio"]))
    start = (calls[0][0] - frames).sign()
    assert torch.equal(start, start[:, :, :1, :1, :].expand_as(start))  # constant down each column, all frames
    assert (start[:, :, 0, 0, :] != start[:, :, 0, 0, :1]).any()  # but not across columns
    assert ((calls[0][1] - audio).sign() > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    full_sides = 0
    for k in range(queries):
        kept_frames, kept_audio, _ = replay_square(calls[:k + 1], labels)
        cand_frames, cand_audio = calls[k + 1][:2]
        p = square_fraction(k, queries, p_init)
        side, length = max(1, min(round(math.sqrt(p * SIZE * SIZE)), SIZE - 1)), max(1, round(p * L))
        changed = cand_frames != kept_frames  # [N, 3, T, H, W]
        assert torch.equal(changed[:, :, :1].expand_as(changed), changed)
        rows, cols = changed.any(dim=(1, 2, 4)), changed.any(dim=(1, 2, 3))
        audio_changed = cand_audio[:, 0] != kept_audio[:, 0]
        for mask, limit in ((rows, side), (cols, side), (audio_changed, length)):
            assert (span(mask) <= limit).all() and (span(mask) > 0).all(), k
        full_sides += int((span(rows) == side).sum())
    assert full_sides > 0


# ------------------------------------------------------------------ reference: torchattacks' APGD and Square


def test_apgd_matches_torchattacks(visual) -> None:
    """APGD-CE, 20 steps, no restarts, eps 0.03 in pixels, on one-frame clips: ours from the clean input
    (our default) and from a seeded random start, against torchattacks' APGD (random start, seed 0).

    Tolerance: one sample of 32. The runs differ in the start and in how the step-size checkpoints are
    rounded; on this batch seeds 0-4 of either implementation moved the robust count by at most one.
    """
    import torchattacks  # a dev requirement: the reference must run, not be skipped
    model, (frames, _, labels) = visual
    frames = frames[:, :, :1]
    eps = 0.03
    reference = torchattacks.APGD(FramesOnly(model), eps=eps, steps=20, n_restarts=1, loss="ce", seed=0)(
        frames[:, :, 0], labels)
    acc_ref = accuracy(model, reference.unsqueeze(2), None, labels)
    assert 0.2 < acc_ref < accuracy(model, frames, None, labels) - 0.2  # a budget where the attack half works
    for start in ({}, {"random_start": True, "seed": 0}):
        adv, _ = build_attack("apgd", model, ThreatModel.of({"visual": eps}, units="pixel"),
                              steps=20, loss="ce", **start)(
            frames, None, labels)
        assert abs(accuracy(model, adv, None, labels) - acc_ref) <= 1 / N + 1e-9, start


def test_square_matches_torchattacks(visual) -> None:
    """Square, 200 queries, p_init 0.8, eps 0.04 in pixels, on one-frame clips: mean robust accuracy of
    seeds 0-2, ours against torchattacks' Square (margin loss, rescaled schedule).

    Tolerance: 3 samples of 32 on the means. The two random searches cannot agree run by run (ours draws a
    window per sample and redraws a window that would change nothing; torchattacks' draws one per query
    for the whole batch), only in distribution: on this batch single runs of either spread over 18-25 of
    32 across 8 seeds (a standard deviation of about 2 samples), so means of 3 differ by ~1.7 samples'
    standard deviation, and 3 samples is about 1.8 of those.
    """
    import torchattacks
    model, (frames, _, labels) = visual
    frames = frames[:, :, :1]
    eps, queries, seeds = 0.04, 200, (0, 1, 2)
    ours = [accuracy(model, Square(model, ThreatModel.of({"visual": eps}, units="pixel"), queries=queries, seed=s)(
        frames, None, labels)[0], None, labels) for s in seeds]
    reference = [accuracy(model, torchattacks.Square(FramesOnly(model), eps=eps, n_queries=queries, p_init=0.8,
                                                     seed=s)(frames[:, :, 0], labels).unsqueeze(2), None, labels)
                 for s in seeds]
    clean = accuracy(model, frames, None, labels)
    assert all(0 < a < clean for a in ours + reference)
    assert abs(sum(ours) / len(seeds) - sum(reference) / len(seeds)) <= 3 / N + 1e-9, (ours, reference)


def test_apgd_t_matches_torchattacks(visual) -> None:
    """APGD-T, 20 steps per target, all 5 other classes, eps 0.03 in pixels, on one-frame clips: ours from a
    seeded random start against torchattacks' APGDT (random start, seed 0). Tolerance: one sample of 32 (on
    this batch both leave 17 of 32 at seeds 0-2, and 28 of 32 at eps 0.02)."""
    import torchattacks
    model, (frames, _, labels) = visual
    frames = frames[:, :, :1]
    eps = 0.03
    reference = torchattacks.APGDT(FramesOnly(model), eps=eps, steps=20, n_restarts=1, n_classes=C, seed=0)(
        frames[:, :, 0], labels)
    acc_ref = accuracy(model, reference.unsqueeze(2), None, labels)
    assert 0.2 < acc_ref < accuracy(model, frames, None, labels) - 0.2
    adv, _ = build_attack("apgd-t", model, ThreatModel.of({"visual": eps}, units="pixel"), steps=20,
                          n_target_classes=C - 1, random_start=True, seed=0)(frames, None, labels)
    assert abs(accuracy(model, adv, None, labels) - acc_ref) <= 1 / N + 1e-9


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_fab_t_matches_torchattacks(visual, norm: str, eps: float) -> None:
    """FAB-T, 20 steps per target, all 5 other classes, on one-frame clips (L-inf eps 0.03, L2 eps 0.5 in
    pixels): ours against torchattacks' multi-targeted FAB (AutoAttack's FAB-T, no restarts). Tolerance: one
    sample of 32 (on this batch: 20 and 20 of 32 under L-inf, 24 and 25 under L2; our projections are solved
    exactly in float64, the reference's by bisection in float32)."""
    import torchattacks
    model, (frames, _, labels) = visual
    frames = frames[:, :, :1]
    reference = torchattacks.FAB(FramesOnly(model), norm="Linf" if norm == "linf" else "L2", eps=eps, steps=20,
                                 n_restarts=1, multi_targeted=True, n_classes=C)(frames[:, :, 0], labels)
    acc_ref = accuracy(model, reference.unsqueeze(2), None, labels)
    assert 0.2 < acc_ref < accuracy(model, frames, None, labels) - 0.2
    adv, _ = build_attack("fab-t", model, ThreatModel.of({"visual": eps}, norm=norm, units="pixel"), steps=20,
                          n_target_classes=C - 1)(frames, None, labels)
    d = (adv - frames).flatten(1)
    assert ((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)) <= eps * (1 + 1e-5)).all()
    assert abs(accuracy(model, adv, None, labels) - acc_ref) <= 1 / N + 1e-9


# ------------------------------------------------------------------ APGD's step-size schedule does the work


class Bowl(nn.Module):
    """An audio-only "model" whose first logit is ``-||audio - target||^2`` (the loss attacked here) and whose
    second is 1, so no point is ever misclassified: the attack must climb to the bowl's top, ``target``."""

    uses_visual = False

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.target = target

    def forward(self, frames: Tensor | None, audio: Tensor) -> ModelOutput:
        height = -(audio - self.target).flatten(1).pow(2).sum(1)
        return ModelOutput(torch.stack([height, torch.ones_like(height)], 1), None, None, None)


def test_apgd_halves_its_step_to_reach_a_maximum_inside_the_ball() -> None:
    """The loss peaks inside the ball (each coordinate up to 0.8 eps from the clean input), where sign steps of
    a fixed size bounce between faces: APGD gets within 5 % of eps of the peak in 100 steps only because its
    step size halves at the checkpoints (without the halving, 39-42 % of eps on this batch)."""
    gen = torch.Generator().manual_seed(0)
    audio = 0.5 * torch.rand(4, 1, 16, generator=gen) - 0.25
    eps = 0.1
    target = audio + eps * (1.6 * torch.rand(audio.shape, generator=gen) - 0.8)

    def height(out: ModelOutput, labels: Tensor) -> Tensor:
        return out.logits[:, 0]

    attack = APGD(Bowl(target), ThreatModel(0.0, eps, units="pixel"), steps=100, loss=height)
    adv = attack(None, audio, torch.ones(4, dtype=torch.long))[1]
    assert ((adv - target).abs().amax(dim=(1, 2)) < 0.05 * eps).all()


@pytest.mark.parametrize("name", ["apgd-t", "fab-t"])
def test_given_clean_logits_spare_the_clean_pass_and_change_nothing(visual, name: str) -> None:
    """The evaluation's clean logits pick the same targets as the attack's own clean pass, one pass fewer."""
    model, (frames, _, labels) = visual
    runs = {}
    for given in (False, True):
        recorder = Recorder(model)
        with torch.no_grad():
            logits = model(frames, None).logits if given else None
        attack = build_attack(name, recorder, ThreatModel.of({"visual": 0.04}, units="pixel"), steps=3,
                              n_target_classes=2)
        runs[given] = (attack(frames, None, labels, clean_logits=logits)[0], len(recorder.calls))
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][1] == runs[False][1] - 1
    with pytest.raises(ValueError, match="clean_logits must have one row per sample"):
        build_attack(name, model, {"visual": 0.01}, steps=1)(frames, None, labels, clean_logits=logits[:2])
