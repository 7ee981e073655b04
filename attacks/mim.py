"""MIM, the momentum iterative method (Dong et al. 2018)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attacks.base import Attack, Inputs
from attacks.losses import LossFn
from attacks.regions import Region
from attacks.registry import ATTACKS
from attacks.threat import IMAGENET_STD, ThreatModel


@ATTACKS.register("mim")
class MIM(Attack):
    """``g <- decay * g + grad / ||grad||_1``, then a projected step ``alpha * sign(g)`` (L∞) or
    ``alpha * g / ||g||_2`` (L2: the normalised momentum; with ``joint_eps`` normalised over both modalities).

    The L1 norm is taken per sample and per modality, so every sample's and every modality's momentum
    weighs each step's gradient equally whatever its scale. The paper's: 10 steps, α = ε/8, decay 1.0, no
    random start. Every restart starts with zero momentum. ``restarts``, ``eot_iter``, ``seed`` and the threat
    model as in ``Attack``.
    """

    summary = ("momentum iterative method (Dong et al. 2018): L1-normalised gradients, decay 1.0, projected around "
               "the clean input")

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, decay: float = 1.0,
                 random_start: bool = False, restarts: int = 1, eot_iter: int = 1, seed: int | None = None,
                 loss: str | LossFn = "ce", std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(model, eps, steps=steps, alpha=alpha, random_start=random_start, restarts=restarts,
                         eot_iter=eot_iter, seed=seed, loss=loss, std=std)
        self.decay = decay

    def direction(self, region: Region, grads: Inputs, state: dict[str, Tensor]) -> Inputs:
        for modality, grad in grads.items():
            norm = torch.linalg.vector_norm(grad, ord=1, dim=tuple(range(1, grad.dim())), keepdim=True)
            grad = grad.div_(norm.clamp_min_(torch.finfo(grad.dtype).tiny))
            momentum = state.get(modality)
            state[modality] = grad if momentum is None else momentum.mul_(self.decay).add_(grad)
        return region.steepest({m: state[m] for m in grads})
