"""PGD (Madry et al. 2018), L∞ with sign steps."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from attacks.registry import ATTACKS
from models.visual import IMAGENET_STD


@ATTACKS.register("pgd")
class PGD(Attack):
    """``steps`` projected sign steps of size α; the paper's: 10 steps, α = ε/8, no random start.

    ``restarts``, ``eot_iter`` and ``seed`` as in ``Attack``.
    """

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
                 restarts: int = 1, eot_iter: int = 1, seed: int | None = None, loss: str | LossFn = "ce",
                 eps_units: str = "normalized", std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(model, eps, steps=steps, alpha=alpha, random_start=random_start, restarts=restarts,
                         eot_iter=eot_iter, seed=seed, loss=loss, eps_units=eps_units, std=std)
