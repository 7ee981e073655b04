"""One robustness evaluation end to end, as the entry points run it: engine, results, checks, outputs.

Writes into ``out_dir``: attack_results.json (figures with intervals and the checks), per_sample.npz
(the per-sample records), attack_table.md, acc_vs_eps.png, cos_sim.png and visualization/index.html.
"""
from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from evaluation.checks import run_checks
from evaluation.engine import BLACK_BOX, AttackEngine, Variant
from evaluation.html_report import write_visualization
from evaluation.plots import plot_acc_vs_eps, plot_cos_sim
from evaluation.protocol import budgets_from_args
from evaluation.report import attack_table_markdown
from evaluation.results import build_results
from models.sparse_coding import DenseCodeWarning
from utils.distributed import DistInfo
from utils.fileio import write_json_atomic, write_text_atomic


def evaluate_robustness(model: nn.Module, loader, args: argparse.Namespace, info: DistInfo, out_dir: Path,
                        variants: Sequence[Variant] | None = None, label: str | None = None,
                        title: str | None = None) -> dict:
    """Every ``--attack_type`` under the protocol (or ``--epsilons``) and the ``--eps_grid`` sweep, for each
    variant (default: one, with ``--attack_loss``); per-sample records, the checks, and the outputs."""
    variants = list(variants or [Variant("default", args.attack_loss)])
    budgets = budgets_from_args(args)
    engine = AttackEngine(model, args, info, budgets, args.attack_type, variants, num_vis=args.num_vis,
                          sanity_eps=args.sanity_eps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DenseCodeWarning)
        run = engine.run(loader)
    for message in {str(w.message): w for w in caught}.values():  # shown once each, then counted by a check
        warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
    dense_backward = sum(issubclass(w.category, DenseCodeWarning) for w in caught)
    names = [v.name for v in variants]
    results = build_results(run, args, budgets, engine.attack_types, names)
    if label:
        results["label"] = label
    results["checks"] = run_checks(run.records, run.probe, budgets, model, names, args.cls_num, args.eot_iter,
                                   args.sanity_eps, sorted(BLACK_BOX), dense_backward,
                                   [v.purification for v in variants])
    if info.is_main:
        written = write_outputs(out_dir, results, run, args, title)
        print(attack_table_markdown(results))
        for name, check in results["checks"].items():
            if isinstance(check, dict) and check["flag"]:
                print(f"warning: check '{name}': {check['message']}")
        print(f"checks: {results['checks']['verdict']}")
        print("wrote " + ", ".join(str(p) for p in written))
    return results


def write_outputs(out_dir: Path, results: dict, run, args: argparse.Namespace, title: str | None = None) -> list[Path]:
    """attack_results.json, per_sample.npz, attack_table.md, acc_vs_eps.png, cos_sim.png, visualization/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "attack_results.json", out_dir / "per_sample.npz", out_dir / "attack_table.md",
               out_dir / "acc_vs_eps.png"]
    write_json_atomic(written[0], results)
    run.records.save(written[1])
    write_text_atomic(written[2], attack_table_markdown(results))
    plot_acc_vs_eps(results, written[3])
    if plot_cos_sim(results, out_dir / "cos_sim.png"):
        written.append(out_dir / "cos_sim.png")
    if run.vis:
        label = results.get("label") or args.id
        written.append(write_visualization(run.vis, out_dir / "visualization", args.categories, args.audRate,
                                           title or f"{label}: {args.attack_type[0].upper()} attacks"))
    return written
