"""FGSM (Goodfellow et al. 2015)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from attacks.registry import ATTACKS
from models.visual import IMAGENET_STD


@ATTACKS.register("fsgm")
@ATTACKS.register("fgsm")
class FGSM(Attack):
    """One step of size ε along ``sign(grad)``, clamped into the valid range; no random start, so no
    restarts (``build_attack`` rejects ``restarts > 1`` for it). ``eot_iter`` as in ``Attack``.

    ``fsgm`` is the original code's spelling of the name.
    """

    default_step = 1.0

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, eot_iter: int = 1,
                 loss: str | LossFn = "ce", eps_units: str = "normalized",
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(model, eps, steps=1, eot_iter=eot_iter, loss=loss, eps_units=eps_units, std=std)
