"""The results dict of an evaluation (``attack_results.json``), built from its per-sample records.

Every accuracy carries its sample count, the number correct and a 95 % Wilson interval (``ci``, percent).
Entries, one per (attack, budget):

* a single attack: accuracy under it; with several variants (a defense's adaptive attacks), the share of
  samples correct under *every* variant (``variant_acc`` gives each variant's own figure);
* a cascade (``autoattack``): the robust accuracy after all its components (clean-correct and never fooled),
  and ``components`` with the robust accuracy after each one, in order.

``worst_case`` gives per budget the robust accuracy under all attacks together, per sample.

Each entry names its budget's threat model (``budget_key``, ``label``, ``threat`` and the fields of
``ThreatModel.fields``); a joint L2 budget reports the mean share of the budget the
attack spent on vision (``perturbation.split_v_mean``), a misalignment attack how often it chose each shift
(``shift_counts``) and the results the clips that lack some shift (``misalignment``). ``build_eps_map`` gives
the (ε_v, ε_a) map of --eps_grid2d.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np

from attacks import CASCADES
from attacks.threat import ThreatSettings
from evaluation.robustness.engine import SHIFT_SEARCH, EvaluationRun, is_shift_attack
from evaluation.robustness.protocol import Budget, map_budgets
from evaluation.robustness.records import RecordKey, Records
from evaluation.stats import wilson_interval


def accuracy(correct: np.ndarray) -> dict:
    """``{"n", "correct", "acc", "ci"}`` of a per-sample bool array; acc and ci in percent."""
    n, k = int(correct.size), int(np.count_nonzero(correct))
    low, high = wilson_interval(k, n)
    return {"n": n, "correct": k, "acc": 100.0 * k / n if n else 0.0, "ci": [100.0 * low, 100.0 * high]}


def per_class(correct: np.ndarray, labels: np.ndarray, categories: Sequence[str]) -> dict[str, float | None]:
    return {name: (100.0 * float(correct[labels == c].mean()) if (labels == c).any() else None)
            for c, name in enumerate(categories)}


def _finite(values: list[np.ndarray]) -> np.ndarray:
    joined = np.concatenate(values) if values else np.zeros(0)
    return joined[np.isfinite(joined)]


PERTURBATION_STATS = (("snr_a", ("mean", "min")), ("linf_v", ("mean", "max")), ("psnr_v", ("mean",)),
                      ("l2_v", ("mean", "max")), ("l2_a", ("mean", "max")), ("split_v", ("mean",)))


def perturbation_summary(records: Records, keys: Sequence[RecordKey]) -> dict:
    """Audio SNR (dB, mean and minimum), visual L∞ (1/255 steps, mean and maximum), PSNR (dB, mean), the L2
    norms (visual over the clip in pixels, audio over the waveform; mean and maximum) and, for a joint
    budget, the mean share spent on vision, over the attacked samples of ``keys``; an untouched modality
    is left out."""
    out: dict = {}
    for name, stats in PERTURBATION_STATS:
        values = _finite([records.column(k, name) for k in keys if name in records.columns[k]])
        if values.size:
            for stat in stats:
                out[f"{name}_{stat}"] = float(getattr(np, stat)(values))
    return out


def _cos(records: Records, key: RecordKey) -> list[float]:
    if "cos" not in records.columns[key]:
        return []
    values = records.column(key, "cos")
    return [float(v) for v in values if math.isfinite(v)]


def _entry(run: EvaluationRun, args: argparse.Namespace, attack: str, budget: Budget, keys: list[RecordKey],
           variants: Sequence[str], labels: np.ndarray) -> dict:
    records = run.records
    entry = {"attack": attack, **budget_fields(budget), "variants": list(variants)}
    robust = records.correct_under(attack, budget.key)
    if attack in CASCADES:
        components = []
        for i, key in enumerate(keys):
            components.append({"component": key.component, "variant": key.variant,
                               **accuracy(records.robust(keys[:i + 1])), "seconds": run.seconds.get(key, 0.0)})
        entry["components"] = components
    else:
        entry["variant_acc"] = {k.variant: 100.0 * float((records.column(k) == 1).mean()) for k in keys}
    if is_shift_attack(attack):
        chosen = records.column(keys[0], "shift_s")
        entry["shift_counts"] = {f"{s:g}": int(np.count_nonzero(chosen == s)) for s in np.unique(chosen)}
    reasons = sorted({run.unchanged[k] for k in keys if k in run.unchanged})
    if reasons:
        entry["unchanged"] = "; ".join(reasons)
    figures = accuracy(robust)
    cos = _cos(records, keys[0])
    entry.update(adv_acc=figures["acc"], n=figures["n"], correct=figures["correct"], ci=figures["ci"],
                 per_class_adv_acc=per_class(robust, labels, args.categories),
                 perturbation=perturbation_summary(records, keys),
                 seconds=sum(run.seconds.get(k, 0.0) for k in keys),
                 cos_adv=cos, cos_adv_mean=float(np.mean(cos)) if cos else None)
    return entry


def budget_fields(budget: Budget) -> dict:
    """The budget and its threat model as results fields (``budget`` is the A / V / A+V name)."""
    return {"budget": budget.name, "budget_key": budget.key, "label": budget.label, "threat": budget.threat,
            "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio, "grid": budget.grid,
            "eps_map": budget.eps_map, **budget.fields()}


def misalignment_summary(run: EvaluationRun, threat: ThreatSettings) -> dict:
    """The shift grid, and the clips lacking some shift (or every shift) because the clip is too short."""
    missing = np.asarray(run.records.extra.get("shift_missing", []))
    shifts = threat.shifts()
    return {"max_shift": threat.max_shift, "shift_steps": threat.shift_steps, "shifts": shifts,
            "clips_lacking_a_shift": int(np.count_nonzero(missing > 0)),
            "clips_lacking_every_shift": int(np.count_nonzero(missing == len(shifts))),
            "search_seconds": run.seconds.get(SHIFT_SEARCH, 0.0)}


def build_results(run: EvaluationRun, args: argparse.Namespace, plan: Sequence[tuple[str, Budget]],
                  attack_types: Sequence[str], variants: Sequence[str]) -> dict:
    """The results of an engine run of ``plan`` (``AttackEngine.plan``: its (attack, budget) pairs)."""
    records = run.records
    labels = np.asarray(records.labels)
    clean = np.asarray(records.clean_correct, dtype=bool)
    cos_clean = [float(v) for v in records.extra.get("cos_clean", [])]
    entries = []
    for attack in attack_types:
        for budget in [b for a, b in plan if a == attack]:
            keys = records.attack_keys(attack, budget.key)
            if keys:
                entries.append(_entry(run, args, attack, budget, keys, variants, labels))
    worst_case = []
    for budget in {b.key: b for _, b in plan}.values():
        with_budget = [a for a, b in plan if b.key == budget.key]
        budget_keys = [k for attack in with_budget for k in records.attack_keys(attack, budget.key)]
        if budget_keys:
            worst_case.append({**budget_fields(budget), "attacks": with_budget,
                               **accuracy(records.robust(budget_keys))})
    clean_figures = accuracy(clean)
    threat = ThreatSettings.from_args(args)
    extra = {"misalignment": misalignment_summary(run, threat)} if threat.max_shift is not None else {}
    return {
        "run": args.id, "arch_classifier": args.arch_classifier, "num_samples": records.num_samples,
        **threat.fields(), **extra,
        "eps_units": args.eps_units, "attack_steps": args.attack_steps, "apgd_steps": args.apgd_steps,
        "apgd_targets": min(args.apgd_targets, args.cls_num - 1), "attack_alpha": args.attack_alpha,
        "attack_loss": args.attack_loss, "random_start": args.random_start, "restarts": args.restarts,
        "square_queries": args.square_queries, "eot_iter": args.eot_iter, "variants": list(variants),
        "clean": {**clean_figures, "per_class_acc": per_class(clean, labels, args.categories),
                  "cos_mean": float(np.mean(cos_clean)) if cos_clean else None, "cos": cos_clean},
        "attacks": entries, "worst_case": worst_case,
    }


def build_eps_map(run: EvaluationRun, args: argparse.Namespace, attack: str, label: str | None = None) -> dict:
    """The (ε_v, ε_a) map of --eps_grid2d under ``attack``: ``acc[i][j]`` (with ``n``, ``correct``, ``ci``) is the
    robust accuracy at ε_v = values[i], ε_a = values[j]; (0, 0) is the clean accuracy."""
    threat = ThreatSettings.from_args(args)
    records = run.records
    values = threat.map_values()
    budgets = map_budgets(threat)
    cells = []
    for ev in values:
        row = []
        for ea in values:
            if not (ev or ea):
                correct = np.asarray(records.clean_correct, dtype=bool)
                key = "clean"
            else:
                budget = budgets[(ev, ea)]
                budget = budget.shifted(threat.max_shift) if attack.startswith("shift+") else budget
                correct, key = records.correct_under(attack, budget.key), budget.key
            row.append({"key": key, **accuracy(correct)})
        cells.append(row)
    return {"run": args.id, "label": label or args.arch_classifier, "attack": attack,
            "norm": threat.norm, "eps_units": args.eps_units, "joint_eps": threat.joint_eps,
            "temporal": threat.temporal[0], "values": values,
            "acc": [[c["acc"] for c in row] for row in cells], "cells": cells}
