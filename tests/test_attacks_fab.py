"""Tests of FAB-T: the box-constrained hyperplane projections, minimality and budgets on a linear model where
the closest adversarial point is known in closed form, the threat models on the joint input, and the cascade
that runs it."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from attacks import CASCADES, FABTargeted, build_attack, describe, fab, hyperplane_step
from attacks.fab import crossing_sorted
from attacks.threat import ThreatModel
from models import ModelOutput
from tests.test_attacks_aa import accuracy, train

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ projections by hand and by the reference


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_step_by_hand(norm: str) -> None:
    w = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    c = torch.tensor([3.0, 3.0, -3.0])
    lo = torch.tensor([[-10.0, -10.0], [-10.0, -10.0], [-10.0, -0.5]])
    hi = torch.tensor([[10.0, 10.0], [10.0, 0.5], [10.0, 10.0]])
    delta = hyperplane_step(w, c, lo, hi, norm)
    # free: L-inf moves every coordinate by 1 (1 + 2 = 3), L2 along w (3 w / |w|^2); boxed: the second
    # coordinate stops at 0.5 and the first takes the rest (2), in either direction of c
    free = [1.0, 1.0] if norm == "linf" else [0.6, 1.2]
    torch.testing.assert_close(delta, torch.tensor([free, [2.0, 0.5], [-2.0, -0.5]]))


def test_hyperplane_step_is_feasible_minimal_and_falls_back_to_the_corner() -> None:
    gen = torch.Generator().manual_seed(0)
    b, n = 64, 40
    w = torch.randn(b, n, generator=gen)
    w[:, :4] = 0  # coordinates the plane ignores stay put
    lo, hi = -torch.rand(b, n, generator=gen), torch.rand(b, n, generator=gen)
    c = torch.randn(b, generator=gen) * 12
    for norm in ("linf", "l2"):
        delta = hyperplane_step(w, c, lo, hi, norm)
        assert (delta >= lo).all() and (delta <= hi).all() and (delta[:, :4] == 0).all()
        helps = w * c.sign()[:, None]  # a coordinate moves up where > 0, down where < 0
        feasible = (w.abs() * torch.where(helps > 0, hi, -lo)).sum(1) >= c.abs()
        assert feasible.any() and (~feasible).any()
        torch.testing.assert_close((w * delta).sum(1)[feasible], c[feasible], rtol=1e-4, atol=1e-4)
        corner = torch.where(helps > 0, hi, torch.where(helps < 0, lo, 0.0))
        torch.testing.assert_close(delta[~feasible], corner[~feasible])
        # no feasible point of the box on the plane is shorter: try moving mass between coordinates
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        for _ in range(20):
            other = delta + 0.05 * torch.randn(delta.shape, generator=gen)
            other = torch.maximum(torch.minimum(other, hi), lo)
            # back onto the plane along the free coordinates of w (a feasible competitor where it stays in the box)
            gap = c - (w * other).sum(1)
            free = (other > lo) & (other < hi) & (w != 0)
            other = other + free * w * (gap / (w * w * free).sum(1).clamp_min(1e-12))[:, None]
            ok = feasible & (other >= lo).all(1) & (other <= hi).all(1)
            other_size = other.abs().amax(1) if norm == "linf" else other.norm(dim=1)
            assert (other_size[ok] >= size[ok] * (1 - 1e-4)).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_step_matches_torchattacks_projection(norm: str) -> None:
    """The reference's projections (FAB's, box [0, 1]) of points onto planes: the same step where the plane can
    be reached inside the box."""
    from torchattacks.attacks.fab import projection_l2, projection_linf
    gen = torch.Generator().manual_seed(1)
    points, w = torch.rand(256, 30, generator=gen), torch.randn(256, 30, generator=gen)
    b = (w * points).sum(1) + torch.randn(256, generator=gen) * torch.rand(256, generator=gen) * 4
    reference = (projection_linf if norm == "linf" else projection_l2)(points.clone(), w.clone(), b.clone())
    ours = hyperplane_step(w, b - (w * points).sum(1), -points, 1 - points, norm)
    reached = ((w * (points + reference)).sum(1) - b).abs() < 1e-4
    assert reached.float().mean() > 0.9
    torch.testing.assert_close(ours[reached], reference[reached], atol=1e-4, rtol=1e-3)


def test_newton_crossing_equals_the_sorted_one_and_falls_back_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Newton root of the piecewise linear ``g`` is the sorted breakpoints' one: on rows with saturated
    coordinates (kink 0), zero rates, repeated kinks, a target beyond the capacity (inf) and a target of 0; and
    with too few Newton steps the unsettled rows are handed to the sort."""
    gen = torch.Generator().manual_seed(4)
    b, n = 40, 300
    kink = torch.rand(b, n, generator=gen) * 5
    kink[:, :30] = 0  # at the box's edge already
    kink[:, 30:60] = 1.25  # ties
    rate = torch.rand(b, n, generator=gen)
    rate[:, 60:90] = 0  # ignored by the plane
    cap = rate * kink
    target = cap.sum(1) * torch.rand(b, generator=gen)
    target[1] = 0.0
    target[2] = cap[2].sum() * 2  # beyond what the row's coordinates can reach
    sorted_lam = fab.crossing_sorted(kink, rate, cap, target.double())
    lam = fab.crossing(kink, rate, cap, target.double())
    assert torch.isinf(sorted_lam[2]) and sorted_lam[1] == 0
    torch.testing.assert_close(lam, sorted_lam, rtol=1e-12, atol=0)
    g = torch.minimum(lam[:, None] * rate.double(), cap.double()).sum(1)
    finite = torch.isfinite(lam)
    torch.testing.assert_close(g[finite], target.double()[finite], rtol=1e-9, atol=1e-9)
    calls = []

    def recorded(*rows: Tensor) -> Tensor:
        calls.append(rows[0].shape[0])
        return crossing_sorted(*rows)

    monkeypatch.setattr(fab, "NEWTON_STEPS", 1)
    monkeypatch.setattr(fab, "crossing_sorted", recorded)
    torch.testing.assert_close(fab.crossing(kink, rate, cap, target.double()), sorted_lam, rtol=1e-12, atol=0)
    assert calls and calls[-1] > 0


# ------------------------------------------------------------------ minimum norm on a linear model


class TwoClassLinear(nn.Module):
    """``logits = [0, w . frames + v . audio + b]``: the closest point of class 1 is known in closed form."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.w = torch.randn(3 * 2 * 4 * 4, generator=gen)
        self.v = torch.randn(32, generator=gen) * 4
        self.b = 0.0

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        z = frames.flatten(1) @ self.w + audio.flatten(1) @ self.v + self.b
        return ModelOutput(torch.stack([torch.zeros_like(z), z], 1), None, None, None)


def linear_case(norm: str) -> tuple[TwoClassLinear, Tensor, Tensor, Tensor, Tensor]:
    """The model, a batch of class 0, and per sample the smallest budget (the same number for both modalities,
    in pixels) at which class 1 can be reached: the hyperplane step in budget units."""
    gen = torch.Generator().manual_seed(3)
    model = TwoClassLinear(gen)
    frames = 0.3 + 0.4 * torch.rand(6, 3, 2, 4, 4, generator=gen)
    audio = 0.5 * torch.rand(6, 1, 32, generator=gen) - 0.25
    labels = torch.zeros(6, dtype=torch.long)
    model.b = -float(model(frames, audio).logits[:, 1].max()) - 2.0  # every sample on the class-0 side
    z = model(frames, audio).logits[:, 1]
    w = torch.cat([model.w.expand(6, -1), model.v.expand(6, -1)], 1)
    x = torch.cat([frames.flatten(1), audio.flatten(1)], 1)
    low = torch.cat([torch.zeros_like(frames.flatten(1)), -torch.ones_like(audio.flatten(1))], 1)
    high = torch.cat([torch.ones_like(frames.flatten(1)), torch.ones_like(audio.flatten(1))], 1)
    step = hyperplane_step(w, -z, low - x, high - x, norm)
    smallest = step.abs().amax(1) if norm == "linf" else step.norm(dim=1)
    return model, frames, audio, labels, smallest


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_finds_the_closest_point_and_keeps_to_the_budget(norm: str) -> None:
    """With equal budgets on both modalities (a joint L2 ball of radius 1 for L2), FAB-T's point is the closest
    one to within a few per cent; a budget just under the closest distance leaves every sample clean."""
    model, frames, audio, labels, smallest = linear_case(norm)
    for scale in (1.05, 0.97):
        found = 0
        for i in range(labels.numel()):
            eps = float(smallest[i]) * scale
            threat = (ThreatModel(eps, eps, units="pixel") if norm == "linf" else
                      ThreatModel(eps, eps, norm="l2", units="pixel", joint_eps=1.0))
            adv_f, adv_a = FABTargeted(model, threat, steps=30, n_target_classes=1)(
                frames[i:i + 1], audio[i:i + 1], labels[i:i + 1])
            d = torch.cat([(adv_f - frames[i:i + 1]).flatten(), (adv_a - audio[i:i + 1]).flatten()])
            size = d.abs().max() if norm == "linf" else d.norm()
            fooled = bool(model(adv_f, adv_a).logits.argmax(1) != 0)
            assert size <= eps * (1 + 1e-5)
            if fooled:
                found += 1
                assert size >= smallest[i] * (1 - 1e-4)  # never closer than the closed form
            else:
                assert torch.equal(adv_f, frames[i:i + 1]) and torch.equal(adv_a, audio[i:i + 1])
        assert found == (labels.numel() if scale > 1 else 0), (scale, found)


# ------------------------------------------------------------------ threat models on the audio-visual model


@pytest.fixture(scope="module")
def audio_visual():
    return train("concat")


@pytest.mark.parametrize("threat", [
    ThreatModel(0.02, 0.01),
    ThreatModel(0.02, 0.01, temporal="shared"),
    ThreatModel(1.0, 0.3, norm="l2", units="pixel"),
    ThreatModel(1.0, 0.3, norm="l2", units="pixel", joint_eps=1.0),
], ids=["linf", "linf-shared", "l2", "l2-joint"])
def test_fab_t_keeps_the_threat_model_and_fools_some(audio_visual, threat: ThreatModel) -> None:
    model, (frames, audio, labels) = audio_visual
    attack = build_attack("fab-t", model, threat, steps=10, n_target_classes=3)
    adv_f, adv_a = attack(frames, audio, labels)
    assert adv_f.min() >= 0 and adv_f.max() <= 1 and adv_a.abs().max() <= 1
    d_v, d_a = adv_f - frames, adv_a - audio
    if threat.norm == "linf":
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
        assert ((d_v.abs() / std).amax() <= 0.02 * (1 + 1e-4)) and d_a.abs().max() <= 0.01 * (1 + 1e-4)
        if threat.temporal == "shared":
            assert torch.allclose(d_v[:, :, :1].expand_as(d_v), d_v, atol=1e-6)
    elif threat.joint_eps is None:
        assert (d_v.flatten(1).norm(dim=1) <= 1.0 * (1 + 1e-4)).all()
        assert (d_a.flatten(1).norm(dim=1) <= 0.3 * (1 + 1e-4)).all()
    else:
        joint = ((d_v.flatten(1).norm(dim=1) / 1.0) ** 2 + (d_a.flatten(1).norm(dim=1) / 0.3) ** 2).sqrt()
        assert (joint <= 1.0 * (1 + 1e-4)).all()
    assert accuracy(model, adv_f, adv_a, labels) < accuracy(model, frames, audio, labels)
    untouched = model(adv_f, adv_a).logits.argmax(1) == labels
    assert torch.equal(adv_f[untouched], frames[untouched]) and torch.equal(adv_a[untouched], audio[untouched])




def test_autoattack_is_the_standard_ensemble_and_aa_fast_keeps_three() -> None:
    components = describe("autoattack").cascade.components
    assert [(c.name, c.attack) for c in components] == [
        ("apgd-ce", "apgd"), ("apgd-t", "apgd-t"), ("fab-t", "fab-t"), ("square", "square")]
    assert [dict(c.options).get("random_start") for c in components] == [True, True, None, None]
    assert [c.name for c in CASCADES.get("aa-fast").components] == ["apgd-ce", "apgd-t", "square"]
    assert describe("fab-t").family == "white-box" and not describe("fab-t").uses_loss
