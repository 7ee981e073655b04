"""Natural robustness of a trained model: the corruption suite (``evaluation.corruption.corruptions``) on the
test split.

Every selected condition (a corruption at a severity, a co-occurring pair at a severity, a missing modality)
is applied to each test batch and the model's per-sample correctness, loss and the measured strength of the
change (PSNR of the frames, SNR of the audio; ``evaluation.robustness.records.perturbation_sizes``) are recorded per
sample, gathered over ranks like the attack engine's records. Writes into the run folder:

* ``corruption_results.json``: every accuracy with its 95 % Wilson interval (the corrupted accuracy, as
  ImageNet-C and MultiBench report it, and ``robust_acc``: the share right on both the clean and the corrupted
  input, so a clean-misclassified sample is never robust), its ratio to the clean accuracy
  (relative robustness, MultiBench's), the mean PSNR / SNR, per corruption the mean over severities, and
  the mean corruption accuracy overall and per group (visual, audio, both);
* ``corruption_per_sample.npz``: the per-sample records (``evaluation.robustness.records.load_records``), keys
  ``<condition>|<severity>|natural`` (severity ``-`` for a missing modality);
* ``corruption_table.md`` and ``corruption.png`` (accuracy against severity per corruption, by group).

A mean over severities (or over corruptions) averages accuracies of the same samples, which are not
independent draws, so its 95 % interval is a percentile bootstrap over samples (of each sample's share of
correct conditions), not a Wilson interval.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset
from tqdm import tqdm

from dataset.loaders import build_dataset, build_loader, to_device
from evaluation.corruption.corruptions import (
    AUDIO,
    BOTH,
    CORRUPTIONS,
    MISSING,
    PAIRS,
    VISUAL,
    ModalityStats,
    corrupt,
    group_of,
    missing_modality,
    resolve_names,
)
from evaluation.robustness.records import RecordKey, Records, perturbation_sizes
from evaluation.robustness.results import accuracy
from evaluation.stats import format_accuracy
from utils.distributed import DistInfo, all_reduce_sum
from utils.fileio import atomic_path, write_json_atomic, write_text_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_STATS_CLIPS = 256  # training clips (evenly spaced over the split) behind the missing-modality mean
BOOTSTRAP_RESAMPLES = 2000
VARIANT = "natural"
NO_SEVERITY = "-"
CORRUPTED_GROUPS = (VISUAL, AUDIO, BOTH)
PANEL_TITLES = {VISUAL: "visual corruptions", AUDIO: "audio corruptions",
                BOTH: "co-occurring audio-visual corruptions", MISSING: "missing modality"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")

Inputs = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Condition:
    """One evaluated input condition: ``apply(frames, audio, sample_ids, cache)`` returns the changed pair, an
    unchanged modality being the very tensor it was given. ``cache`` (a dict per batch, or None) holds the
    single corruptions already computed on the batch: a co-occurring pair draws the same randomness as each of
    its corruptions alone, so it reuses them (JPEG and AAC dominate the suite's cost)."""

    name: str
    group: str
    severity: int | None
    apply: Callable[[Tensor, Tensor, Sequence[str]], Inputs]

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.name, NO_SEVERITY if self.severity is None else str(self.severity), VARIANT)


def build_conditions(names: Sequence[str], severities: Sequence[int], seed: int, sample_rate: int,
                     stats: ModalityStats | None) -> list[Condition]:
    """The conditions of the selected suite names (see ``resolve_names``) at ``severities``, in suite order."""
    conditions = []
    for name in resolve_names(names):
        group = group_of(name)
        if group == MISSING:
            _, modality, fill = name.split("_")
            conditions.append(Condition(name, group, None, _missing(modality, fill, seed, stats)))
            continue
        for severity in severities:
            conditions.append(Condition(name, group, severity, _corrupted(name, severity, seed, sample_rate)))
    return conditions


def _corrupted(name: str, severity: int, seed: int, sample_rate: int) -> Callable[..., Inputs]:
    visual, audio = name.split("+") if "+" in name else (
        (name, None) if CORRUPTIONS[name].modality == VISUAL else (None, name))

    def corrupted(part: str, x: Tensor, ids: Sequence[str], cache: dict | None) -> Tensor:
        if cache is None:
            return corrupt(part, x, severity, seed, ids, sample_rate)
        if (part, severity) not in cache:
            cache[part, severity] = corrupt(part, x, severity, seed, ids, sample_rate)
        return cache[part, severity]

    def apply(frames: Tensor, wave: Tensor, ids: Sequence[str], cache: dict | None = None) -> Inputs:
        if visual is not None:
            frames = corrupted(visual, frames, ids, cache)
        if audio is not None:
            wave = corrupted(audio, wave, ids, cache)
        return frames, wave
    return apply


def _missing(modality: str, fill: str, seed: int, stats: ModalityStats | None) -> Callable[..., Inputs]:
    def apply(frames: Tensor, wave: Tensor, ids: Sequence[str], cache: dict | None = None) -> Inputs:
        if modality == VISUAL:
            return missing_modality(frames, VISUAL, fill, seed, ids, stats), wave
        return frames, missing_modality(wave, AUDIO, fill, seed, ids, stats)
    return apply


def needs_training_stats(names: Sequence[str]) -> bool:
    return any(group_of(n) == MISSING and not n.endswith("_zeros") for n in resolve_names(names))


def training_statistics(args: argparse.Namespace, info: DistInfo, max_clips: int = TRAIN_STATS_CLIPS) -> ModalityStats:
    """Per-channel pixel mean / std and waveform mean / std of up to ``max_clips`` training clips, evenly
    spaced over the split, under the eval transforms (centre crop, unchanged volume); sharded over ranks."""
    dataset = build_dataset(args, "train", train_transforms=False)
    count = min(len(dataset), max_clips)
    picked = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, count).round()})
    loader = build_loader(Subset(dataset, picked), args, info, train=False)
    sums = torch.zeros(10, dtype=torch.float64, device=info.device)  # pixel sum[3], sum of squares[3], pixels,
    # audio sum, sum of squares, samples
    for batch in tqdm(loader, desc="training statistics", disable=not info.is_main, dynamic_ncols=True):
        frames, audio, _ = to_device(batch, info.device)
        frames, audio = frames.double(), audio.double()
        sums[0:3] += frames.sum(dim=(0, 2, 3, 4))
        sums[3:6] += frames.pow(2).sum(dim=(0, 2, 3, 4))
        sums[6] += frames[:, 0].numel()
        sums[7], sums[8], sums[9] = sums[7] + audio.sum(), sums[8] + audio.pow(2).sum(), sums[9] + audio.numel()
    sums = all_reduce_sum(sums, info).cpu()
    frame_mean = sums[0:3] / sums[6]
    frame_std = (sums[3:6] / sums[6] - frame_mean.pow(2)).clamp_min(0).sqrt()
    audio_mean = sums[7] / sums[9]
    audio_std = (sums[8] / sums[9] - audio_mean.pow(2)).clamp_min(0).sqrt()
    return ModalityStats(tuple(frame_mean.tolist()), tuple(frame_std.tolist()), float(audio_mean),
                         float(audio_std), len(picked))


def run_conditions(model: nn.Module, loader, conditions: Sequence[Condition], info: DistInfo) -> Records:
    """Per-sample records of the clean input and of every condition, gathered over ranks."""
    model.eval()
    records = Records()
    for batch in tqdm(loader, desc="corruptions", disable=not info.is_main, dynamic_ncols=True):
        frames, audio, labels = to_device(batch, info.device)
        ids = list(batch["info"])
        with torch.no_grad():
            clean = model(frames, audio).logits
        records.add_samples(ids, batch["index"], labels.cpu(), (clean.argmax(dim=1) == labels).cpu())
        cache: dict = {}
        for condition in conditions:
            new_frames, new_audio = condition.apply(frames, audio, ids, cache)
            with torch.no_grad():
                logits = model(new_frames, new_audio).logits
            values = {"correct": (logits.argmax(dim=1) == labels).to(torch.int8).cpu(),
                      "loss": F.cross_entropy(logits.float(), labels, reduction="none").cpu(),
                      **{k: v.cpu() for k, v in perturbation_sizes(frames, new_frames, audio, new_audio).items()}}
            records.add(condition.key, values, labels.numel())
    records.gather(info)
    return records


def evaluate_corruptions(model: nn.Module, loader, args: argparse.Namespace, info: DistInfo, out_dir: Path) -> dict:
    """``--corruptions`` at ``--corruption_severities`` on ``loader`` (the test split); outputs in ``out_dir``."""
    start = time.perf_counter()
    stats = training_statistics(args, info) if needs_training_stats(args.corruptions) else None
    conditions = build_conditions(args.corruptions, args.corruption_severities, args.seed, args.audRate, stats)
    records = run_conditions(model, loader, conditions, info)
    results = build_corruption_results(records, conditions, args, stats, time.perf_counter() - start)
    if info.is_main:
        written = write_corruption_outputs(out_dir, results, records)
        print(corruption_table_markdown(results))
        print("wrote " + ", ".join(str(p) for p in written))
    return results


# ------------------------------------------------------------------------------------------------- results

def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _relative(acc: float, clean_acc: float) -> float | None:
    return acc / clean_acc if clean_acc > 0 else None


def mean_interval(scores: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """95 % percentile-bootstrap interval (percent) of the mean of per-sample ``scores`` in [0, 1]."""
    if scores.size == 0:
        return [0.0, 100.0]
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, scores.size, size=(resamples, scores.size))].mean(axis=1)
    return [100.0 * float(np.quantile(means, 0.025)), 100.0 * float(np.quantile(means, 0.975))]


def _mean_entry(records: Records, keys: Sequence[RecordKey], clean_acc: float, seed: int) -> dict:
    scores = np.mean([records.column(k) == 1 for k in keys], axis=0)
    acc = 100.0 * float(scores.mean())
    return {"acc": acc, "ci": mean_interval(scores, seed), "relative": _relative(acc, clean_acc)}


def _levels(name: str, severity: int) -> list:
    return [CORRUPTIONS[part].level(severity) for part in name.split("+")]


def build_corruption_results(records: Records, conditions: Sequence[Condition], args: argparse.Namespace,
                             stats: ModalityStats | None, seconds: float) -> dict:
    """The results dict of ``corruption_results.json``; see the module docstring."""
    clean_correct = np.asarray(records.clean_correct, dtype=bool)
    clean = accuracy(clean_correct)
    corruptions: dict[str, dict] = {}
    missing = []
    for condition in conditions:
        key = condition.key
        figures = accuracy(records.column(key) == 1)
        figures["relative"] = _relative(figures["acc"], clean["acc"])
        robust = accuracy(clean_correct & (records.column(key) == 1))  # right on the clean and the corrupted input
        figures.update(robust_correct=robust["correct"], robust_acc=robust["acc"], robust_ci=robust["ci"])
        columns = records.columns[key]
        for field in ("psnr_v", "snr_a"):
            if field in columns:
                figures[f"{field}_mean"] = _finite_mean(np.asarray(columns[field], dtype=float))
        if condition.group == MISSING:
            _, modality, fill = condition.name.split("_")
            missing.append({"name": condition.name, "modality": modality, "fill": fill, **figures})
            continue
        entry = corruptions.setdefault(condition.name, {
            "name": condition.name, "group": condition.group,
            "parameter": " + ".join(CORRUPTIONS[p].parameter for p in condition.name.split("+")),
            "severities": [], "keys": []})
        level = _levels(condition.name, condition.severity)
        entry["severities"].append({"severity": condition.severity, "level": level, **figures})
        entry["keys"].append(key)
    for entry in corruptions.values():
        mean = _mean_entry(records, entry.pop("keys"), clean["acc"], args.seed)
        entry.update(mean_acc=mean["acc"], mean_ci=mean["ci"], relative_robustness=mean["relative"])
    groups = {}
    for group in (*CORRUPTED_GROUPS, None):
        keys = [c.key for c in conditions if c.group != MISSING and group in (None, c.group)]
        if keys:
            groups[group or "all"] = _mean_entry(records, keys, clean["acc"], args.seed)
    overall = groups.pop("all", None)
    return {
        "run": args.id, "arch_classifier": args.arch_classifier, "seed": args.seed, "audio_rate": args.audRate,
        "num_samples": records.num_samples, "severities": list(args.corruption_severities),
        "pairs": [f"{v}+{a}" for v, a in PAIRS], "clean": clean,
        "mean_corruption_acc": None if overall is None else overall["acc"],
        "mean_corruption_ci": None if overall is None else overall["ci"],
        "relative_robustness": None if overall is None else overall["relative"],
        "groups": groups, "corruptions": list(corruptions.values()), "missing": missing,
        "train_stats": None if stats is None else {
            "clips": stats.clips, "frame_mean": list(stats.frame_mean), "frame_std": list(stats.frame_std),
            "audio_mean": stats.audio_mean, "audio_std": stats.audio_std},
        "seconds": seconds,
    }


# ------------------------------------------------------------------------------------------------ outputs

def _mean_text(acc: float, ci: Sequence[float]) -> str:
    return f"{acc:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _strength(row: dict) -> str:
    parts = [f"{row[k]:.1f}" if row.get(k) is not None else "∞" for k in ("psnr_v_mean", "snr_a_mean") if k in row]
    return " / ".join(parts) or "—"


def corruption_table_markdown(results: dict) -> str:
    """Corruption x severity accuracy [95 % CI] with the mean and the relative robustness, the measured
    strength (mean PSNR / SNR, dB), and the missing-modality accuracies."""
    severities = results["severities"]
    clean = results["clean"]
    lines = [f"# Natural robustness: {results['run']}", "",
             f"clean accuracy: {format_accuracy(clean['correct'], clean['n'])} on {clean['n']} samples"]
    if results["mean_corruption_acc"] is not None:
        groups = ", ".join(f"{g} {_mean_text(v['acc'], v['ci'])}" for g, v in results["groups"].items())
        mean = _mean_text(results["mean_corruption_acc"], results["mean_corruption_ci"])
        relative = _ratio(results["relative_robustness"])
        lines.append(f"mean corruption accuracy: {mean}, relative robustness {relative} ({groups})")
    if results["corruptions"]:
        head = ["corruption", "input", *(f"severity {s}" for s in severities), "mean", "relative"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for entry in results["corruptions"]:
            cells = [format_accuracy(r["correct"], r["n"]) for r in entry["severities"]]
            cells += [_mean_text(entry["mean_acc"], entry["mean_ci"]), _ratio(entry["relative_robustness"])]
            lines.append(f"| {entry['name']} | {entry['group']} | " + " | ".join(cells) + " |")
        lines += ["", "Measured strength: mean PSNR of the frames / SNR of the audio (dB; lower = stronger)", "",
                  "| corruption | parameter | " + " | ".join(f"severity {s}" for s in severities) + " |",
                  "|" + "---|" * (len(severities) + 2)]
        for entry in results["corruptions"]:
            cells = [f"{_strength(r)} ({', '.join(map(str, r['level']))})" for r in entry["severities"]]
            lines.append(f"| {entry['name']} | {entry['parameter']} | " + " | ".join(cells) + " |")
    if results["missing"]:
        lines += ["", "| missing modality | replaced by | accuracy | relative |", "|---|---|---|---|"]
        for row in results["missing"]:
            lines.append(f"| {row['modality']} | {row['fill']} | {format_accuracy(row['correct'], row['n'])} | "
                         f"{_ratio(row['relative'])} |")
        stats = results["train_stats"]
        if stats is not None:
            lines += ["", f"training-split statistics over {stats['clips']} clips (eval transforms): pixel mean "
                      f"({', '.join(f'{v:.3f}' for v in stats['frame_mean'])}), std "
                      f"({', '.join(f'{v:.3f}' for v in stats['frame_std'])}); waveform mean "
                      f"{stats['audio_mean']:.4f}, std {stats['audio_std']:.4f}"]
    return "\n".join(lines) + "\n"


def plot_corruptions(results: dict, path: Path) -> None:
    """Accuracy against severity (0 = clean) per corruption, one panel per group; missing modality as bars."""
    panels = [g for g in CORRUPTED_GROUPS if any(e["group"] == g for e in results["corruptions"])]
    panels += [MISSING] if results["missing"] else []
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.8), squeeze=False,
                             layout="constrained")
    clean = results["clean"]["acc"]
    for ax, panel in zip(axes[0], panels):
        if panel == MISSING:
            labels = [f"{r['modality']}: {r['fill']}" for r in results["missing"]]
            ax.barh(labels, [r["acc"] for r in results["missing"]], color="tab:gray")
            ax.axvline(clean, color="black", linestyle="--", label="clean")
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy (%)")
        else:
            for i, entry in enumerate(e for e in results["corruptions"] if e["group"] == panel):
                xs = [0] + [r["severity"] for r in entry["severities"]]
                ys = [clean] + [r["acc"] for r in entry["severities"]]
                ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                        label=entry["name"])
            ax.set_xlabel("severity (0 = clean)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
        ax.set_title(PANEL_TITLES[panel], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(results["run"], fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_corruption_outputs(out_dir: Path, results: dict, records: Records) -> list[Path]:
    """corruption_results.json, corruption_per_sample.npz, corruption_table.md, corruption.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "corruption_results.json", out_dir / "corruption_per_sample.npz",
               out_dir / "corruption_table.md", out_dir / "corruption.png"]
    write_json_atomic(written[0], results)
    records.save(written[1])
    write_text_atomic(written[2], corruption_table_markdown(results))
    plot_corruptions(results, written[3])
    return written

