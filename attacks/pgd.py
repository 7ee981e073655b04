"""PGD (Madry et al. 2018): L∞ with sign steps, L2 with normalised-gradient steps."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from attacks.registry import ATTACKS
from models.visual import IMAGENET_STD


@ATTACKS.register("pgd")
class PGD(Attack):
    """``steps`` projected steepest-ascent steps of size α (sign steps for L∞, ``grad / ||grad||_2`` for L2);
    the paper's: L∞, 10 steps, α = ε/8, no random start.

    ``restarts``, ``eot_iter``, ``seed`` and the threat model (``norm``, ``joint_eps``, ``audio_eps_db``,
    ``temporal``) as in ``Attack``.
    """

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
                 restarts: int = 1, eot_iter: int = 1, seed: int | None = None, loss: str | LossFn = "ce",
                 eps_units: str = "normalized", std: Sequence[float] = IMAGENET_STD, norm: str = "linf",
                 joint_eps: float | None = None, audio_eps_db: float | None = None, temporal: str = "frame") -> None:
        super().__init__(model, eps, steps=steps, alpha=alpha, random_start=random_start, restarts=restarts,
                         eot_iter=eot_iter, seed=seed, loss=loss, eps_units=eps_units, std=std, norm=norm,
                         joint_eps=joint_eps, audio_eps_db=audio_eps_db, temporal=temporal)
