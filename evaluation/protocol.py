"""Attack budgets and the paper's protocol.

The paper's protocol: audio-only attack (eps_a = 0.012); visual-only (eps_v = 0.012); joint audio-visual
(eps_a = eps_v = 0.006). Visual budgets are in ImageNet-normalised units by default (``--eps_units
normalized``, as the released code), audio budgets in waveform amplitude.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """One attack budget: per-modality L-inf radius; ``grid`` marks points of an --eps_grid sweep."""
    eps_visual: float
    eps_audio: float
    grid: bool = False

    @property
    def name(self) -> str:
        if self.eps_visual and self.eps_audio:
            return "A+V"
        return "V" if self.eps_visual else "A"

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.eps_visual:g},a{self.eps_audio:g}"


PAPER_PROTOCOL = (Budget(0.0, 0.012), Budget(0.012, 0.0), Budget(0.006, 0.006))


def budgets_from_args(args: argparse.Namespace) -> list[Budget]:
    """The protocol (or --epsilons), plus the --eps_grid sweep points for the accuracy-vs-eps figure."""
    if args.epsilons:
        budgets = [Budget(ev, ea) for ev, ea in args.epsilons]
    else:
        budgets = list(PAPER_PROTOCOL)
    for eps in args.eps_grid or []:
        for modality in args.eps_grid_modality:
            budget = {"audio": Budget(0.0, eps, True), "visual": Budget(eps, 0.0, True),
                      "both": Budget(eps, eps, True)}[modality]
            if all((b.eps_visual, b.eps_audio) != (budget.eps_visual, budget.eps_audio) for b in budgets):
                budgets.append(budget)
    return budgets
