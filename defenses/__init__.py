"""Defenses: the memory banks that purify features by sparse coding (``memory_bank``, ``sparse_coding``), the
defended model, and the interface evaluation uses to attack any defense adaptively (``protocol``). The training
objectives of the defenses (dissimilarity, adversarial training, TRADES) live with training."""
from defenses.memory_bank import BankError, DefendedModel, MemoryBank
from defenses.protocol import AdaptiveAttack, Defense, diagnostics, purifying

__all__ = ["AdaptiveAttack", "BankError", "Defense", "DefendedModel", "MemoryBank", "diagnostics", "purifying"]
