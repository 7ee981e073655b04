"""The results dict of an evaluation (``attack_results.json``), built from its per-sample records.

Every accuracy carries its sample count, the number correct and a 95 % Wilson interval (``ci``, percent).
Entries, one per (attack, budget):

* a single attack: accuracy under it; with several variants (a defense's adaptive attacks), the share of
  samples correct under *every* variant (``variant_acc`` gives each variant's own figure);
* a cascade (``autoattack``): the robust accuracy after all its components (clean-correct and never fooled),
  and ``components`` with the robust accuracy after each one, in order.

``worst_case`` gives per budget the robust accuracy under all attacks together, per sample.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np

from evaluation.engine import CASCADES, EvaluationRun
from evaluation.protocol import Budget
from evaluation.records import Records
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


def perturbation_summary(records: Records, keys: Sequence[str]) -> dict:
    """Audio SNR (dB, mean and minimum), visual L∞ (1/255 steps, mean and maximum) and PSNR (dB, mean) over
    the attacked samples of ``keys``; an untouched modality is left out."""
    out: dict = {}
    for name, stats in (("snr_a", ("mean", "min")), ("linf_v", ("mean", "max")), ("psnr_v", ("mean",))):
        values = _finite([records.column(k, name) for k in keys if name in records.columns[k]])
        if values.size:
            for stat in stats:
                out[f"{name}_{stat}"] = float(getattr(np, stat)(values))
    return out


def _cos(records: Records, key: str) -> list[float]:
    if "cos" not in records.columns[key]:
        return []
    values = records.column(key, "cos")
    return [float(v) for v in values if math.isfinite(v)]


def _entry(run: EvaluationRun, args: argparse.Namespace, attack: str, budget: Budget, keys: list[str],
           variants: Sequence[str], labels: np.ndarray) -> dict:
    records = run.records
    entry = {"attack": attack, "budget": budget.name, "eps_visual": budget.eps_visual,
             "eps_audio": budget.eps_audio, "grid": budget.grid, "variants": list(variants)}
    robust = records.correct_under(attack, budget.key)
    if attack in CASCADES:
        components = []
        for i, key in enumerate(keys):
            component, _, variant = key.split("|")
            components.append({"component": component.split("/", 1)[1], "variant": variant,
                               **accuracy(records.robust(keys[:i + 1])), "seconds": run.seconds.get(key, 0.0)})
        entry["components"] = components
    else:
        entry["variant_acc"] = {k.split("|")[2]: 100.0 * float((records.column(k) == 1).mean()) for k in keys}
    figures = accuracy(robust)
    cos = _cos(records, keys[0])
    entry.update(adv_acc=figures["acc"], n=figures["n"], correct=figures["correct"], ci=figures["ci"],
                 per_class_adv_acc=per_class(robust, labels, args.categories),
                 perturbation=perturbation_summary(records, keys),
                 seconds=sum(run.seconds.get(k, 0.0) for k in keys),
                 cos_adv=cos, cos_adv_mean=float(np.mean(cos)) if cos else None)
    return entry


def build_results(run: EvaluationRun, args: argparse.Namespace, budgets: Sequence[Budget], attack_types: Sequence[str],
                  variants: Sequence[str]) -> dict:
    records = run.records
    labels = np.asarray(records.labels)
    clean = np.asarray(records.clean_correct, dtype=bool)
    cos_clean = [float(v) for v in records.extra.get("cos_clean", [])]
    entries = []
    for attack in attack_types:
        for budget in budgets:
            keys = records.attack_keys(attack, budget.key)
            if keys:
                entries.append(_entry(run, args, attack, budget, keys, variants, labels))
    worst_case = []
    for budget in budgets:
        budget_keys = [k for attack in attack_types for k in records.attack_keys(attack, budget.key)]
        if budget_keys:
            worst_case.append({"budget": budget.name, "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio,
                               "grid": budget.grid, "attacks": list(attack_types),
                               **accuracy(records.robust(budget_keys))})
    clean_figures = accuracy(clean)
    return {
        "run": args.id, "arch_classifier": args.arch_classifier, "num_samples": records.num_samples,
        "eps_units": args.eps_units, "attack_steps": args.attack_steps, "apgd_steps": args.apgd_steps,
        "apgd_targets": args.apgd_targets, "attack_alpha": args.attack_alpha,
        "attack_loss": args.attack_loss, "random_start": args.random_start, "restarts": args.restarts,
        "square_queries": args.square_queries, "eot_iter": args.eot_iter, "variants": list(variants),
        "clean": {**clean_figures, "per_class_acc": per_class(clean, labels, args.categories),
                  "cos_mean": float(np.mean(cos_clean)) if cos_clean else None, "cos": cos_clean},
        "attacks": entries, "worst_case": worst_case,
    }
