"""Figures of a robustness evaluation: accuracy against epsilon, the (ε_v, ε_a) map, and the audio-visual cosine
similarity."""
from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.fileio import atomic_path  # noqa: E402

COLORS = {"A": "tab:blue", "V": "tab:orange", "A+V": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _on_line(entry: dict) -> bool:
    """Whether an entry belongs on the accuracy-vs-eps lines: a point of the (ε_v, ε_a) map off its edges
    and diagonal, or a budget with no radius to plot against (the shift alone, a dB audio budget), does not."""
    if max(entry["eps_visual"], entry["eps_audio"]) <= 0:
        return False
    return not (entry.get("eps_map") and entry["budget"] == "A+V" and entry["eps_visual"] != entry["eps_audio"])


def _curves(results: dict) -> dict[tuple[str, str, str], list[tuple[float, float, float, float]]]:
    """Per (attack, threat model, budget) the points (eps, acc, ci low, ci high), clean (eps 0) first."""
    clean = results["clean"]
    low, high = clean.get("ci", (clean["acc"], clean["acc"]))
    curves: dict[tuple[str, str, str], list] = {}
    for e in (e for e in results["attacks"] if _on_line(e)):
        key = (e["attack"], e.get("threat", ""), e["budget"])
        ci = e.get("ci", (e["adv_acc"], e["adv_acc"]))
        curves.setdefault(key, [(0.0, clean["acc"], low, high)]).append(
            (max(e["eps_visual"], e["eps_audio"]), e["adv_acc"], ci[0], ci[1]))
    return {key: sorted(points) for key, points in curves.items()}


def plot_acc_vs_eps(results: dict, path: str | os.PathLike) -> None:
    """Adversarial accuracy against the per-modality budget with its 95 % Wilson interval as a band: colour by
    attacked modalities, marker and line style by attack; eps = 0 is the clean accuracy; A+V is drawn against
    its (equal or visual) per-modality eps. Curves that coincide are drawn once, their names joined by '='."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    curves = _curves(results)
    attacks = list(dict.fromkeys((attack, threat) for attack, threat, _ in curves))
    merged: dict[tuple, list[tuple[str, str, str]]] = {}
    for key, points in curves.items():
        merged.setdefault(tuple(points), []).append(key)
    for points, keys in merged.items():
        xs, ys, lows, highs = zip(*points)
        budget, i = keys[0][2], attacks.index(keys[0][:2])
        names = [f"{attack.upper()} {b}" + (f" [{threat}]" if threat else "") for attack, threat, b in keys]
        ax.fill_between(xs, lows, highs, color=COLORS[budget], alpha=0.12, linewidth=0)
        ax.plot(xs, ys, color=COLORS[budget], linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], markersize=7 - 1.5 * (i % 3), markerfacecolor="none",
                label=" = ".join(names))
    norm = "L2 radius" if results.get("norm") == "l2" else "ε"
    ax.set_xlabel(f"{norm} per attacked modality (visual in {results['eps_units']} units)")
    ax.set_ylabel("accuracy (%), band: 95 % Wilson interval")
    ax.set_ylim(0, 100)
    ax.set_title("\n".join(textwrap.wrap(results.get("label") or results["run"], 70)), fontsize=8)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
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


def draw_eps_map(ax, eps_map: dict) -> object:
    """The map's robust accuracy as a heat-map on ``ax`` (rows ε_v, columns ε_a, origin at the bottom left),
    each cell with its number; returns the image (for a colour bar)."""
    values = eps_map["values"]
    image = ax.imshow(eps_map["acc"], origin="lower", cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(eps_map["acc"]):
        for j, acc in enumerate(row):
            ax.text(j, i, f"{acc:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if acc < 50 else "black")
    ticks = [f"{v:g}" for v in values]
    ax.set_xticks(range(len(values)), ticks, fontsize=7)
    ax.set_yticks(range(len(values)), ticks, fontsize=7)
    norm = "L2" if eps_map.get("norm") == "l2" else "L∞"
    ax.set_xlabel(f"εa ({norm}, waveform)")
    ax.set_ylabel(f"εv ({norm}, {eps_map['eps_units']})")
    ax.set_title("\n".join(textwrap.wrap(f"{eps_map['label']}: {eps_map['attack'].upper()}", 28)), fontsize=8)
    return image


def plot_eps_maps(maps: Sequence[dict], path: str | os.PathLike) -> None:
    """One or more (ε_v, ε_a) maps side by side, one shared colour bar (robust accuracy, %)."""
    if not maps:
        raise ValueError("no (eps_v, eps_a) map to draw")
    side = max(3.0, 0.55 * max(len(m["values"]) for m in maps) + 1.5)
    fig, axes = plt.subplots(1, len(maps), figsize=(side * len(maps) + 0.8, side + 0.6), squeeze=False,
                             layout="constrained")
    image = None
    for i, (ax, eps_map) in enumerate(zip(axes[0], maps)):
        image = draw_eps_map(ax, eps_map)
        if i and ax.get_ylabel() == axes[0][0].get_ylabel():
            ax.set_ylabel("")  # said once, at the left: it would run into the panel before
    fig.colorbar(image, ax=list(axes[0]), label="robust accuracy (%)")
    _save(fig, path)
