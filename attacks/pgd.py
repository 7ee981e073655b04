"""PGD (Madry et al. 2018): L∞ with sign steps, L2 with normalised-gradient steps."""
from __future__ import annotations

from attacks.base import Attack
from attacks.registry import ATTACKS


@ATTACKS.register("pgd")
class PGD(Attack):
    """``steps`` projected steepest-ascent steps of size α (sign steps for L∞, ``grad / ||grad||_2`` for L2);
    the paper's: L∞, 10 steps, α = ε/8, no random start.

    ``restarts``, ``eot_iter``, ``seed`` and the threat model as in ``Attack``.
    """

    summary = "projected gradient descent (Madry et al. 2018); the paper's: 10 steps of eps/8, no random start"
