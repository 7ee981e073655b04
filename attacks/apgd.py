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
    Returns, per sample, the fooling iterate with the highest loss, or else the highest-loss iterate.
    ``steps`` forward-backward passes plus one (times ``eot_iter``). ``restarts``, ``eot_iter``, ``seed`` and
    the threat model as in ``Attack``.
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
        """One APGD run on ``problem``; per sample its best iterate with that iterate's loss and success."""
        x = problem.start(self.random_start)
        region = problem.region
        losses, logits, grads = problem.loss_and_grad(x)
        x = {m: v.detach() for m, v in x.items()}
        best = BestSoFar(x, losses, problem.fooled(logits))
        x_max, f_max, grad_max = x, losses, grads
        x_prev, f_prev = x, losses
        scale = torch.ones_like(losses)  # per-sample step size / initial step size
        increases = torch.zeros_like(losses)
        f_max_at_check, reduced_at_check, last_check = f_max, torch.zeros_like(losses, dtype=torch.bool), 0
        for k in range(self.steps):
            with torch.no_grad():
                direction = region.steepest(grads)
                z = problem.project_({m: v + per_sample(scale, v) * region.step[m] * direction[m]
                                      for m, v in x.items()})
                if k > 0:
                    z = problem.project_({m: v + self.momentum * (z[m] - v) + (1 - self.momentum) * (v - x_prev[m])
                                          for m, v in x.items()})
                x_next = {m: v.requires_grad_() for m, v in z.items()}
            x_prev = x
            losses, logits, grads = problem.loss_and_grad(x_next)
            x = {m: v.detach() for m, v in x_next.items()}
            with torch.no_grad():
                best.update(x, losses, problem.fooled(logits))
                increases += losses > f_prev
                f_prev = losses
                improved = losses > f_max
                x_max, grad_max = _where(improved, x, x_max), _where(improved, grads, grad_max)
                f_max = torch.where(improved, losses, f_max)
                if k + 1 in self.checkpoints:
                    stalled = increases < self.rho * (k + 1 - last_check)
                    reduce = stalled | (~reduced_at_check & (f_max <= f_max_at_check))
                    scale = torch.where(reduce, scale / 2, scale)
                    x, x_prev = _where(reduce, x_max, x), _where(reduce, x_max, x_prev)
                    grads = _where(reduce, grad_max, grads)
                    f_prev = torch.where(reduce, f_max, f_prev)
                    f_max_at_check, reduced_at_check, last_check = f_max, reduce, k + 1
                    increases.zero_()
        return best
