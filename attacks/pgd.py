"""PGD (Madry et al. 2018), L∞ with sign steps."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from attacks.base import Attack, BestSoFar, Inputs, Problem
from attacks.losses import LossFn
from attacks.registry import ATTACKS
from models.visual import IMAGENET_STD


@ATTACKS.register("pgd")
class PGD(Attack):
    """``steps`` projected sign steps of size α; the paper's: 10 steps, α = ε/8, no random start.

    With ``restarts`` > 1 (from random starts) each sample keeps the restart that fools the model,
    else the one with the highest loss; that costs one extra forward pass per restart.
    """

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
                 restarts: int = 1, loss: str | LossFn = "ce", eps_units: str = "normalized",
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 needs random_start=True (restarts from the clean input are identical)")
        super().__init__(model, eps, steps=steps, alpha=alpha, random_start=random_start, loss=loss,
                         eps_units=eps_units, std=std)
        self.restarts = restarts

    def perturb(self, problem: Problem) -> Inputs:
        x = super().perturb(problem)
        if self.restarts == 1:
            return x
        best = BestSoFar(x, *problem.evaluate(x))
        for _ in range(self.restarts - 1):
            x = super().perturb(problem)
            best.update(x, *problem.evaluate(x))
        return best.x
