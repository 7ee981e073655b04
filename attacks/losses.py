"""Attack objectives: ``loss(out, labels) -> per-sample loss [B]``, which the attacks maximise.

Per-sample values let an attack keep the best iterate of every sample; the gradient is taken of
their sum, so a sample's gradient does not depend on the batch size. Adding a loss is one function
plus one line in ``LOSSES`` (the untargeted losses that any attack can use). The targeted DLR, which
needs the targets, is built per batch by ``targeted_difference_of_logits_ratio``; ``margin`` is Square's.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from models.av_model import ModelOutput

LossFn = Callable[[ModelOutput, Tensor], Tensor]


def cross_entropy(out: ModelOutput, labels: Tensor) -> Tensor:
    return F.cross_entropy(out.logits, labels, reduction="none")


def cross_entropy_cosine(out: ModelOutput, labels: Tensor) -> Tensor:
    """CE + cos(feat_v, feat_a): the released adaptive attack's objective.

    Raising the cosine pulls the two embeddings together, against the dissimilarity defense, which
    trains them apart. Without both embeddings (a unimodal model) it is plain CE.
    """
    loss = cross_entropy(out, labels)
    if out.feat_v is None or out.feat_a is None:
        return loss
    if out.feat_v.shape != out.feat_a.shape:
        raise ValueError(f"the ce+cos loss needs visual and audio features of one width, got "
                         f"{out.feat_v.shape[1]} and {out.feat_a.shape[1]}")
    return loss + F.cosine_similarity(out.feat_v, out.feat_a, dim=1)


def difference_of_logits_ratio(out: ModelOutput, labels: Tensor) -> Tensor:
    """Untargeted DLR (Croce & Hein 2020): ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``.

    Positive exactly when the sample is misclassified; invariant to shifting and scaling the logits.
    """
    z = out.logits
    if z.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {z.shape[1]}")
    top, order = z.topk(3, dim=1)
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    z_other = torch.where(order[:, 0] == labels, top[:, 1], top[:, 0])
    return (z_other - z_y) / (top[:, 0] - top[:, 2] + 1e-12)


class PerSampleLoss:
    """A loss with data of its own per sample (targets, regions): ``fn(out, labels, **data)``, each tensor of
    ``data`` ``[B, ...]`` in the batch's order. ``subset(index)`` is the same loss for the samples ``index``,
    which an attack takes when samples leave its batch (``Problem.subset``)."""

    def __init__(self, fn: Callable[..., Tensor], **data: Tensor) -> None:
        self.fn, self.data = fn, data
        self.__name__ = fn.__name__

    def __call__(self, out: ModelOutput, labels: Tensor) -> Tensor:
        for name, value in self.data.items():
            if value.shape[0] != labels.shape[0]:
                raise ValueError(f"the loss {self.__name__!r} holds {name} for {value.shape[0]} samples, the batch "
                                 f"has {labels.shape[0]}")
        return self.fn(out, labels, **self.data)

    def subset(self, index: Tensor) -> PerSampleLoss:
        return PerSampleLoss(self.fn, **{name: value[index.to(value.device)] for name, value in self.data.items()})


def _targeted_dlr(out: ModelOutput, labels: Tensor, targets: Tensor) -> Tensor:
    z = out.logits
    if z.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {z.shape[1]}")
    top = z.topk(4, dim=1).values
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    z_t = z.gather(1, targets[:, None]).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def targeted_difference_of_logits_ratio(targets: Tensor) -> PerSampleLoss:
    """The targeted DLR loss (Croce & Hein 2020) towards ``targets [B]``:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` with ``pi`` the logits sorted in descending order.

    Returns the loss for one batch of targets (the samples' order must match); it needs at least 4 classes.
    """
    return PerSampleLoss(_targeted_dlr, targets=targets)


def margin(out: ModelOutput, labels: Tensor) -> Tensor:
    """``max_{i!=y} z_i - z_y``, the negated logit margin (maximised by attacks): > 0 when misclassified."""
    z = out.logits
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    return z.scatter(1, labels[:, None], -math.inf).amax(dim=1) - z_y


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "ce+cos": cross_entropy_cosine,
    "dlr": difference_of_logits_ratio,
}


# Losses that read the model's features: they need a model that returns a ``ModelOutput``.
NEEDS_FEATURES: frozenset[LossFn] = frozenset({cross_entropy_cosine})


def get_loss(loss: str | LossFn) -> LossFn:
    """A registered loss by name, or ``loss`` itself when it is a callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss '{loss}'; available: {', '.join(LOSSES)}")
    return LOSSES[loss]
