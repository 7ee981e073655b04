"""FGSM (Goodfellow et al. 2015), and its L2 version FGM."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from attacks.registry import ATTACKS
from attacks.threat import IMAGENET_STD, ThreatModel


@ATTACKS.register("fsgm")
@ATTACKS.register("fgsm")
class FGSM(Attack):
    """One step of size ε along ``sign(grad)`` (L∞) or ``grad / ||grad||_2`` (L2, FGM; with ``joint_eps`` a
    step of ``joint_eps`` along the joint ball's normalised gradient), clipped into the valid range; no random
    start, so no restarts (``build_attack`` rejects ``restarts > 1`` for it). ``eot_iter`` and the threat
    model as in ``Attack``.

    ``fsgm`` is the original code's spelling of the name.
    """

    summary = "one signed-gradient step of eps (FGM under L2); `fsgm` is the original code's spelling"
    default_step = 1.0
    settings = {"eot_iter": "eot_iter"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, eot_iter: int = 1,
                 loss: str | LossFn = "ce", std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(model, eps, steps=1, eot_iter=eot_iter, loss=loss, std=std)
