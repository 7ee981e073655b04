"""Accuracy counts for evaluation."""
from __future__ import annotations

import torch

from utils.distributed import DistInfo, all_reduce_sum


class ConfusionCounter:
    """Correct / total counts per class (on the CPU), summed over batches and, by ``all_reduce``, processes."""

    def __init__(self, num_classes: int) -> None:
        self.correct = torch.zeros(num_classes, dtype=torch.long)
        self.total = torch.zeros(num_classes, dtype=torch.long)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred = logits.argmax(dim=1).cpu()
        labels = labels.cpu()
        n = self.total.numel()
        self.total += torch.bincount(labels, minlength=n)
        self.correct += torch.bincount(labels[pred == labels], minlength=n)

    def all_reduce(self, info: DistInfo) -> None:
        """Sum the counts over processes in one collective on ``info.device`` (a no-op in a single process);
        the counts stay on the CPU."""
        self.correct, self.total = all_reduce_sum(torch.stack([self.correct, self.total]), info).unbind(0)

    @property
    def accuracy(self) -> float:
        """Overall accuracy in percent."""
        return 100.0 * self.correct.sum().item() / max(self.total.sum().item(), 1)

    def per_class(self) -> list[float | None]:
        """Accuracy in percent per class; None for a class with no test sample."""
        return [100.0 * c / t if t else None for c, t in zip(self.correct.tolist(), self.total.tolist())]
