"""Figures of a robustness evaluation: accuracy against epsilon, and the audio-visual cosine similarity."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.fileio import atomic_path  # noqa: E402

COLORS = {"A": "tab:blue", "V": "tab:orange", "A+V": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_acc_vs_eps(results: dict, path: str | os.PathLike) -> None:
    """Adversarial accuracy against the per-modality budget, one line per (attack, attacked modalities);
    eps = 0 is the clean accuracy. A+V is drawn against its (equal or visual) per-modality eps."""
    fig, ax = plt.subplots(figsize=(6, 4))
    attacks = list(dict.fromkeys(e["attack"] for e in results["attacks"]))
    for i, attack in enumerate(attacks):
        for budget in COLORS:
            points = sorted((max(e["eps_visual"], e["eps_audio"]), e["adv_acc"]) for e in results["attacks"]
                            if e["attack"] == attack and e["budget"] == budget)
            if not points:
                continue
            xs, ys = zip(*([(0.0, results["clean"]["acc"])] + points))
            ax.plot(xs, ys, marker="o", color=COLORS[budget], linestyle=LINESTYLES[i % len(LINESTYLES)],
                    label=f"{attack.upper()} {budget}")
    ax.set_xlabel(f"ε per attacked modality (visual in {results['eps_units']} units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(results["run"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_cos_sim(results: dict, path: str | os.PathLike) -> bool:
    """Histograms of cos(feat_v, feat_a) on clean and adversarial inputs (first attack type, protocol budgets).
    Returns False (and writes nothing) for a unimodal model, which has no such similarity."""
    clean = results["clean"]["cos"]
    if not clean:
        return False
    entries = [e for e in results["attacks"] if not e["grid"] and e["cos_adv"]]
    entries = [e for e in entries if e["attack"] == entries[0]["attack"]] if entries else []
    fig, axes = plt.subplots(1, max(1, len(entries)), figsize=(4 * max(1, len(entries)), 3.2), squeeze=False)
    for ax, entry in zip(axes[0], entries or [None]):
        ax.hist(clean, bins=30, range=(-1, 1), alpha=0.6, label="clean", color="tab:gray")
        if entry is not None:
            ax.hist(entry["cos_adv"], bins=30, range=(-1, 1), alpha=0.6, color=COLORS[entry["budget"]],
                    label=f"{entry['attack'].upper()} {entry['budget']}")
        ax.set_xlabel("cos(feat_v, feat_a)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("samples")
    fig.suptitle(results["run"], fontsize=8)
    _save(fig, path)
    return True
