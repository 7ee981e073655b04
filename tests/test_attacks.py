"""Tests of the multimodal attacks: budgets and units, untouched modalities and model state, the model
interface, strength ordering, restarts, EOT, float32 under autocast, the MIM update, the losses, the
registry, and agreement with torchattacks' PGD."""
from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks import (
    APGD,
    ATTACKS,
    FGSM,
    LOSSES,
    MIM,
    PGD,
    VALID_RANGE,
    Ball,
    Problem,
    apgd_checkpoints,
    attack_options,
    build_attack,
    normalized_eps_to_pixel,
)
from attacks.threat import ThreatModel
from models import AVModel, ModelOutput, build_model

C, N, SIZE, L = 5, 32, 32, 2048
STD = torch.tensor([0.229, 0.224, 0.225])
ATTACK_NAMES = ["fgsm", "pgd", "mim", "apgd"]
# APGD's 100 default steps are kept for the strength test only.
QUICK = {"fgsm": {}, "pgd": {}, "mim": {}, "apgd": {"steps": 10}}
Batch = tuple[Tensor, Tensor, Tensor]


def small_model(head: str = "concat") -> AVModel:
    return build_model(arch_frame="smallcnn", frame_dim=32, arch_sound="anet", sound_dim=32,
                       arch_classifier=head, cls_num=C)


def synthetic_batch(n: int, gen: torch.Generator, colours: Tensor, freqs: Tensor) -> Batch:
    """Class-dependent frame colour and tone, both under noise: either modality alone is informative."""
    labels = torch.arange(n) % C
    frames = colours[labels].view(n, 3, 1, 1, 1) + 0.15 * torch.randn(n, 3, 1, SIZE, SIZE, generator=gen)
    t = torch.arange(L) / 11025
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    audio = 0.3 * torch.sin(2 * math.pi * freqs[labels, None] * t + phase) + 0.15 * torch.randn(n, L, generator=gen)
    return frames.clamp(0, 1), audio.clamp(-1, 1)[:, None], labels


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These tiny models run fastest on one thread, which also keeps a busy CI machine from stalling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> tuple[AVModel, Batch]:
    """A small AV model trained for 30 SGD steps (clean accuracy 1.0), in eval mode, and a held-out batch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    colours = 0.5 + 0.1 * (2 * torch.rand(C, 3, generator=gen) - 1)
    freqs = torch.linspace(300, 900, C)
    model = fit(small_model(), lambda n: synthetic_batch(n, gen, colours, freqs), batch_size=40, steps=30, lr=0.02)
    return model, synthetic_batch(N, gen, colours, freqs)


def fit(model: nn.Module, make_batch, batch_size: int, steps: int, lr: float) -> nn.Module:
    """``steps`` SGD steps (momentum 0.9) of cross-entropy on ``make_batch(batch_size)``; the model in eval mode."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        frames, audio, labels = make_batch(batch_size)
        loss = F.cross_entropy(model(frames, audio).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(frames, audio).logits.argmax(1) == labels).float().mean().item()


def attacked_accuracy(name: str, model: nn.Module, batch: Batch, eps: dict[str, float], **kwargs) -> float:
    frames, audio, labels = batch
    return accuracy(model, *build_attack(name, model, eps, **kwargs)(frames, audio, labels), labels)


def with_range_extremes(frames: Tensor, audio: Tensor, rows: int = 4, samples: int = 256) -> tuple[Tensor, Tensor]:
    """Copies with pixels at 0 and 1 (``rows`` rows each) and samples at -1 and 1 (``samples`` each), so that
    the range clamp has work to do."""
    frames, audio = frames.clone(), audio.clone()
    frames[..., :rows, :] = 0.0
    frames[..., -rows:, :] = 1.0
    audio[..., :samples] = 1.0
    audio[..., samples:2 * samples] = -1.0
    return frames, audio


class Recorder(nn.Module):
    """Passes calls to the model and records every forward's inputs, logits and grad mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[Tensor, Tensor, Tensor, bool]] = []

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        out = self.model(frames, audio)
        self.calls.append((frames.detach().clone(), audio.detach().clone(), out.logits.detach(),
                           torch.is_grad_enabled()))
        return out


def best_of(calls: list[tuple[Tensor, Tensor, Tensor, bool]], labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, the recorded inputs that fool the model with the highest CE, or else have the highest CE;
    also which call each comes from."""
    logits = torch.stack([c[2] for c in calls])  # [K, B, C]
    loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat(len(calls)), reduction="none").view(len(calls), -1)
    fooled = logits.argmax(-1) != labels
    pick = torch.where(fooled.any(0), torch.where(fooled, loss, -math.inf).argmax(0), loss.argmax(0))
    samples = torch.arange(labels.numel())
    frames, audio = torch.stack([c[0] for c in calls]), torch.stack([c[1] for c in calls])
    return frames[pick, samples], audio[pick, samples], pick


# ------------------------------------------------------------------ budgets, units and ranges


@pytest.mark.parametrize("units", ["normalized", "pixel"])
@pytest.mark.parametrize("name, kwargs", [*QUICK.items(), ("pgd", {"random_start": True, "restarts": 2})])
def test_adversarial_inputs_stay_in_the_ball_and_the_range(trained, name: str, kwargs: dict, units: str) -> None:
    model, (frames, audio, labels) = trained
    frames, audio = with_range_extremes(frames, audio)
    eps = {"visual": 0.3, "audio": 0.05}
    adv_frames, adv_audio = build_attack(name, model, ThreatModel.of(eps, units=units), **kwargs)(frames, audio, labels)
    bound_v = eps["visual"] * (STD if units == "normalized" else torch.ones(3))
    delta_v = (adv_frames - frames).abs().amax(dim=(0, 2, 3, 4))
    assert (delta_v <= bound_v + 1e-6).all(), (delta_v, bound_v)
    assert (adv_audio - audio).abs().max() <= eps["audio"] + 1e-6
    assert adv_frames.min() >= 0 and adv_frames.max() <= 1
    assert adv_audio.min() >= -1 and adv_audio.max() <= 1
    assert delta_v.min() > 0 and (adv_audio != audio).any()


@pytest.mark.parametrize("units", ["normalized", "pixel"])
def test_visual_budget_units_are_per_channel_when_normalized(trained, units: str) -> None:
    """FGSM moves every pixel with a non-zero gradient by the full budget, so the largest change per
    channel is the budget itself: eps * std_c in normalised units, eps in pixel units."""
    model, (frames, audio, labels) = trained
    eps = 0.05
    adv_frames, _ = FGSM(model, ThreatModel.of({"visual": eps}, units=units))(frames, audio, labels)
    expected = normalized_eps_to_pixel(eps) if units == "normalized" else torch.full((3,), eps)
    torch.testing.assert_close((adv_frames - frames).abs().amax(dim=(0, 2, 3, 4)), expected, atol=1e-6, rtol=0)


def test_normalized_eps_to_pixel() -> None:
    torch.testing.assert_close(normalized_eps_to_pixel(0.012), 0.012 * STD)
    torch.testing.assert_close(normalized_eps_to_pixel(1.0, std=(0.5, 0.25)), torch.tensor([0.5, 0.25]))


def test_alpha_is_per_modality_and_defaults_to_an_eighth_of_eps(trained) -> None:
    model, _ = trained
    assert PGD(model, {"visual": 0.08, "audio": 0.016}).alpha == pytest.approx({"visual": 0.01, "audio": 0.002})
    assert PGD(model, {"visual": 0.08}, alpha={"visual": 0.03}).alpha == pytest.approx({"visual": 0.03, "audio": 0.0})
    assert FGSM(model, {"audio": 0.02}).alpha["audio"] == pytest.approx(0.02)
    assert APGD(model, {"audio": 0.02}).alpha["audio"] == pytest.approx(0.04)


# ------------------------------------------------------------------ untouched modalities and model state


@pytest.mark.parametrize("zero", ["visual", "audio"])
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_zero_budget_modality_is_returned_unchanged(trained, name: str, zero: str) -> None:
    model, (frames, audio, labels) = trained
    other = "audio" if zero == "visual" else "visual"
    adv = dict(zip(("visual", "audio"),
                   build_attack(name, model, {zero: 0.0, other: 0.1}, **QUICK[name])(frames, audio, labels)))
    clean = {"visual": frames, "audio": audio}
    assert torch.equal(adv[zero], clean[zero])
    assert not torch.equal(adv[other], clean[other])


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_modality_the_model_does_not_use_is_returned_unchanged(trained, name: str) -> None:
    _, (frames, audio, labels) = trained
    model = small_model("visual").eval()
    adv_frames, adv_audio = build_attack(name, model, {"visual": 0.1, "audio": 0.1}, **QUICK[name])(
        frames, audio, labels)
    assert torch.equal(adv_audio, audio)
    assert not torch.equal(adv_frames, frames)
    adv_frames, adv_audio = build_attack(name, model, {"audio": 0.1}, **QUICK[name])(frames, None, labels)
    assert adv_audio is None and torch.equal(adv_frames, frames)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attacks_leave_parameters_statistics_grads_and_modes_alone(trained, name: str) -> None:
    model = copy.deepcopy(trained[0]).train()
    frames, audio, labels = trained[1]
    model.net_sound.body[1].eval()  # a mixed train/eval state must come back as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen_training: list[bool] = []
    model.net_frame.body[0][1].register_forward_pre_hook(lambda module, _: seen_training.append(module.training))
    build_attack(name, model, {"visual": 0.1, "audio": 0.1}, **QUICK[name])(frames, audio, labels)
    assert seen_training and not any(seen_training)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_attacks_work_inside_no_grad(trained) -> None:
    model, (frames, audio, labels) = trained
    attack = PGD(model, {"visual": 0.1, "audio": 0.05})
    expected = attack(frames, audio, labels)
    with torch.no_grad():
        got = attack(frames, audio, labels)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_single_modality_attacks_encode_the_fixed_modality_once(trained, name: str) -> None:
    """On a plain AVModel the encoder of the unattacked modality runs once per call, with the same
    result as running the whole model at every step (as it does for any other model)."""
    model, (frames, audio, labels) = trained
    passes = {"fgsm": 1, "pgd": 10, "mim": 10, "apgd": 11}[name]  # forward passes per call with QUICK settings
    calls: Counter[str] = Counter()
    hooks = [net.register_forward_hook(lambda *_, m=m: calls.update([m]))
             for m, net in (("visual", model.net_frame), ("audio", model.net_sound))]
    try:
        for attacked, eps in (("visual", {"visual": 0.1}), ("audio", {"audio": 0.1}),
                              ("both", {"visual": 0.1, "audio": 0.1})):
            calls.clear()
            adv = build_attack(name, model, eps, **QUICK[name])(frames, audio, labels)
            assert calls == {m: passes if attacked in (m, "both") else 1 for m in ("visual", "audio")}, attacked
            reference = build_attack(name, Recorder(model), eps, **QUICK[name])(frames, audio, labels)
            assert all(torch.equal(a, b) for a, b in zip(adv, reference)), attacked
    finally:
        for hook in hooks:
            hook.remove()


class SplitModel(nn.Module):
    """Not an ``AVModel``: only the public interface (``encode_visual``, ``encode_audio``, ``fuse``,
    ``uses_*``) around one, recording every encoder call's grad mode. Its ``forward`` must not be used."""

    uses_visual = uses_audio = True

    def __init__(self, model: AVModel) -> None:
        super().__init__()
        self.model = model
        self.grad_modes: dict[str, list[bool]] = {"visual": [], "audio": []}

    def encode_visual(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        self.grad_modes["visual"].append(torch.is_grad_enabled())
        return self.model.encode_visual(frames)

    def encode_audio(self, audio: Tensor) -> Tensor:
        self.grad_modes["audio"].append(torch.is_grad_enabled())
        return self.model.encode_audio(audio)

    def fuse(self, feat_v: Tensor | None, feat_a: Tensor | None, fmap_v: Tensor | None) -> ModelOutput:
        return self.model.fuse(feat_v, feat_a, fmap_v)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        raise AssertionError("attacks must run this model through encode_visual / encode_audio / fuse")


class PurifiedAudio(AVModel):
    """An ``AVModel`` subclass that changes ``encode_audio`` (a stand-in for a memory-bank purification) and
    records its grad modes; attacks must use it, not the plain audio encoder."""

    def __init__(self, model: AVModel) -> None:
        super().__init__(model.net_frame, model.net_sound, model.net_classifier)
        self.grad_modes: list[bool] = []

    def encode_audio(self, audio: Tensor) -> Tensor:
        self.grad_modes.append(torch.is_grad_enabled())
        return super().encode_audio(audio).tanh().mul(3)


class ForwardOverride(AVModel):
    """An ``AVModel`` subclass whose ``forward`` does more than ``fuse(*encode(...))``."""

    def __init__(self, model: AVModel) -> None:
        super().__init__(model.net_frame, model.net_sound, model.net_classifier)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        out = super().forward(frames, audio)
        return out._replace(logits=out.logits.flip(1))


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_attacks_use_only_the_public_model_interface(trained, name: str) -> None:
    """A duck-typed model is run through encode / fuse: the fixed modality is encoded once, without
    gradients; the results equal those of calling the whole model at every step."""
    model, (frames, audio, labels) = trained
    steps = {"pgd": 10, "apgd": 11}[name]
    for attacked, eps in (("visual", {"visual": 0.1}), ("both", {"visual": 0.1, "audio": 0.1})):
        split = SplitModel(model)
        adv = build_attack(name, split, eps, **QUICK[name])(frames, audio, labels)
        reference = build_attack(name, Recorder(model), eps, **QUICK[name])(frames, audio, labels)
        assert all(torch.equal(a, b) for a, b in zip(adv, reference)), attacked
        assert split.grad_modes["visual"] == [True] * steps
        assert split.grad_modes["audio"] == ([True] * steps if attacked == "both" else [False])


def test_a_subclass_encoder_is_used_and_its_fixed_modality_is_not_differentiated(trained) -> None:
    model, (frames, audio, labels) = trained
    purified = PurifiedAudio(model).eval()
    eps = {"visual": 0.1}
    adv = PGD(purified, eps)(frames, audio, labels)
    assert purified.grad_modes == [False]
    whole = PGD(Recorder(purified), eps)(frames, audio, labels)
    assert all(torch.equal(a, b) for a, b in zip(adv, whole))
    assert not torch.equal(adv[0], PGD(model, eps)(frames, audio, labels)[0])  # the purification matters


def test_a_subclass_that_overrides_forward_is_called_whole(trained) -> None:
    model, (frames, audio, labels) = trained
    flipped = ForwardOverride(model).eval()
    eps = {"visual": 0.1}
    adv = PGD(flipped, eps)(frames, audio, labels)
    assert all(torch.equal(a, b) for a, b in zip(adv, PGD(Recorder(flipped), eps)(frames, audio, labels)))
    assert not torch.equal(adv[0], PGD(model, eps)(frames, audio, labels)[0])


# ------------------------------------------------------------------ strength (no gradient masking)


def test_pgd_is_at_least_as_strong_as_fgsm(trained) -> None:
    model, batch = trained
    for eps in (0.03, 0.1):
        budget = {"visual": eps, "audio": eps}
        assert attacked_accuracy("pgd", model, batch, budget) <= attacked_accuracy("fgsm", model, batch, budget)


def test_accuracy_falls_as_eps_grows_and_reaches_zero(trained) -> None:
    model, batch = trained
    assert accuracy(model, *batch) >= 0.9
    accs = [attacked_accuracy("pgd", model, batch, {"visual": eps, "audio": eps}) for eps in (0, 0.01, 0.03, 0.1, 0.3)]
    assert accs[0] == accuracy(model, *batch)
    assert all(later <= earlier + 1 / N for earlier, later in zip(accs, accs[1:])), accs
    assert accs[-1] <= 0.1, accs
    assert accs[-2] < accs[0], accs  # the grid is not all-or-nothing


def test_apgd_is_at_least_as_strong_as_pgd(trained) -> None:
    model, batch = trained
    budget = {"visual": 0.1, "audio": 0.1}
    assert attacked_accuracy("apgd", model, batch, budget) <= attacked_accuracy("pgd", model, batch, budget)


def test_apgd_returns_the_best_iterate_per_sample(trained) -> None:
    """A robust sample keeps its highest-CE iterate of all 21; a sample leaves at its first fooling iterate (the
    run ends there for it), and leaving changes nothing for the others: each sample attacked alone (recorded
    pass by pass) gets exactly what it gets in the batch."""
    model, (frames, audio, labels) = trained
    eps = {"visual": 0.03, "audio": 0.03}
    adv = APGD(model, eps, steps=20)(frames, audio, labels)
    fooled_first = []
    for i in range(labels.numel()):
        recorder = Recorder(model)
        alone = APGD(recorder, eps, steps=20)(frames[i:i + 1], audio[i:i + 1], labels[i:i + 1])
        assert torch.allclose(alone[0], adv[0][i:i + 1], atol=1e-6) and torch.allclose(alone[1], adv[1][i:i + 1],
                                                                                        atol=1e-6)
        fooled = [bool(c[2].argmax(1) != labels[i]) for c in recorder.calls]
        best_frames, best_audio, pick = best_of(recorder.calls[:fooled.index(True) + 1] if any(fooled)
                                                else recorder.calls, labels[i:i + 1])
        assert torch.equal(alone[0], best_frames) and torch.equal(alone[1], best_audio)
        if any(fooled):
            assert len(recorder.calls) == fooled.index(True) + 1 and int(pick) == fooled.index(True)
            fooled_first.append(int(pick))
        else:
            assert len(recorder.calls) == 21
    assert fooled_first and len(fooled_first) < labels.numel()  # the budget fools some samples, not all


def test_pgd_restarts_keep_the_best_restart_per_sample(trained) -> None:
    model, (frames, audio, labels) = trained
    recorder = Recorder(model)
    torch.manual_seed(1)
    adv = PGD(recorder, {"visual": 0.03, "audio": 0.03}, steps=3, random_start=True, restarts=4)(frames, audio, labels)
    finals = [c for c in recorder.calls if not c[3]]  # the no-grad forward on each restart's result
    assert len(finals) == 4 and len(recorder.calls) == 4 * 4
    best_frames, best_audio, pick = best_of(finals, labels)
    assert torch.equal(adv[0], best_frames) and torch.equal(adv[1], best_audio)
    assert len(set(pick.tolist())) > 1


@pytest.mark.parametrize("name", ["mim", "apgd"])
def test_restarts_never_do_worse_than_their_first_run(trained, name: str) -> None:
    """With one seed the first restart is the single run; later restarts attack only the samples it left
    robust, and each sample keeps its best run, so no sample ends worse (fooled, then CE)."""
    model, (frames, audio, labels) = trained
    eps = {"visual": 0.03, "audio": 0.03}
    recorders = {n: Recorder(model) for n in (1, 4)}
    adv = {n: build_attack(name, recorders[n], eps, steps=5, random_start=True, restarts=n, seed=7)(
        frames, audio, labels) for n in (1, 4)}
    with torch.no_grad():
        logits = {n: model(*adv[n]).logits for n in (1, 4)}
    fooled = {n: logits[n].argmax(1) != labels for n in (1, 4)}
    ce = {n: F.cross_entropy(logits[n], labels, reduction="none") for n in (1, 4)}
    assert (fooled[4] >= fooled[1]).all()
    same = fooled[4] == fooled[1]
    assert (ce[4][same] >= ce[1][same] - 1e-5).all()
    assert fooled[4].sum() > fooled[1].sum() or (ce[4] > ce[1] + 1e-4).any()  # the restarts did something
    single = len(recorders[1].calls)
    assert len(recorders[4].calls) > single
    assert recorders[4].calls[single][0].shape[0] == N  # the evaluation of the first run's result
    later = {c[0].shape[0] for c in recorders[4].calls[single + 1:]}
    assert max(later) <= int((~fooled[1]).sum())  # later restarts skip the samples the first run fooled


def test_apgd_checkpoints_follow_the_paper() -> None:
    assert sorted(apgd_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert sorted(apgd_checkpoints(10)) == [3, 5, 6, 7, 8, 9]


# ------------------------------------------------------------------ the MIM update on a linear model


class LinearAV(nn.Module):
    """``logits = W_v frames + W_a audio``: the input gradient of the summed CE is ``(p - y) W``."""

    def __init__(self, frame_shape: tuple[int, ...], audio_len: int, classes: int) -> None:
        super().__init__()
        self.fc_v = nn.Linear(math.prod(frame_shape), classes, bias=False)
        self.fc_a = nn.Linear(audio_len, classes, bias=False)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        return ModelOutput(self.fc_v(frames.flatten(1)) + self.fc_a(audio.flatten(1)), None, None, None)

    def input_grads(self, frames: Tensor, audio: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        residual = self(frames, audio).logits.softmax(1) - F.one_hot(labels, self.fc_v.out_features)
        return (residual @ self.fc_v.weight).view_as(frames), (residual @ self.fc_a.weight).view_as(audio)


def test_mim_steps_match_the_hand_computed_update() -> None:
    """Two MIM steps against ``x <- clip(x + alpha * sign(sum_t grad_t / ||grad_t||_1))`` by hand. The
    seed gives gradients whose scales change between steps, samples and modalities, so the per-sample,
    per-modality L1 normalisation gives another result than no, per-batch or joint normalisation
    (checked below, so that a change of seed cannot make the test vacuous)."""
    torch.manual_seed(349)
    model = LinearAV((3, 1, 2, 2), 8, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    frames = 0.5 + 0.05 * torch.randn(2, 3, 1, 2, 2)
    audio = 0.05 * torch.randn(2, 1, 8)
    labels = torch.tensor([0, 2])
    eps, alpha = {"visual": 0.45, "audio": 0.9}, {"visual": 0.2, "audio": 0.4}

    def l1(g: Tensor) -> Tensor:
        return g.abs().flatten(1).sum(1).view(-1, *[1] * (g.dim() - 1))

    def by_hand(normalise) -> list[list[Tensor]]:
        x, momentum, iterates = [frames, audio], [0, 0], []
        for _ in range(2):
            grads = model.input_grads(*x, labels)
            momentum = [mu + g for mu, g in zip(momentum, normalise(grads))]
            x = [(v + a * mu.sign()).clamp(lo, hi)
                 for v, a, mu, (lo, hi) in zip(x, alpha.values(), momentum, [(0, 1), (-1, 1)])]
            iterates.append(x)
        return iterates

    expected = by_hand(lambda grads: [g / l1(g) for g in grads])
    for steps in (1, 2):
        got = MIM(model, ThreatModel.of(eps, units="pixel"), alpha=alpha, steps=steps)(frames, audio, labels)
        for a, b in zip(got, expected[steps - 1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    alternatives = [
        lambda grads: grads,
        lambda grads: [g / g.abs().sum() for g in grads],
        lambda grads: [g / (l1(grads[0]).flatten() + l1(grads[1]).flatten()).view_as(l1(g)) for g in grads],
    ]
    for normalise in alternatives:
        assert any(not torch.allclose(a, b) for a, b in zip(by_hand(normalise)[1], expected[1]))


# ------------------------------------------------------------------ expectation over transformation


class NoisyLinear(LinearAV):
    """``LinearAV`` plus logit noise that cycles through fixed draws: a randomised model with known states."""

    def __init__(self, *args, noises: Tensor) -> None:
        super().__init__(*args)
        self.noises = noises
        self.calls = 0

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        noise = self.noises[self.calls % len(self.noises)]
        self.calls += 1
        out = super().forward(frames, audio)
        return out._replace(logits=out.logits + noise)


def test_eot_averages_losses_and_gradients_over_forward_passes() -> None:
    torch.manual_seed(3)
    frames = 0.5 + 0.05 * torch.randn(4, 3, 1, 2, 2)
    audio = 0.05 * torch.randn(4, 1, 8)
    labels = torch.tensor([0, 1, 2, 0])
    model = NoisyLinear((3, 1, 2, 2), 8, 3, noises=3 * torch.randn(3, 4, 3))
    eps, alpha = {"visual": 0.2, "audio": 0.2}, {"visual": 0.1, "audio": 0.1}

    def by_hand() -> tuple[Tensor, list[Tensor]]:
        losses, grads = [], []
        for noise in model.noises:
            x = [frames.clone().requires_grad_(), audio.clone().requires_grad_()]
            loss = F.cross_entropy(LinearAV.forward(model, *x).logits + noise, labels, reduction="none")
            grads.append(torch.autograd.grad(loss.sum(), x))
            losses.append(loss.detach())
        return torch.stack(losses).mean(0), [torch.stack(g).mean(0) for g in zip(*grads)]

    mean_loss, mean_grads = by_hand()
    expected = [(x + a * g.sign()).clamp(*r) for x, a, g, r in zip((frames, audio), alpha.values(), mean_grads,
                                                                    [(0, 1), (-1, 1)])]
    got = PGD(model, ThreatModel.of(eps, units="pixel"), alpha=alpha, steps=1, eot_iter=3)(frames, audio, labels)
    assert model.calls == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # one pass per step would follow another gradient: the average is what makes the difference
    single = PGD(model, ThreatModel.of(eps, units="pixel"), alpha=alpha, steps=1)(frames, audio, labels)
    assert not all(torch.allclose(a, b) for a, b in zip(single, expected))

    model.calls = 0
    balls = {m: Ball(x, torch.tensor(0.2), torch.tensor(0.1), VALID_RANGE[m])
             for m, x in (("visual", frames), ("audio", audio))}
    losses, _, grads = Problem(model, LOSSES["ce"], labels, balls, {}, eot_iter=3).loss_and_grad(
        {"visual": frames.clone().requires_grad_(), "audio": audio.clone().requires_grad_()})
    torch.testing.assert_close(losses, mean_loss)
    torch.testing.assert_close(grads["visual"], mean_grads[0])
    torch.testing.assert_close(grads["audio"], mean_grads[1])
    model.calls = 0
    PGD(model, eps, steps=4, eot_iter=5)(frames, audio, labels)
    assert model.calls == 4 * 5


def test_eot_re_encodes_the_fixed_modality_without_gradients(trained) -> None:
    model, (frames, audio, labels) = trained
    split = SplitModel(model)
    PGD(split, {"visual": 0.1}, steps=3, eot_iter=2)(frames, audio, labels)
    assert split.grad_modes == {"visual": [True] * 6, "audio": [False] * 6}


# ------------------------------------------------------------------ precision


def test_attacks_run_in_float32_under_autocast(trained) -> None:
    """Under CPU autocast (bfloat16) the model would compute in bfloat16; inside the attack it does not,
    so the adversarial inputs equal the float32 run's exactly (bfloat16 inputs are cast first)."""
    model, (frames, audio, labels) = trained
    eps = {"visual": 0.1, "audio": 0.05}
    logit_dtypes: list[torch.dtype] = []

    def recording_ce(out: ModelOutput, labels: Tensor) -> Tensor:
        logit_dtypes.append(out.logits.dtype)
        return F.cross_entropy(out.logits, labels, reduction="none")

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(frames, audio).logits.dtype == torch.bfloat16  # the region does change the model
    for name in ("pgd", "apgd", "square"):
        options = {"square": {"queries": 20, "seed": 0}, "apgd": {"steps": 5}}.get(name, {"loss": recording_ce})
        attack = build_attack(name, model, eps, **options)
        expected = attack(frames, audio, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = attack(frames, audio, labels)
            from_bf16 = attack(frames.bfloat16(), audio.bfloat16(), labels)
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(got, expected)), name
        reference = attack(frames.bfloat16().float(), audio.bfloat16().float(), labels)
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(from_bf16, reference)), name
    assert logit_dtypes and set(logit_dtypes) == {torch.float32}


# ------------------------------------------------------------------ losses


def test_ce_cos_loss_is_ce_plus_the_feature_cosine(trained) -> None:
    model, (frames, audio, labels) = trained
    with torch.no_grad():
        out = model(frames, audio)
    cos = (out.feat_v * out.feat_a).sum(1) / (out.feat_v.norm(dim=1) * out.feat_a.norm(dim=1))
    ce = F.cross_entropy(out.logits, labels, reduction="none")
    torch.testing.assert_close(LOSSES["ce+cos"](out, labels), ce + cos)
    torch.testing.assert_close(LOSSES["ce+cos"](out._replace(feat_a=None), labels), ce)


def test_ce_cos_attack_raises_the_feature_cosine_more_than_ce(trained) -> None:
    model, (frames, audio, labels) = trained
    eps = {"visual": 0.1, "audio": 0.1}

    def mean_cos(loss: str) -> float:
        with torch.no_grad():
            out = model(*PGD(model, eps, loss=loss)(frames, audio, labels))
        return F.cosine_similarity(out.feat_v, out.feat_a, dim=1).mean().item()

    assert mean_cos("ce+cos") > mean_cos("ce")


def test_dlr_loss() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]])
    labels = torch.tensor([0, 1])
    dlr = LOSSES["dlr"]
    out = ModelOutput(logits, None, None, None)
    torch.testing.assert_close(dlr(out, labels), torch.tensor([-2 / 3, 2 / 3]))  # > 0 iff misclassified
    torch.testing.assert_close(dlr(out._replace(logits=5 * logits - 2), labels), dlr(out, labels))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr(ModelOutput(logits[:, :2], None, None, None), labels)


@pytest.mark.parametrize("name", ["pgd", "mim", "apgd"])
def test_iterative_dlr_attacks_fool_the_model(trained, name: str) -> None:
    model, batch = trained
    assert attacked_accuracy(name, model, batch, {"visual": 0.3, "audio": 0.3}, loss="dlr", **QUICK[name]) <= 0.1


# ------------------------------------------------------------------ registry and errors


def test_registry_names_and_the_fsgm_alias(trained) -> None:
    model, (frames, audio, labels) = trained
    assert ATTACKS.names() == ["apgd", "apgd-t", "fab-t", "fgsm", "fsgm", "mim", "pgd", "square"]
    assert ATTACKS.get("fsgm") is FGSM
    eps = {"visual": 0.05, "audio": 0.05}
    got = build_attack("fsgm", model, eps)(frames, audio, labels)
    expected = build_attack("fgsm", model, eps)(frames, audio, labels)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_build_attack_passes_the_options_an_attack_has(trained) -> None:
    model, _ = trained
    flags = dict(steps=7, alpha=0.01, loss="dlr", random_start=True, restarts=3, eot_iter=2, seed=5)
    pgd = build_attack("pgd", model, ThreatModel.of({"visual": 0.1}, units="pixel"), **flags)
    assert (pgd.steps, pgd.alpha["visual"], pgd.loss_name, pgd.threat.units, pgd.random_start, pgd.restarts,
            pgd.eot_iter, pgd.seed) == (7, 0.01, "dlr", "pixel", True, 3, 2, 5)
    fgsm = build_attack("fgsm", model, {"visual": 0.1}, **{**flags, "restarts": 1})
    assert (fgsm.steps, fgsm.alpha["visual"], fgsm.eot_iter) == (1, 0.1, 2)
    apgd = build_attack("apgd", model, {"visual": 0.1}, steps=None, alpha=0.01)
    assert (apgd.steps, apgd.alpha["visual"]) == (100, 0.2)
    assert {n for n in ATTACKS.names() if "restarts" in attack_options(n)} == {"apgd", "apgd-t", "mim", "pgd"}
    assert attack_options("square") == {"queries", "p_init", "seed", "std"}


def test_unknown_names_and_bad_options_raise(trained) -> None:
    model, _ = trained
    with pytest.raises(ValueError, match="available: apgd, apgd-t, fab-t, fgsm, fsgm, mim, pgd, square"):
        build_attack("cw", model, {"visual": 0.1})
    with pytest.raises(ValueError, match="available: ce, ce\\+cos, dlr"):
        build_attack("pgd", model, {"visual": 0.1}, loss="hinge")
    with pytest.raises(ValueError, match="no attack takes"):
        build_attack("pgd", model, {"visual": 0.1}, restart=3)
    with pytest.raises(TypeError, match="eps must be a dict .* or a ThreatModel"):
        PGD(model, 0.1)
    with pytest.raises(ValueError, match="eps keys"):
        PGD(model, {"video": 0.1})
    with pytest.raises(ValueError, match="eps_units"):
        PGD(model, ThreatModel.of({"visual": 0.1}, units="db"))
    with pytest.raises(ValueError, match=">= 0"):
        PGD(model, {"visual": -0.1})
    with pytest.raises(ValueError, match="random_start"):
        PGD(model, {"visual": 0.1}, restarts=2)
    with pytest.raises(ValueError, match="random_start"):
        MIM(model, {"visual": 0.1}, restarts=2)
    with pytest.raises(ValueError, match="eot_iter must be >= 1"):
        APGD(model, {"visual": 0.1}, eot_iter=0)
    with pytest.raises(ValueError, match="'fgsm' does not support restarts"):
        build_attack("fgsm", model, {"visual": 0.1}, random_start=True, restarts=2)
    for option in ("restarts", "eot_iter"):
        with pytest.raises(ValueError, match=f"'square' does not support {option}"):
            build_attack("square", model, {"visual": 0.1}, random_start=True, **{option: 2})
    for name in ("square", "apgd-t"):
        with pytest.raises(ValueError, match="own objective"):
            build_attack(name, model, {"visual": 0.1}, loss=LOSSES["ce"])


# ------------------------------------------------------------------ reference: torchattacks' PGD


class FramesOnly(nn.Module):
    """The AV model as torchattacks sees an image classifier: ``[B, 3, H, W]`` in [0, 1] -> logits."""

    def __init__(self, model: nn.Module, audio: Tensor) -> None:
        super().__init__()
        self.model = model
        self.audio = audio

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.unsqueeze(2), self.audio).logits


@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_visual_pgd_matches_torchattacks(trained, eps: float) -> None:
    import torchattacks  # a dev requirement: the reference must run, not be skipped
    model, (frames, audio, labels) = trained
    wrapper = FramesOnly(model, audio).eval()  # torchattacks restores a training-mode model to training mode
    reference = torchattacks.PGD(wrapper, eps=eps, alpha=eps / 4, steps=10, random_start=False)(frames[:, :, 0], labels)
    ours, ours_audio = PGD(model, ThreatModel.of({"visual": eps}, units="pixel"),
                           alpha=eps / 4, steps=10)(frames, audio, labels)
    assert ours_audio is audio
    acc_ours, acc_ref = accuracy(model, ours, audio, labels), accuracy(model, reference.unsqueeze(2), audio, labels)
    assert acc_ours == acc_ref < accuracy(model, frames, audio, labels)
    torch.testing.assert_close(ours[:, :, 0], reference, atol=1e-6, rtol=0)
