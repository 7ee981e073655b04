"""Robustness evaluation: clean accuracy and accuracy under every (attack, budget) pair of a protocol.

The paper's protocol: clean; audio-only attack (eps_a = 0.012); visual-only (eps_v = 0.012); joint
audio-visual (eps_a = eps_v = 0.006). Visual budgets are in ImageNet-normalised units by default
(``--eps_units normalized``, as the released code), audio budgets in waveform amplitude.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from attacks import build_attack
from dataset.loaders import to_device
from evaluation.html_report import write_visualization
from evaluation.plots import plot_acc_vs_eps, plot_cos_sim
from evaluation.protocol import Budget
from evaluation.report import attack_table_markdown
from models.av_model import feature_cosine
from utils.distributed import DistInfo, all_gather_list, all_reduce_sum
from utils.fileio import write_json_atomic, write_text_atomic
from utils.meters import ConfusionCounter


@dataclass
class _Tally:
    counter: ConfusionCounter
    cos: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _cosines(out) -> list[float]:
    cos = feature_cosine(out)
    return [] if cos is None else cos.tolist()


def evaluate_attacks(model: nn.Module, loader, args: argparse.Namespace, info: DistInfo,
                     budgets: list[Budget], attack_types: list[str],
                     num_vis: int = 0) -> tuple[dict, list[dict]]:
    """Attack every batch with every (attack type, budget); returns (results, visualisation samples).

    ``results`` has the clean figures and one entry per (attack, budget) with adversarial accuracy
    (overall and per class), mean audio-visual cosine similarity clean vs adversarial and the attack's
    time. The first ``num_vis`` samples of rank 0 come back with their clean and adversarial inputs
    and predictions for the HTML page.
    """
    model.eval()
    clean = _Tally(ConfusionCounter(args.cls_num))
    tallies = {(a, b): _Tally(ConfusionCounter(args.cls_num)) for a in attack_types for b in budgets}
    attackers = {(a, b): build_attack(a, model, eps={"visual": b.eps_visual, "audio": b.eps_audio},
                                      steps=args.attack_steps, alpha=args.attack_alpha, loss=args.attack_loss,
                                      eps_units=args.eps_units, random_start=args.random_start,
                                      restarts=args.restarts)
                 for a in attack_types for b in budgets}
    vis: list[dict] = []
    for batch in tqdm(loader, desc="attacks", disable=not info.is_main, dynamic_ncols=True):
        frames, audio, labels = to_device(batch, info.device)
        with torch.no_grad():
            out = model(frames, audio)
        clean.counter.update(out.logits, labels)
        clean.cos += _cosines(out)
        keep = max(0, num_vis - len(vis)) if info.is_main else 0
        batch_vis = [{"info": batch["info"][i], "label": int(labels[i]), "clean_pred": int(out.logits[i].argmax()),
                      "frames": frames[i].cpu(), "audio": audio[i].cpu(), "adv": {}}
                     for i in range(min(keep, labels.numel()))]
        for (attack_type, budget), attacker in attackers.items():
            tally = tallies[(attack_type, budget)]
            start = time.perf_counter()
            adv_frames, adv_audio = attacker(frames, audio, labels)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            tally.seconds += time.perf_counter() - start
            with torch.no_grad():
                adv_out = model(adv_frames, adv_audio)
            tally.counter.update(adv_out.logits, labels)
            tally.cos += _cosines(adv_out)
            if attack_type == attack_types[0] and not budget.grid:
                for i, sample in enumerate(batch_vis):
                    sample["adv"][budget.name] = {"frames": adv_frames[i].cpu(), "audio": adv_audio[i].cpu(),
                                                  "pred": int(adv_out.logits[i].argmax()), "budget": asdict(budget)}
        vis += batch_vis
    return _results(clean, tallies, args, info), vis


def _reduce(tally: _Tally, info: DistInfo) -> None:
    tally.counter.all_reduce(info)
    tally.cos = all_gather_list(tally.cos, info)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _results(clean: _Tally, tallies: dict, args: argparse.Namespace, info: DistInfo) -> dict:
    _reduce(clean, info)
    entries = []
    for (attack_type, budget), tally in tallies.items():
        _reduce(tally, info)
        seconds = all_reduce_sum(torch.tensor(tally.seconds, dtype=torch.float64), info).item() / info.world_size
        entries.append({
            "attack": attack_type, "budget": budget.name, "eps_visual": budget.eps_visual,
            "eps_audio": budget.eps_audio, "grid": budget.grid, "clean_acc": clean.counter.accuracy,
            "adv_acc": tally.counter.accuracy,
            "per_class_adv_acc": dict(zip(args.categories, tally.counter.per_class())),
            "cos_clean_mean": _mean(clean.cos), "cos_adv_mean": _mean(tally.cos),
            "cos_adv": tally.cos, "seconds": seconds})
    return {
        "run": args.id, "arch_classifier": args.arch_classifier, "num_samples": int(clean.counter.total.sum()),
        "eps_units": args.eps_units, "attack_steps": args.attack_steps, "attack_alpha": args.attack_alpha,
        "attack_loss": args.attack_loss, "random_start": args.random_start, "restarts": args.restarts,
        "clean": {"acc": clean.counter.accuracy, "per_class_acc": dict(zip(args.categories, clean.counter.per_class())),
                  "cos_mean": _mean(clean.cos), "cos": clean.cos},
        "attacks": entries,
    }


def write_outputs(run_dir: Path, results: dict, vis: list[dict], args: argparse.Namespace,
                  title: str | None = None) -> list[Path]:
    """attack_results.json, attack_table.md, acc_vs_eps.png, cos_sim.png and visualization/index.html."""
    written = [run_dir / "attack_results.json", run_dir / "attack_table.md", run_dir / "acc_vs_eps.png"]
    write_json_atomic(written[0], results)
    write_text_atomic(written[1], attack_table_markdown(results))
    plot_acc_vs_eps(results, written[2])
    if plot_cos_sim(results, run_dir / "cos_sim.png"):
        written.append(run_dir / "cos_sim.png")
    if vis:
        written.append(write_visualization(vis, run_dir / "visualization", args.categories, args.audRate,
                                           title or f"{args.id}: {args.attack_type[0].upper()} attacks"))
    return written
