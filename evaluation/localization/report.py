"""Localization outputs: loc_table.md, ciou_vs_eps.png, the HTML page of map overlays, loc_results.json.

The results dict (what ``evaluation.localization.evaluate`` returns and loc_results.json holds) is read through these
keys. Top level: ``run``, ``num_samples``, ``num_boxed``, ``map_size``, ``input_size``, ``eps_units``,
``attack_steps``, ``attack_loss``, ``clean``, ``attacks`` (a list of entries with ``objective``, ``attack``,
``budget``, ``eps_visual``, ``eps_audio``, ``grid``, ``seconds``), ``worst_case`` (entries of the same form,
objective ``worst``: per budget, the per-sample worst case over every attack and objective), optionally the
baselines ``center_prior`` and ``random_map``, ``vs_prior`` (per metric, ``pointing`` and ``ciou``:
``num_boxed``, ``model_hits``, ``baseline_hits``, ``only_model``, ``only_baseline``, ``p_value``, ``alpha``,
``beats``), and ``ciou_mode`` (the cIoU convention of ``evaluation.localization.metrics``; when absent, the default of
``ciou``). Per condition (``clean``, a baseline, every attack entry): ``acc`` in %; ``pointing`` and ``ciou``
(cIoU@0.5) as fractions, ``miou`` (mean cIoU), ``auc``; ``map_iou_top_mass``, ``map_iou_threshold``,
``peak_shift_px``, ``box_similarity`` (when present). The proportions carry a 95% Wilson interval; it needs
their counts: ``num_correct`` out of ``num_samples``, ``pointing_hits`` and ``ciou_hits`` out of ``num_boxed``
(a condition's own size, else the top level's). A missing count is recovered from the fraction and the size
(exact, since the fraction is count / size), so older loc_results.json files still render.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from evaluation.localization.metrics import (
    CIOU_CONVENTIONS,
    DEFAULT_CIOU_MODE,
    MAP_THRESHOLD,
    SUCCESS_THRESHOLD,
    TOP_MASS,
)
from evaluation.reporting.html import STYLE, frame_image, page_layout, safe_name, save_png
from evaluation.reporting.tables import budget_label
from evaluation.stats import format_accuracy, format_fraction
from utils.fileio import atomic_path, write_json_atomic, write_text_atomic

# ------------------------------------------------------------------------------------------- outputs

CIOU_AT = f"cIoU@{SUCCESS_THRESHOLD}"
# proportions of the table: value key -> (count key, size key, scale of the stored value, printed form)
PROPORTIONS = {
    "acc": ("num_correct", "num_samples", 100.0, format_accuracy),
    "pointing": ("pointing_hits", "num_boxed", 1.0, format_fraction),
    "ciou": ("ciou_hits", "num_boxed", 1.0, format_fraction),
}
BOX_COLUMNS = (("pointing", "pointing", ".3f"), ("ciou", CIOU_AT, ".3f"), ("miou", "mean cIoU", ".3f"),
               ("auc", "AUC", ".3f"))
CHANGE_COLUMNS = (("map_iou_top_mass", f"map IoU top {TOP_MASS:.0%} mass", ".3f"),
                  ("map_iou_threshold", f"map IoU >= {MAP_THRESHOLD}", ".3f"),
                  ("peak_shift_px", "peak shift (px)", ".1f"))
SIMILARITY_COLUMN = ("box_similarity", "AV similarity in box", ".3f")
BASELINES = (("center_prior", "centre prior"), ("random_map", "random map"))


def _p_value(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def baseline_lines(results: dict) -> list[str]:
    """Whether the model's clean pointing and cIoU@0.5 beat the centre prior's (``results['vs_prior']``)."""
    lines = []
    for metric, title in (("pointing", "pointing"), ("ciou", CIOU_AT)):
        test = results.get("vs_prior", {}).get(metric)
        if test is None:
            continue
        n = test["num_boxed"]
        verdict = "beats the centre prior" if test["beats"] else "does not beat the centre prior"
        lines.append(f"Clean {title}: the model {verdict} ({format_fraction(test['model_hits'], n)} vs "
                     f"{format_fraction(test['baseline_hits'], n)}; exact McNemar p = {_p_value(test['p_value'])}, "
                     f"{test['only_model']} samples only the model gets, {test['only_baseline']} only the prior; "
                     f"'beats': higher and p < {test['alpha']}).")
    return lines


def ciou_mode(results: dict) -> str:
    """The cIoU convention of ``results`` (a key of ``loc_metrics.CIOU_CONVENTIONS``)."""
    mode = results.get("ciou_mode", DEFAULT_CIOU_MODE)
    if mode not in CIOU_CONVENTIONS:
        raise ValueError(f"results of run {results.get('run')!r}: unknown ciou_mode {mode!r}; "
                         f"known: {sorted(CIOU_CONVENTIONS)}")
    return mode


def proportion_count(values: dict, results: dict, key: str) -> tuple[int, int]:
    """(count, size) behind the proportion ``values[key]`` (``acc``, ``pointing`` or ``ciou``)."""
    count_key, size_key, scale, _ = PROPORTIONS[key]
    size = values.get(size_key, results.get(size_key))
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"results of run {results.get('run')!r}: {key} needs a sample count {size_key!r} > 0, "
                         f"got {size!r}")
    if count_key in values:
        return int(values[count_key]), size
    exact = values[key] / scale * size
    count = round(exact)
    if abs(exact - count) > 1e-6:
        raise ValueError(f"results of run {results.get('run')!r}: {key} = {values[key]} is not a whole number "
                         f"of the {size} samples ({size_key})")
    return count, size


def _cell(values: dict, results: dict, key: str, fmt: str) -> str:
    if values.get(key) is None:
        return ""
    if key in PROPORTIONS:
        count, size = proportion_count(values, results, key)
        return PROPORTIONS[key][3](count, size)
    return format(values[key], fmt)


def loc_table_markdown(results: dict) -> str:
    """One row per condition (clean, the centre prior, every protocol attack): accuracy, the box metrics
    (with boxes) and how far the map moved from the clean one; proportions with their 95% Wilson interval."""
    mode = ciou_mode(results)
    columns = [("acc", "acc (%)", ".2f")] + (list(BOX_COLUMNS) if results["num_boxed"] else []) + list(CHANGE_COLUMNS)
    if "box_similarity" in results["clean"]:
        columns.append(SIMILARITY_COLUMN)
    h, w = results["map_size"] or ("?", "?")
    box_text = (f"Pointing and {CIOU_AT} (the fraction of samples with cIoU >= {SUCCESS_THRESHOLD}) are fractions; "
                f"AUC is the area under that fraction over cIoU thresholds 0, 0.05, ..., 1. cIoU: "
                f"{CIOU_CONVENTIONS[mode]}. " if results["num_boxed"] else "")
    lines = [f"# {results['run']}: sound-source localization (cIoU convention: {mode})", "",
             f"{results['num_samples']} test samples, {results['num_boxed']} with a box; map {h}x{w} upsampled to "
             f"{results['input_size']}x{results['input_size']}; visual eps in {results['eps_units']} units, audio eps "
             f"in waveform amplitude; {results['attack_steps'] or 'default'} steps. Objective 'class': untargeted "
             f"{results['attack_loss']} on the label; 'map': maximise the map's mass outside the box (without "
             f"boxes: outside the clean map's >= {MAP_THRESHOLD} region); 'corr': lower the audio-visual similarity "
             "inside that region and raise it outside; 'worst': per sample, the worst over every attack and "
             f"objective of the budget. {box_text}Map IoU compares the adversarial map's top region with the clean "
             "one's; AV similarity in box: the mean per-location audio-visual cosine similarity inside the box "
             "(the region). Baselines: a centre Gaussian and uniform noise on the model's map grid (seeded per "
             "sample). [a, b]: 95% Wilson interval.", "",
             "| objective | attack | budget | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---" * (len(columns) + 3) + "|"]
    clean = {**results["clean"], "map_iou_top_mass": 1.0, "map_iou_threshold": 1.0, "peak_shift_px": 0.0}
    rows = [("-", "-", "clean", clean)]
    rows += [("-", "-", name, results[key]) for key, name in BASELINES if key in results]
    rows += [(e["objective"], e["attack"].upper(), budget_label(e), e)
             for e in results["attacks"] + results.get("worst_case", []) if not e["grid"]]
    for objective, attack, budget, values in rows:
        cells = [_cell(values, results, key, fmt) for key, _, fmt in columns]
        lines.append(f"| {objective} | {attack} | {budget} | " + " | ".join(cells) + " |")
    seconds = sum(e["seconds"] for e in results["attacks"])
    verdicts = baseline_lines(results)
    lines += ([""] + verdicts if verdicts else []) + ["", f"Attack time: {seconds:.1f} s in all."]
    return "\n".join(lines) + "\n"


COLORS = {"A": "tab:blue", "V": "tab:orange", "A+V": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def plot_ciou_vs_eps(results: dict, path: str | os.PathLike) -> None:
    """cIoU@0.5 and mean cIoU (without boxes: IoU of the clean and adversarial top-mass regions) against
    the per-modality budget: one column per objective, one line per (attack, attacked modalities)."""
    if results["num_boxed"]:
        mode = ciou_mode(results)
        metrics = [("ciou", f"{CIOU_AT} ({mode})"), ("miou", f"mean cIoU ({mode})")]
        clean = results["clean"]
    else:
        metrics = [("map_iou_top_mass", f"IoU with the clean top-{TOP_MASS:.0%}-mass region")]
        clean = {"map_iou_top_mass": 1.0}
    objectives = list(dict.fromkeys(e["objective"] for e in results["attacks"])) or ["class"]
    fig = Figure(figsize=(5.5 * len(objectives), 3.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(objectives), squeeze=False)
    for r, (key, ylabel) in enumerate(metrics):
        for ax, objective in zip(axes[r], objectives):
            entries = [e for e in results["attacks"] if e["objective"] == objective]
            for i, attack in enumerate(dict.fromkeys(e["attack"] for e in entries)):
                for budget, color in COLORS.items():
                    points = sorted((max(e["eps_visual"], e["eps_audio"]), e[key]) for e in entries
                                    if e["attack"] == attack and e["budget"] == budget)
                    if points:
                        xs, ys = zip(*([(0.0, clean[key])] + points))
                        ax.plot(xs, ys, marker="o", color=color, linestyle=LINESTYLES[i % len(LINESTYLES)],
                                label=f"{attack.upper()} {budget}")
            for (name, label), style in zip(BASELINES, ("-", ":")):
                if key in results.get(name, {}):
                    ax.axhline(results[name][key], color="tab:gray", linewidth=1, linestyle=style, label=label)
            if r == 0:
                ax.set_title(f"{objective} objective", fontsize=9)
            ax.set_xlabel(f"ε per attacked modality (visual in {results['eps_units']} units)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if r == 0 and (entries or "center_prior" in results):
                ax.legend(fontsize=7)
    fig.suptitle(results["run"], fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def overlay_image(frames: Tensor, heat: Tensor, box: Tensor | None = None, alpha: float = 0.5) -> np.ndarray:
    """The middle frame of ``frames [3, T, H, W]`` with ``heat [H, W]`` (in [0, 1]) blended over it in
    the jet colour map, and the outline of the ``box`` mask in white; uint8 HWC."""
    frame = frame_image(frames).astype(np.float32) / 255
    colours = colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]
    image = (1 - alpha) * frame + alpha * colours
    if box is not None and bool(box.any()):
        rows, cols = np.flatnonzero(box.any(dim=1).numpy()), np.flatnonzero(box.any(dim=0).numpy())
        y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
        image[[y0, y1], x0:x1 + 1] = 1.0
        image[y0:y1 + 1, [x0, x1]] = 1.0
    return (image * 255).round().astype(np.uint8)


def write_loc_visualization(samples: list[dict], out_dir: str | os.PathLike, categories: list[str],
                            title: str, mode: str) -> Path:
    """``out_dir/index.html``: per sample the map over the frame, clean beside every adversarial one, with
    each sample's cIoU in convention ``mode``.

    A sample: ``info``, ``label``, ``pred``, ``frames`` ``[3, T, H, W]``, ``map`` (normalised, ``[H, W]``),
    ``box`` (mask or None), ``iou`` (its cIoU or None) and ``adv``: column name -> ``frames``, ``map``,
    ``pred``, ``iou`` and ``budget`` (a dict with ``eps_visual`` and ``eps_audio``, as the engine gives it).
    """
    out_dir, assets, columns, head = page_layout(out_dir, samples)
    rows = []
    for n, sample in enumerate(samples):
        stem = f"{n:03d}_{safe_name(sample['info'])}"
        save_png(overlay_image(sample["frames"], sample["map"], sample["box"]), assets / f"{stem}_clean.png")
        cells = [f"<td>{html.escape(sample['info'])}<br>true: <b>{html.escape(categories[sample['label']])}</b></td>",
                 _loc_cell(f"{stem}_clean.png", "", categories, sample["pred"], sample["label"], sample["iou"])]
        for column in columns:
            adv = sample["adv"].get(column)
            if adv is None:
                cells.append("<td></td>")
                continue
            name = f"{stem}_{safe_name(column)}.png"
            save_png(overlay_image(adv["frames"], adv["map"], sample["box"]), assets / name)
            budget = adv["budget"]
            caption = f"εv={budget['eps_visual']:g}, εa={budget['eps_audio']:g}"
            cells.append(_loc_cell(name, caption, categories, adv["pred"], sample["label"], adv["iou"]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Sound-source localization under attack</h1>"
            f"<p>{html.escape(title)}</p><p>Each cell: the min-max normalised map (jet colours) over the model's "
            "input frame, the sounding object's box in white, the prediction and the sample's cIoU "
            f"({html.escape(CIOU_CONVENTIONS[mode])}). 'class' attacks the label, 'map' pushes the map out of "
            "the box, 'corr' lowers the audio-visual similarity in the box and raises it elsewhere.</p>"
            f"<table><tr><th>sample</th><th>clean</th>{head}</tr>{''.join(rows)}</table></body></html>\n")
    index = out_dir / "index.html"
    write_text_atomic(index, page)
    return index


def _loc_cell(image: str, caption: str, categories: list[str], pred: int, label: int, iou: float | None) -> str:
    status = "ok" if pred == label else "fooled"
    parts = [f"<td>{html.escape(caption)}" if caption else "<td>",
             f"<img src='assets/{html.escape(image)}' width='160' alt='map overlay'>",
             f"<div class='{status}'>pred: {html.escape(categories[pred])}</div>"]
    if iou is not None:
        parts.append(f"<div>cIoU {iou:.2f}</div>")
    return "".join(parts) + "</td>"


def write_loc_outputs(out_dir: Path, results: dict, vis: list[dict], categories: list[str]) -> list[Path]:
    """loc_results.json, loc_table.md, ciou_vs_eps.png and index.html (with its assets) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "loc_results.json", out_dir / "loc_table.md", out_dir / "ciou_vs_eps.png"]
    write_json_atomic(written[0], results)
    write_text_atomic(written[1], loc_table_markdown(results))
    plot_ciou_vs_eps(results, written[2])
    if vis:
        attack = results["attacks"][0]["attack"].upper() if results["attacks"] else "no"
        written.append(write_loc_visualization(vis, out_dir, categories, f"{results['run']}: {attack} attacks",
                                               ciou_mode(results)))
    return written
