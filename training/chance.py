"""A warning when training stays at chance level: the loss near log(classes) and the accuracy near 1 / classes for
several epochs in a row (learning rates too high or too low, a warm-up too short, or labels that carry nothing)."""
from __future__ import annotations

import math

CHANCE_EPOCHS = 3  # epochs in a row at chance before the warning
LOSS_SHARE = 0.9  # training loss at least this share of log(classes)
ACC_FACTOR = 1.5  # training accuracy at most this many times chance


class ChanceWatch:
    """Fed each epoch's record (``train_loss``, ``train_acc`` in %); returns the warning once, when it applies."""

    def __init__(self, num_classes: int, epochs: int = CHANCE_EPOCHS) -> None:
        self.num_classes, self.epochs = num_classes, epochs
        self.streak, self.warned = 0, False

    def at_chance(self, record: dict) -> bool:
        if self.num_classes < 2 or "train_loss" not in record or "train_acc" not in record:
            return False
        chance_acc = 100.0 / self.num_classes
        return (record["train_loss"] >= LOSS_SHARE * math.log(self.num_classes)
                and record["train_acc"] <= ACC_FACTOR * chance_acc)

    def update(self, record: dict) -> str | None:
        self.streak = self.streak + 1 if self.at_chance(record) else 0
        if self.warned or self.streak < self.epochs:
            return None
        self.warned = True
        return (f"training has stayed at chance level for {self.streak} epochs (epoch {record.get('epoch')}: loss "
                f"{record['train_loss']:.3f} vs log({self.num_classes}) = {math.log(self.num_classes):.3f}, train "
                f"accuracy {record['train_acc']:.1f} % vs chance {100.0 / self.num_classes:.1f} %); check the learning "
                "rates (--lr_frame / --lr_sound / --lr_classifier), give a warm-up (--warmup_epochs) or more epochs, "
                "and that the labels match the clips")
