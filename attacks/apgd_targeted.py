"""APGD-T, targeted APGD on the targeted DLR loss (Croce & Hein 2020), L∞ and L2."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attacks.apgd import APGD
from attacks.base import BestSoFar, Inputs, Problem
from attacks.losses import targeted_difference_of_logits_ratio
from attacks.registry import ATTACKS
from attacks.threat import IMAGENET_STD, ThreatModel


def target_classes(logits: Tensor, labels: Tensor, n: int) -> Tensor:
    """``[B, n]``: per sample the ``n`` classes other than its label with the highest logits, highest first."""
    others = logits.scatter(1, labels[:, None], -math.inf)
    return others.topk(n, dim=1).indices


@ATTACKS.register("apgd-t")
class APGDTargeted(APGD):
    """APGD run once per target class on the targeted DLR loss, towards the top ``min(n_target_classes,
    C - 1)`` other classes of the clean logits, in order; ``steps`` iterations each.

    Each target's run attacks only the samples no earlier run has fooled (misclassified as any class), so
    a sample keeps its first fooling point, or else the point with the highest targeted DLR over all runs
    (the clean input for a sample that is misclassified as it is). Needs at least 4 classes. ``restarts``
    repeat the whole sequence of targets on the samples still not fooled, compared on the untargeted DLR;
    ``eot_iter``, ``seed`` and the threat model as in ``Attack``. One clean forward pass, then up to
    ``n_target_classes * (steps + 1)`` passes on shrinking subsets.
    """

    summary = ("targeted APGD on the targeted DLR loss, once per target among the top `--apgd_targets` other "
               "classes, each on the samples not yet fooled")
    uses_loss = False
    min_classes = 4
    settings = {**APGD.settings, "n_target_classes": "apgd_targets"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, steps: int = 100,
                 n_target_classes: int = 9, random_start: bool = False, restarts: int = 1, eot_iter: int = 1,
                 seed: int | None = None, momentum: float = 0.75, rho: float = 0.75,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
        super().__init__(model, eps, steps=steps, random_start=random_start, restarts=restarts, eot_iter=eot_iter,
                         seed=seed, momentum=momentum, rho=rho, loss="dlr", std=std)
        self.n_target_classes = n_target_classes

    def perturb(self, problem: Problem) -> Inputs:
        clean = {m: v.clone() for m, v in problem.region.clean.items()}
        logits = problem.clean_logits()
        classes = logits.shape[1]
        if classes < 4:
            raise ValueError(f"apgd-t needs a model with at least 4 classes, this one has {classes}")
        targets = target_classes(logits, problem.labels, min(self.n_target_classes, classes - 1))
        best = BestSoFar(clean, torch.full_like(logits[:, 0], -math.inf), problem.fooled(logits))
        for k in range(targets.shape[1]):
            index = (~best.fooled).nonzero().squeeze(1)
            if index.numel() == 0:
                break
            run = self.run(problem.subset(index, targeted_difference_of_logits_ratio(targets[index, k])))
            best.update(run.x, run.losses, run.fooled, index=index)
        return best.x
