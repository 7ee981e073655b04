"""One robustness evaluation end to end, as the entry points run it: engine, results, checks, outputs.

Writes into ``out_dir``: attack_results.json (figures with intervals and the checks), per_sample.npz
(the per-sample records), attack_table.md, acc_vs_eps.png, cos_sim.png and visualization/index.html; with
--eps_grid2d also eps_map.json and eps_map.png (the (ε_v, ε_a) map).

With --max_shift (the misalignment attacks) the evaluation loader is rebuilt over its dataset wrapped in
``dataset.misalignment.ShiftedAudio``, which adds the shifted audio windows to every batch.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from attacks import black_box_attacks
from attacks.threat import ThreatSettings
from dataset.loaders import build_loader
from dataset.misalignment import with_audio_shifts
from defenses.protocol import diagnostics
from evaluation.reporting.html import write_visualization
from evaluation.reporting.plots import plot_acc_vs_eps, plot_cos_sim, plot_eps_maps
from evaluation.reporting.tables import attack_table_markdown
from evaluation.robustness.checks import run_checks
from evaluation.robustness.engine import AttackEngine, Variant
from evaluation.robustness.protocol import budgets_from_args
from evaluation.robustness.results import build_eps_map, build_results
from utils.distributed import DistInfo, all_reduce_sum
from utils.fileio import write_json_atomic, write_text_atomic


def evaluate_robustness(model: nn.Module, loader, args: argparse.Namespace, info: DistInfo, out_dir: Path,
                        variants: Sequence[Variant] | None = None, label: str | None = None,
                        title: str | None = None) -> dict:
    """Every ``--attack_type`` under the protocol (or ``--epsilons``) and the ``--eps_grid`` sweep, for each
    variant (default: one, with ``--attack_loss``); per-sample records, the checks, and the outputs."""
    variants = list(variants or [Variant("default", args.attack_loss)])
    budgets = budgets_from_args(args)
    threat = ThreatSettings.from_args(args)
    if threat.max_shift is not None:
        loader = with_audio_shifts(loader, threat.shifts(), lambda data: build_loader(data, args, info, train=False))
    engine = AttackEngine(model, args, info, budgets, args.attack_type, variants, num_vis=args.num_vis,
                          sanity_eps=args.sanity_eps)
    before = diagnostics(model).get("dense_backward", 0)
    run = engine.run(loader)
    dense_backward = diagnostics(model).get("dense_backward", 0) - before
    dense_backward = int(all_reduce_sum(torch.tensor(dense_backward, dtype=torch.float64), info).item())
    names = [v.name for v in variants]
    results = build_results(run, args, engine.plan, engine.attack_types, names)
    results["attack_settings"] = engine.effective_settings(args.cls_num)
    if label:
        results["label"] = label
    eps_map = build_eps_map(run, args, engine.attack_types[0], label) if threat.eps_grid2d else None
    # the checks compare budgets of one threat model (a shared perturbation is weaker than per-frame ones)
    check_budgets = [b for b in budgets if b.temporal in ("frame", threat.temporal[0])]
    results["checks"] = run_checks(run.records, run.probe, check_budgets, model, names, args.cls_num, args.eot_iter,
                                   args.sanity_eps, black_box_attacks(), dense_backward,
                                   [v.purification for v in variants])
    if info.is_main:
        written = write_outputs(out_dir, results, run, args, title, eps_map)
        print(attack_table_markdown(results))
        if "misalignment" in results:
            shift = results["misalignment"]
            print(f"misalignment: {shift['clips_lacking_a_shift']} of {results['num_samples']} clips lack some shift "
                  f"of ±{shift['max_shift']:g} s (too short; those shifts are not used), "
                  f"{shift['clips_lacking_every_shift']} lack every shift")
        for name, check in results["checks"].items():
            if isinstance(check, dict) and check["flag"]:
                print(f"warning: check '{name}': {check['message']}")
            elif isinstance(check, dict) and check["status"] == "not run":
                print(f"check '{name}' not run: {check['why']}; run it with {check['run_with']}")
        print(f"checks: {results['checks']['verdict']}")
        print("wrote " + ", ".join(str(p) for p in written))
    return results


def write_outputs(out_dir: Path, results: dict, run, args: argparse.Namespace, title: str | None = None,
                  eps_map: dict | None = None) -> list[Path]:
    """attack_results.json, per_sample.npz, attack_table.md, acc_vs_eps.png, cos_sim.png, visualization/, and
    eps_map.json / eps_map.png when given the map."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "attack_results.json", out_dir / "per_sample.npz", out_dir / "attack_table.md",
               out_dir / "acc_vs_eps.png"]
    write_json_atomic(written[0], results)
    run.records.save(written[1])
    write_text_atomic(written[2], attack_table_markdown(results))
    plot_acc_vs_eps(results, written[3])
    if plot_cos_sim(results, out_dir / "cos_sim.png"):
        written.append(out_dir / "cos_sim.png")
    if eps_map is not None:
        written += [out_dir / "eps_map.json", out_dir / "eps_map.png"]
        write_json_atomic(written[-2], eps_map)
        plot_eps_maps([eps_map], written[-1])
    if run.vis:
        label = results.get("label") or args.id
        written.append(write_visualization(run.vis, out_dir / "visualization", args.categories, args.audRate,
                                           title or f"{label}: {args.attack_type[0].upper()} attacks"))
    return written
