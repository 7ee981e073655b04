"""APGD, Auto-PGD (Croce & Hein 2020), L∞ and L2."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attacks.base import Attack, BestSoFar, Inputs, Problem
from attacks.losses import LossFn
from attacks.regions import per_sample
from attacks.registry import ATTACKS
from attacks.threat import IMAGENET_STD, ThreatModel


def apgd_checkpoints(steps: int) -> frozenset[int]:
    """The iterations where APGD checks progress: ``ceil(p_j * steps)`` with ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, before the last iteration."""
    points = set()
    p_prev, p = 0.0, 0.22
    while p < 1:
        points.add(math.ceil(round(p * steps, 6)))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return frozenset(w for w in points if 0 < w < steps)


def _where(mask: Tensor, a: Inputs, b: Inputs) -> Inputs:
    return {m: torch.where(per_sample(mask, a[m]), a[m], b[m]) for m in a}


@ATTACKS.register("apgd")
class APGD(Attack):
    """Projected steepest-ascent steps with momentum and a step size that adapts per sample.

    The step size starts at 2ε (per modality, per channel in normalised units; 2 ``joint_eps`` in the joint
    L2 ball) and is halved at a checkpoint when fewer than ``rho`` of the steps since the last one raised the
    loss, or when neither the step size nor the best loss changed since the last one; the iterate then
    restarts from the highest-loss point. Update: ``z = P(x_k + eta * s(grad))``,
    ``x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))``, with ``s`` the region's
    steepest ascent: ``sign`` for L∞, ``grad / ||grad||_2`` for L2 (AutoAttack's L2 APGD), and ``P`` the
    projection onto the ball, then the valid range.
    Returns, per sample, the first fooling iterate (the sample then leaves the run), or else the highest-loss
    iterate. At most ``steps`` forward-backward passes plus one (times ``eot_iter``). ``restarts``,
    ``eot_iter``, ``seed`` and the threat model as in ``Attack``.
    """

    summary = "Auto-PGD (Croce & Hein 2020): step-size schedule with checkpoints, momentum 0.75, per-sample best"
    default_step = 2.0

    settings = {"steps": "apgd_steps", "random_start": "random_start", "restarts": "restarts",
                "eot_iter": "eot_iter", "seed": "seed"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, steps: int = 100,
                 random_start: bool = False, restarts: int = 1, eot_iter: int = 1, seed: int | None = None,
                 momentum: float = 0.75, rho: float = 0.75, loss: str | LossFn = "ce",
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(model, eps, steps=steps, random_start=random_start, restarts=restarts, eot_iter=eot_iter,
                         seed=seed, loss=loss, std=std)
        self.momentum = momentum
        self.rho = rho
        self.checkpoints = apgd_checkpoints(steps)

    def perturb(self, problem: Problem) -> Inputs:
        return self.run(problem).x

    def run(self, problem: Problem) -> BestSoFar:
        """One APGD run on ``problem``; per sample its best iterate with that iterate's loss and success.

        A sample leaves the run at the first iterate that fools the model, which is kept as its result: robust
        accuracy needs one success, and every quantity of the schedule is per sample, so the samples still
        attacked follow the same iterates as in a run over the whole batch. A sample never fooled keeps its
        highest-loss iterate after all ``steps``."""
        x = problem.start(self.random_start)
        losses, logits, grads = problem.loss_and_grad(x)
        x = {m: v.detach() for m, v in x.items()}
        best = BestSoFar(x, losses, problem.fooled(logits))
        rows = torch.arange(losses.numel(), device=losses.device)  # the samples of ``problem`` still attacked
        inputs = {"x": x, "x_max": x, "grad_max": grads, "grads": grads, "x_prev": x}
        scalars = {"f_max": losses, "f_prev": losses, "scale": torch.ones_like(losses),
                   "increases": torch.zeros_like(losses), "f_max_at_check": losses,
                   "reduced_at_check": torch.zeros_like(losses, dtype=torch.bool)}
        part, last_check = problem, 0
        for k in range(self.steps):
            standing = ~best.fooled[rows]
            if not bool(standing.all()):
                keep = standing.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, part = rows[keep], part.subset(keep)
                inputs = {name: {m: v[keep] for m, v in value.items()} for name, value in inputs.items()}
                scalars = {name: value[keep] for name, value in scalars.items()}
            x, s = inputs["x"], scalars
            region = part.region
            with torch.no_grad():
                direction = region.steepest(inputs["grads"])
                z = part.project_({m: v + per_sample(s["scale"], v) * region.step[m] * direction[m]
                                   for m, v in x.items()})
                if k > 0:
                    x_prev = inputs["x_prev"]
                    z = part.project_({m: v + self.momentum * (z[m] - v) + (1 - self.momentum) * (v - x_prev[m])
                                       for m, v in x.items()})
                x_next = {m: v.requires_grad_() for m, v in z.items()}
            inputs["x_prev"] = x
            losses, logits, grads = part.loss_and_grad(x_next)
            x = {m: v.detach() for m, v in x_next.items()}
            with torch.no_grad():
                best.update(x, losses, part.fooled(logits), index=rows)
                s["increases"] = s["increases"] + (losses > s["f_prev"])
                s["f_prev"] = losses
                improved = losses > s["f_max"]
                inputs["x_max"] = _where(improved, x, inputs["x_max"])
                inputs["grad_max"] = _where(improved, grads, inputs["grad_max"])
                s["f_max"] = torch.where(improved, losses, s["f_max"])
                if k + 1 in self.checkpoints:
                    stalled = s["increases"] < self.rho * (k + 1 - last_check)
                    reduce = stalled | (~s["reduced_at_check"] & (s["f_max"] <= s["f_max_at_check"]))
                    s["scale"] = torch.where(reduce, s["scale"] / 2, s["scale"])
                    x, inputs["x_prev"] = _where(reduce, inputs["x_max"], x), _where(reduce, inputs["x_max"],
                                                                                   inputs["x_prev"])
                    grads = _where(reduce, inputs["grad_max"], grads)
                    s["f_prev"] = torch.where(reduce, s["f_max"], s["f_prev"])
                    s["f_max_at_check"], s["reduced_at_check"], last_check = s["f_max"], reduce, k + 1
                    s["increases"] = torch.zeros_like(s["increases"])
            inputs["x"], inputs["grads"] = x, grads
        return best
