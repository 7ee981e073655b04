"""A run's plan: the paper's protocol (or --epsilons) and the sweeps, as budgets under the run's threat model,
and the (attack, budget) pairs to evaluate.

The paper's protocol: audio-only attack (eps_a = 0.012); visual-only (eps_v = 0.012); joint audio-visual
(eps_a = eps_v = 0.006). Visual budgets are in ImageNet-normalised units by default (``--eps_units
normalized``, as the released code), audio budgets in waveform amplitude. Each budget is a
``ThreatModel`` (``attacks.threat``), which names itself in tables and records.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from attacks.threat import ThreatModel, ThreatSettings


@dataclass(frozen=True)
class Budget(ThreatModel):
    """One point of a run's plan: a threat model (``attacks.threat.ThreatModel``) and where it comes from:
    ``grid`` marks points of an --eps_grid sweep or of the --eps_grid2d map, ``eps_map`` the map's points
    (which only the first attack type runs)."""

    grid: bool = False
    eps_map: bool = False


PAPER_PROTOCOL = (Budget(0.0, 0.012), Budget(0.012, 0.0), Budget(0.006, 0.006))


def map_budgets(settings: ThreatSettings) -> dict[tuple[float, float], Budget]:
    """The (ε_v, ε_a) map's budgets by (ε_v, ε_a), (0, 0) (the clean input) left out; first --temporal mode only."""
    values = settings.map_values()
    return {(ev, ea): settings.apply(Budget(ev, ea, grid=True, eps_map=True), settings.temporal[0])
            for ev in values for ea in values if ev or ea}


def budgets_from_args(args: argparse.Namespace) -> list[Budget]:
    """The protocol (or --epsilons) under the threat model of the flags (once per --temporal mode), the
    --eps_grid sweep points for the accuracy-vs-eps figure, then the --eps_grid2d map's points; a point
    equal to an earlier budget is not repeated."""
    settings = ThreatSettings.from_args(args)
    if args.epsilons:
        base = [Budget(ev, ea) for ev, ea in args.epsilons]
    else:
        base = list(PAPER_PROTOCOL)
    for eps in args.eps_grid or []:
        for modality in args.eps_grid_modality:
            base.append({"audio": Budget(0.0, eps, grid=True), "visual": Budget(eps, 0.0, grid=True),
                         "both": Budget(eps, eps, grid=True)}[modality])
    budgets: list[Budget] = []
    for budget in [b for raw in base for b in settings.expand(raw)] + list(map_budgets(settings).values()):
        if all(b.key != budget.key for b in budgets):
            budgets.append(budget)
    return budgets


def attack_plan(attack_types: list[str], budgets: list[Budget], max_shift: float | None) -> list[tuple[str, Budget]]:
    """The (attack, budget) pairs of a run, budgets outermost: ``shift`` once, under its own budget (the
    misalignment alone); ``shift+<attack>`` under every budget, shifted; the --eps_grid2d map's points only
    under the first attack type; every other attack under every budget."""
    plan: list[tuple[str, Budget]] = []
    if "shift" in attack_types:
        if max_shift is None:
            raise ValueError("attack 'shift' needs max_shift (--max_shift SECONDS)")
        plan.append(("shift", Budget(0.0, 0.0, max_shift=max_shift)))
    for budget in budgets:
        for attack in attack_types:
            if attack == "shift" or (budget.eps_map and attack != attack_types[0]):
                continue
            if attack.startswith("shift+"):
                if max_shift is None:
                    raise ValueError(f"attack '{attack}' needs max_shift (--max_shift SECONDS)")
                plan.append((attack, budget.shifted(max_shift)))
            else:
                plan.append((attack, budget))
    return plan
