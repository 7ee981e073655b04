"""FAB-T, the targeted fast adaptive boundary attack (Croce & Hein 2020), L∞ and L2, on the joint input.

FAB looks for the adversarial point closest to the clean input. Each step linearises the targeted logit
difference ``z_t - z_y`` at the current iterate, projects the iterate and the clean input onto the hyperplane
where the linearisation changes sign (inside the valid range), and moves to a biased mix of the two
projections, overshooting a little (``eta``); an iterate that fools the model is recorded if it is the
closest so far and pulled back towards the clean input (``beta``).

Frames and waveform are one vector here, each coordinate divided by its budget (per channel for visual
budgets in normalised units, per clip for loudness-relative audio budgets; a joint L2 ball's per-modality
units), so that the threat model's ball is the unit ball of one norm: L∞ for per-modality L∞ budgets, L2 for
a joint L2 ball. Per-modality L2 budgets are a product of balls; there FAB steps in the joint scaled L2
geometry and keeps, per sample, the fooling iterate whose largest per-modality budget fraction is smallest.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attacks.apgd_targeted import target_classes
from attacks.base import Attack, Inputs, Problem
from attacks.losses import PerSampleLoss
from attacks.regions import Independent, JointL2Ball, ModalitySet, per_sample
from attacks.registry import ATTACKS
from attacks.threat import IMAGENET_STD, ThreatModel
from models.av_model import ModelOutput

NEWTON_STEPS = 32
"""Newton steps ``hyperplane_step`` takes before it sorts the breakpoints of the rows still unsettled."""


def hyperplane_step(w: Tensor, c: Tensor, lo: Tensor, hi: Tensor, norm: str) -> Tensor:
    """Per row, the smallest ``delta`` in the L∞ (``norm='linf'``) or L2 norm with ``w . delta = c`` and
    ``lo <= delta <= hi`` (``lo <= 0 <= hi``); where no such ``delta`` exists, the box corner that comes
    closest. ``w``, ``lo``, ``hi``: ``[B, n]``; ``c``: ``[B]``.

    Moving coordinate ``i`` in the direction that helps (``sign(c w_i)``) by ``min(lam, b_i)`` (L∞) or
    ``min(lam |w_i|, b_i)`` (L2), ``b_i`` the room the box leaves in that direction, gives ``w . delta`` a
    continuous, non-decreasing, concave, piecewise linear function of ``lam``; the ``lam`` where it reaches
    ``|c|`` is found exactly (``crossing``)."""
    s = torch.sign(c)[:, None]
    ws = w * s
    size = ws.abs()
    room = torch.where(ws > 0, hi, -lo).clamp_min(0)
    active = size > 0
    if norm == "linf":
        rate, kink = size, room
    else:
        rate, kink = size.square(), torch.where(active, room / torch.where(active, size, 1.0), 0.0)
    lam = crossing(kink, rate, size * room, c.double().abs()).to(w.dtype)[:, None]
    move = torch.minimum(lam if norm == "linf" else lam * size, room)
    return torch.where(active, torch.sign(ws) * move, 0.0)


def crossing(kink: Tensor, rate: Tensor, cap: Tensor, target: Tensor) -> Tensor:
    """``[B]`` (float64): per row the ``lam`` where ``g(lam) = sum_i min(lam * rate_i, cap_i)`` reaches
    ``target``, with ``cap_i = rate_i * kink_i``; ``inf`` where ``target`` exceeds ``sum_i cap_i``.

    ``g`` is concave, so Newton's method from ``lam = 0`` rises monotonically to the root without passing it,
    and, ``g`` being linear between breakpoints, lands on it exactly once no breakpoint lies between two
    iterates: usually a few steps of a few passes over the row, where sorting the row's ``n`` breakpoints
    costs ``n log n``. The rows not settled after ``NEWTON_STEPS`` steps are solved by the sort
    (``crossing_sorted``). Sums are in float64."""
    kink, rate, cap = kink.double(), rate.double(), cap.double()
    lam = torch.zeros_like(target)
    saturated = torch.full_like(target, -1, dtype=torch.long)  # per row, the count of capped coordinates at lam
    for _ in range(NEWTON_STEPS):
        below = kink <= lam[:, None]  # the coordinates at their cap for any lam above this one
        count = below.sum(1)
        settled = count == saturated
        if bool(settled.all()):
            return lam
        slope = torch.where(below, 0.0, rate).sum(1)
        reached = torch.where(below, cap, 0.0).sum(1)
        step = torch.where(slope > 0, (target - reached) / slope.clamp_min(torch.finfo(torch.float64).tiny), math.inf)
        lam = torch.where(settled, lam, step)
        saturated = count
    rest = (~(kink <= lam[:, None]).sum(1).eq(saturated)).nonzero().squeeze(1)
    lam[rest] = crossing_sorted(kink[rest], rate[rest], cap[rest], target[rest])
    return lam


def crossing_sorted(kink: Tensor, rate: Tensor, cap: Tensor, target: Tensor) -> Tensor:
    """``crossing`` by sorting each row's breakpoints: ``g`` at every breakpoint from the cumulative sums, the
    root on the segment where ``g`` passes ``target``."""
    order = kink.argsort(dim=1)
    kink = kink.gather(1, order)
    cum_cap = cap.gather(1, order).cumsum(1, dtype=torch.float64)
    cum_rate = rate.gather(1, order).cumsum(1, dtype=torch.float64)
    total_rate = cum_rate[:, -1:]
    target = target.double()[:, None]
    j = ((cum_cap + kink * (total_rate - cum_rate)) < target).sum(dim=1, keepdim=True)  # g at each breakpoint
    before = (j - 1).clamp_min(0)
    prev_cap = torch.where(j > 0, cum_cap.gather(1, before), 0.0)
    prev_rate = torch.where(j > 0, cum_rate.gather(1, before), 0.0)
    remaining = (total_rate - prev_rate).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(j < kink.shape[1], (target - prev_cap) / remaining, math.inf).squeeze(1)


def _norms(delta: Tensor, norm: str) -> Tensor:
    return delta.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(delta, dim=1)


def _difference(out: ModelOutput, labels: Tensor, targets: Tensor) -> Tensor:
    logits = out.logits.float()
    return logits.gather(1, targets[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)


def logit_difference(targets: Tensor) -> PerSampleLoss:
    """``z_t - z_y`` per sample, for targets ``t`` (``[B]``): positive once the target class beats the label."""
    return PerSampleLoss(_difference, targets=targets)


class ScaledSpace:
    """The attacked modalities' perturbations as one ``[B, n]`` vector ``u``, each coordinate in units of its
    budget (``d = u * unit``), with the box the valid range leaves ``u``; a coordinate whose unit is 0 (a silent
    clip under a loudness-relative budget) is held at 0."""

    def __init__(self, sets: dict[str, ModalitySet]) -> None:
        self.sets = sets
        self.units = {m: s.radius.expand_as(s.low) for m, s in sets.items()}
        lows, highs = [], []
        for m, s in sets.items():
            unit = self.units[m]
            positive = unit > 0
            safe = torch.where(positive, unit, 1.0)
            lows.append(torch.where(positive, s.low / safe, 0.0).clamp_max(0).flatten(1))
            highs.append(torch.where(positive, s.high / safe, 0.0).clamp_min(0).flatten(1))
        self.lo, self.hi = torch.cat(lows, 1), torch.cat(highs, 1)
        self.sizes = [self.units[m][0].numel() for m in sets]

    def split(self, u: Tensor) -> dict[str, Tensor]:
        """``u`` cut into per-modality pieces shaped like each modality's perturbation."""
        pieces = torch.split(u, self.sizes, dim=1)
        return {m: p.view(self.units[m].shape) for (m, s), p in zip(self.sets.items(), pieces)}

    def inputs(self, u: Tensor) -> Inputs:
        """The model inputs at ``u`` (clipped into the valid range against rounding)."""
        out = {}
        for m, piece in self.split(u).items():
            s = self.sets[m]
            out[m] = (s.clean + piece * self.units[m]).clamp(*s.valid_range)
        return out

    def gradient(self, grads: Inputs) -> Tensor:
        """The gradient w.r.t. ``u`` from the gradients w.r.t. the inputs."""
        return torch.cat([(self.sets[m].reduce_grad(grads[m]) * self.units[m]).flatten(1) for m in self.sets], 1)


@ATTACKS.register("fab-t")
class FABTargeted(Attack):
    """Targeted FAB towards the top ``min(n_target_classes, C - 1)`` other classes of the clean logits, in order,
    each run (``steps`` iterations, from the clean input, as AutoAttack's standard FAB-T) on the samples no
    earlier run has fooled.

    Returns, per sample, the closest fooling point found (in the threat model's norm, see the module docstring)
    if it lies within the budget, projected into the ball; otherwise (or if that point no longer fools the
    model) the clean input. A sample leaves its run at the first fooling point within the budget: robust
    accuracy needs no closer one (the per-sample iterates of the others do not depend on it). A sample
    misclassified as it is comes back clean. ``alpha_max``, ``eta`` and
    ``beta`` are the paper's (0.1, 1.05, 0.9). ``eot_iter`` and the threat model as in ``Attack``. Up to
    ``n_target_classes * 2 * steps`` passes (a gradient and a forward pass per iteration), plus three.
    """

    summary = ("FAB-T (Croce & Hein 2020): targeted minimum-norm boundary attack on the joint input, once per "
               "target among the top `--apgd_targets` other classes; a point within the budget or the clean input")
    uses_loss = False
    settings = {"steps": "apgd_steps", "n_target_classes": "apgd_targets", "eot_iter": "eot_iter"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, steps: int = 100,
                 n_target_classes: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 eot_iter: int = 1, std: Sequence[float] = IMAGENET_STD) -> None:
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
        if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta < 1):
            raise ValueError(f"FAB needs 0 <= alpha_max <= 1, eta >= 1, 0 < beta < 1; got {alpha_max}, {eta}, {beta}")
        super().__init__(model, eps, steps=steps, eot_iter=eot_iter, std=std)
        self.n_target_classes = n_target_classes
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def __repr__(self) -> str:
        return (f"FABTargeted(eps={self.eps}, steps={self.steps}, n_target_classes={self.n_target_classes}, "
                f"eps_units='{self.threat.units}', {self._threat_repr()}eot_iter={self.eot_iter})")

    def _geometry(self, region: Independent | JointL2Ball) -> tuple[dict[str, ModalitySet], str]:
        if isinstance(region, JointL2Ball):
            return region.parts, "l2"
        return region.balls, self.threat.norm

    def budget_fraction(self, region: Independent | JointL2Ball, space: ScaledSpace, u: Tensor) -> Tensor:
        """``[B]``: how much of the budget ``u`` uses (at most 1 inside the ball)."""
        if isinstance(region, JointL2Ball):
            return torch.linalg.vector_norm(u, dim=1) / region.radius
        if self.threat.norm == "linf":
            return u.abs().amax(dim=1)
        return torch.stack([torch.linalg.vector_norm(p.flatten(1), dim=1) for p in space.split(u).values()]).amax(0)

    def perturb(self, problem: Problem) -> Inputs:
        clean = {m: v.clone() for m, v in problem.region.clean.items()}
        logits = problem.clean_logits()
        classes = logits.shape[1]
        targets = target_classes(logits, problem.labels, min(self.n_target_classes, classes - 1))
        fooled = problem.fooled(logits)
        adv = {m: v.clone() for m, v in clean.items()}
        for k in range(targets.shape[1]):
            index = (~fooled).nonzero().squeeze(1)
            if index.numel() == 0:
                break
            part = problem.subset(index, logit_difference(targets[index, k]))
            x, found = self.run(part)
            rows = index[found]
            for m in adv:
                adv[m].index_copy_(0, rows, x[m][found])
            fooled[rows] = True
        return adv

    @torch.no_grad()
    def run(self, problem: Problem) -> tuple[Inputs, Tensor]:
        """One FAB run towards ``problem``'s target (its loss is ``z_t - z_y``): per sample the closest fooling
        point found until one lies within the budget, projected into the ball, and whether it still fools the
        model."""
        region = problem.region
        sets, norm = self._geometry(region)
        space = ScaledSpace(sets)
        best_u, best = torch.zeros_like(space.lo), torch.full_like(space.lo[:, 0], math.inf)
        rows = torch.arange(best.numel(), device=best.device)  # the samples still searched
        part, part_space, u = problem, space, best_u.clone()
        for _ in range(self.steps):
            x = {m: v.requires_grad_() for m, v in part_space.inputs(u).items()}
            f, _, grads = part.loss_and_grad(x)
            w = part_space.gradient(grads)
            # the linearisation f + w . (v - u) = 0, reached from the iterate and from the clean input
            to_plane = hyperplane_step(w, -f, part_space.lo - u, part_space.hi - u, norm)
            from_clean = hyperplane_step(w, (w * u).sum(1) - f, part_space.lo, part_space.hi, norm)
            a1 = _norms(to_plane, norm).clamp_min(1e-8)
            a2 = _norms(from_clean, norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max)[:, None]
            u = ((u + self.eta * to_plane) * (1 - alpha) + self.eta * from_clean * alpha)
            u = torch.maximum(torch.minimum(u, part_space.hi), part_space.lo)
            fooled = part.evaluate(part_space.inputs(u))[1]
            size = self.budget_fraction(part.region, part_space, u)
            closer = fooled & (size < best[rows])
            best_u[rows[closer]] = u[closer]
            best[rows[closer]] = size[closer]
            u = torch.where(fooled[:, None], self.beta * u, u)
            searching = best[rows] > 1  # a fooling point within the budget settles the sample for robust accuracy
            if not bool(searching.all()):
                keep = searching.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, part, u = rows[keep], part.subset(keep), u[keep]
                part_space = ScaledSpace(self._geometry(part.region)[0])
        x = problem.project_(space.inputs(best_u))
        found = (best <= 1) & problem.evaluate(x)[1]
        keep = {m: torch.where(per_sample(found, v), v, region.clean[m]) for m, v in x.items()}
        return keep, found
