"""Sound-source localization under multimodal attacks: metrics, the map attack and the evaluation loop.

A localization map is what a head's ``attention(feat_a, fmap_v)`` returns, ``[B, h, w]`` on the grid
of the visual feature map (the ``loc`` and ``attention`` heads have one). Every metric works on maps
upsampled bilinearly to the model input (``imgSize`` x ``imgSize``), against boxes mapped from the
generated frame into that input through the eval transform (resize the shorter side, centre crop).

Metrics against a box (the common weakly supervised localization protocol):

* pointing game: the map's argmax lies inside the box;
* cIoU: IoU between the box and the min-max normalised map thresholded at 0.5; cIoU@0.5 is the
  fraction of samples with IoU >= 0.5;
* AUC: area under the success rate (fraction with IoU >= t) against t over 21 points of [0, 1].

Without boxes (real data) the change of the map under attack is measured instead: IoU between the
clean and the adversarial top regions (the highest locations holding ``TOP_MASS`` of the map's mass,
and the normalised map >= 0.5), and the shift of the map's peak.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor
from tqdm import tqdm

from attacks import LossFn, build_attack
from dataset.loaders import to_device
from models.av_model import AVModel, ModelOutput
from models.fusion import FusionHead
from utils.attack_eval import Budget
from utils.distributed import DistInfo, all_gather_list, all_reduce_sum
from utils.fileio import atomic_path, write_json_atomic, write_text_atomic
from utils.html_report import STYLE, frame_image, safe_name, save_png
from utils.report import budget_label

CIOU_THRESHOLD = 0.5  # of the min-max normalised map
TOP_MASS = 0.2  # share of the map's mass in the top region of the real-data comparison
AUC_THRESHOLDS = 21  # IoU thresholds 0, 0.05, ..., 1
OBJECTIVES = ("class", "map")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


# ------------------------------------------------------------------------------------------ geometry


def eval_resize_shape(height: int, width: int, img_size: int) -> tuple[int, int]:
    """(height, width) after the eval transform's resize of the shorter side to ``img_size``."""
    if min(height, width) == img_size:
        return height, width
    if width <= height:
        return max(img_size, round(height * img_size / width)), img_size
    return img_size, max(img_size, round(width * img_size / height))


def box_to_input(box: Sequence[float], frame_size: tuple[int, int], img_size: int) -> Box:
    """A box of a ``frame_size`` (H, W) frame in the coordinates of the eval transform's output.

    The transform resizes the shorter side to ``img_size`` and takes the centre ``img_size`` crop,
    so the box is scaled per axis, shifted by the crop offset and clipped to the crop.
    """
    height, width = frame_size
    new_h, new_w = eval_resize_shape(height, width, img_size)
    sx, sy = new_w / width, new_h / height
    left, top = (new_w - img_size) // 2, (new_h - img_size) // 2
    x0, y0, x1, y1 = box

    def clip(v: float) -> float:
        return min(max(v, 0.0), float(img_size))

    return clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean masks ``[B, height, width]`` of the pixels whose centres lie in ``boxes [B, 4]``."""
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    inside_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])
    inside_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


@dataclass(frozen=True)
class Boxes:
    """Sounding-object boxes of a synthetic dataset (its boxes.json), keyed by sample id ``<class>/<id>``."""

    frame_size: tuple[int, int]  # H, W of the generated frames
    boxes: dict[str, Box]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Boxes:
        data = json.loads(Path(path).read_text())
        try:
            height, width = data["size"]
            boxes = {key: tuple(float(v) for v in meta["box"]) for key, meta in data["videos"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a boxes.json of dataset/synthetic.py "
                             f"({type(err).__name__}: {err})") from None
        return cls((int(height), int(width)), boxes)

    def input_masks(self, keys: Sequence[str], img_size: int,
                    device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Box masks ``[B, img_size, img_size]`` in the model input, and whether each sample has a box
        (listed, and not cropped away); samples without one have an empty mask."""
        mapped = [box_to_input(self.boxes[k], self.frame_size, img_size) if k in self.boxes else (0.0,) * 4
                  for k in keys]
        boxes = torch.tensor(mapped, dtype=torch.float32, device=device)
        masks = box_masks(boxes, img_size, img_size)
        return masks, masks.flatten(1).any(dim=1)


# ------------------------------------------------------------------------------------------- metrics


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` maps bilinearly resized to ``size`` (differentiable)."""
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-sample min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def pointing_hits(maps: Tensor, masks: Tensor) -> Tensor:
    """Whether each map's argmax lies inside its mask: the pointing game, ``[B]`` bool."""
    peak = maps.flatten(1).argmax(dim=1, keepdim=True)
    return masks.flatten(1).gather(1, peak).squeeze(1)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample IoU of boolean masks ``[B, H, W]``; two empty masks count as identical (1)."""
    inter = (a & b).flatten(1).sum(dim=1).float()
    union = (a | b).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def threshold_masks(maps: Tensor, threshold: float = CIOU_THRESHOLD) -> Tensor:
    return normalize_maps(maps) >= threshold


def ciou(maps: Tensor, masks: Tensor, threshold: float = CIOU_THRESHOLD) -> Tensor:
    """Per-sample IoU between the box masks and the normalised maps thresholded at ``threshold``."""
    return mask_iou(threshold_masks(maps, threshold), masks)


def success_rates(ious: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of samples with IoU >= t, for every t."""
    values = np.asarray(ious, dtype=np.float64)
    return np.array([(values >= t).mean() if values.size else 0.0 for t in thresholds])


def auc(ious: Sequence[float], num_thresholds: int = AUC_THRESHOLDS) -> float:
    """Area under the success-rate curve over ``num_thresholds`` evenly spaced IoU thresholds in [0, 1]
    (trapezoidal rule)."""
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    rates = success_rates(ious, thresholds)
    return float(((rates[1:] + rates[:-1]) / 2 * np.diff(thresholds)).sum())


def top_mass_masks(maps: Tensor, fraction: float = TOP_MASS) -> Tensor:
    """The highest locations of each (non-negative) map that together hold ``fraction`` of its mass."""
    flat = maps.flatten(1).clamp_min(0)
    ordered = flat.sort(dim=1, descending=True).values
    share = ordered / flat.sum(dim=1, keepdim=True).clamp_min(1e-12)
    before = share.cumsum(dim=1) - share  # mass of the locations above each one
    count = (before < fraction).sum(dim=1, keepdim=True).clamp_min(1)
    cutoff = ordered.gather(1, count - 1)
    return (flat >= cutoff).view_as(maps)


def peak_locations(maps: Tensor) -> Tensor:
    """``[B, 2]`` (y, x) pixel-centre coordinates of each map's argmax."""
    peak = maps.flatten(1).argmax(dim=1)
    width = maps.shape[-1]
    return torch.stack([peak // width, peak % width], dim=1).float() + 0.5


def center_prior_maps(batch: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """A data-free baseline: a Gaussian at the frame centre whose half-maximum ellipse spans half the frame."""
    ys = (torch.arange(height, device=device) + 0.5 - height / 2) / (height / 4)
    xs = (torch.arange(width, device=device) + 0.5 - width / 2) / (width / 4)
    prior = torch.exp(-math.log(2) * (ys[:, None] ** 2 + xs[None, :] ** 2))
    return prior.expand(batch, height, width)


# ------------------------------------------------------------------------------- maps and the attack


def map_head(model: AVModel) -> FusionHead:
    """The model's fusion head if it has a localization map (``loc``, ``attention``), else ValueError."""
    head = model.net_classifier
    if not (head.needs_fmap and callable(getattr(head, "attention", None)) and model.uses_audio):
        raise ValueError(f"the {type(head).__name__} head has no localization map; "
                         "use --arch_classifier loc or attention")
    return head


def localization_maps(head: FusionHead, out: ModelOutput, size: tuple[int, int]) -> Tensor:
    """The head's map of a forward pass, upsampled to ``size`` (differentiable)."""
    return upsample_maps(head.attention(out.feat_a, out.fmap_v), size)


def outside_mass_loss(head: FusionHead, regions: Tensor) -> LossFn:
    """The map attack's objective: per sample, the share of the map's mass outside ``regions``
    ``[B, H, W]`` (the box, at the model input's resolution), which the attack maximises."""
    outside = (~regions).float()
    size = tuple(regions.shape[-2:])

    def outside_mass(out: ModelOutput, labels: Tensor) -> Tensor:
        maps = localization_maps(head, out, size).clamp_min(0)
        return (maps * outside).flatten(1).sum(dim=1) / maps.flatten(1).sum(dim=1).clamp_min(1e-12)

    return outside_mass


# ------------------------------------------------------------------------------------ the evaluation


@dataclass
class _Tally:
    """Per-sample results of one condition (clean, the centre prior or one attack)."""

    correct: list[bool] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)  # samples with a box only
    ious: list[float] = field(default_factory=list)  # samples with a box only
    iou_top_mass: list[float] = field(default_factory=list)  # against the clean map (attacks only)
    iou_threshold: list[float] = field(default_factory=list)
    peak_shift: list[float] = field(default_factory=list)  # pixels of the model input
    seconds: float = 0.0

    def add(self, maps: Tensor, masks: Tensor | None, has_box: Tensor, logits: Tensor | None = None,
            labels: Tensor | None = None, clean_maps: Tensor | None = None) -> Tensor | None:
        """Record a batch; returns the per-sample box IoUs (None without boxes)."""
        if logits is not None:
            self.correct += (logits.argmax(dim=1) == labels).tolist()
        ious = None
        if masks is not None:
            ious = ciou(maps, masks)
            self.hits += pointing_hits(maps, masks)[has_box].tolist()
            self.ious += ious[has_box].tolist()
        if clean_maps is not None:
            self.iou_top_mass += mask_iou(top_mass_masks(maps), top_mass_masks(clean_maps)).tolist()
            self.iou_threshold += mask_iou(threshold_masks(maps), threshold_masks(clean_maps)).tolist()
            self.peak_shift += (peak_locations(maps) - peak_locations(clean_maps)).norm(dim=1).tolist()
        return ious

    def gather(self, info: DistInfo) -> None:
        """Collect every rank's samples on every rank."""
        if not info.enabled:
            return
        for name in ("correct", "hits", "ious", "iou_top_mass", "iou_threshold", "peak_shift"):
            setattr(self, name, all_gather_list(getattr(self, name), info))
        seconds = all_reduce_sum(torch.tensor(self.seconds, dtype=torch.float64), info).item()
        self.seconds = seconds / info.world_size

    def summary(self, img_size: int) -> dict:
        """Accuracy in %; pointing, cIoU@0.5 and AUC as fractions; peak shift in pixels and in frame sides."""
        out: dict = {}
        if self.correct:
            out["acc"] = 100.0 * sum(self.correct) / len(self.correct)
        if self.ious:
            out.update(num_boxed=len(self.ious), pointing=sum(self.hits) / len(self.hits),
                       ciou=sum(i >= CIOU_THRESHOLD for i in self.ious) / len(self.ious),
                       miou=sum(self.ious) / len(self.ious), auc=auc(self.ious), ious=self.ious)
        if self.peak_shift:
            n = len(self.peak_shift)
            out.update(map_iou_top_mass=sum(self.iou_top_mass) / n, map_iou_threshold=sum(self.iou_threshold) / n,
                       peak_shift_px=sum(self.peak_shift) / n, peak_shift_frac=sum(self.peak_shift) / n / img_size)
        return out


def evaluate_localization(model: AVModel, loader, args: argparse.Namespace, info: DistInfo, budgets: list[Budget],
                          attack_types: list[str], objectives: Sequence[str], boxes: Boxes | None,
                          num_vis: int = 0) -> tuple[dict, list[dict]]:
    """Localization clean and under every (objective, attack type, budget); returns (results, vis samples).

    Objective ``class`` is the untargeted attack on the label (``--attack_loss``); ``map`` maximises the
    map's mass outside the box (without a box: outside the clean map's >= 0.5 region). The first
    ``num_vis`` samples of rank 0 come back with their maps for the HTML page.
    """
    model.eval()
    head = map_head(model)
    size = (args.imgSize, args.imgSize)
    conditions = [(o, a, b) for o in objectives for a in attack_types for b in budgets]
    clean, prior = _Tally(), _Tally()
    tallies = {c: _Tally() for c in conditions}
    map_size = None
    vis: list[dict] = []
    for batch in tqdm(loader, desc="localization", disable=not info.is_main, dynamic_ncols=True):
        frames, audio, labels = to_device(batch, info.device)
        with torch.no_grad():
            out = model(frames, audio)
            maps = localization_maps(head, out, size)
        map_size = list(out.fmap_v.shape[-2:])
        masks, has_box = None, torch.zeros(labels.numel(), dtype=torch.bool, device=labels.device)
        if boxes is not None:
            masks, has_box = boxes.input_masks(batch["info"], args.imgSize, labels.device)
            prior.add(center_prior_maps(labels.numel(), *size, device=labels.device), masks, has_box)
        ious = clean.add(maps, masks, has_box, out.logits, labels)
        regions = threshold_masks(maps)
        if masks is not None:
            regions = torch.where(has_box.view(-1, 1, 1), masks, regions)
        keep = max(0, num_vis - len(vis)) if info.is_main else 0
        batch_vis = [{"info": batch["info"][i], "label": int(labels[i]), "pred": int(out.logits[i].argmax()),
                      "frames": frames[i].cpu(), "map": normalize_maps(maps[i:i + 1])[0].cpu(),
                      "box": masks[i].cpu() if masks is not None and has_box[i] else None,
                      "iou": None if ious is None or not has_box[i] else float(ious[i]), "adv": {}}
                     for i in range(min(keep, labels.numel()))]
        for condition in conditions:
            objective, attack_type, budget = condition
            loss = args.attack_loss if objective == "class" else outside_mass_loss(head, regions)
            attacker = build_attack(attack_type, model, eps={"visual": budget.eps_visual, "audio": budget.eps_audio},
                                    steps=args.attack_steps, alpha=args.attack_alpha, loss=loss,
                                    eps_units=args.eps_units, random_start=args.random_start, restarts=args.restarts)
            start = time.perf_counter()
            adv_frames, adv_audio = attacker(frames, audio, labels)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            tallies[condition].seconds += time.perf_counter() - start
            with torch.no_grad():
                adv_out = model(adv_frames, adv_audio)
                adv_maps = localization_maps(head, adv_out, size)
            adv_ious = tallies[condition].add(adv_maps, masks, has_box, adv_out.logits, labels, clean_maps=maps)
            if attack_type == attack_types[0] and not budget.grid:
                for i, sample in enumerate(batch_vis):
                    sample["adv"][f"{objective} {budget.name}"] = {
                        "frames": adv_frames[i].cpu(), "map": normalize_maps(adv_maps[i:i + 1])[0].cpu(),
                        "pred": int(adv_out.logits[i].argmax()), "budget": budget,
                        "iou": None if adv_ious is None or not has_box[i] else float(adv_ious[i])}
        vis += batch_vis
    results = _results(clean, prior if boxes is not None else None, tallies, map_size, args, info)
    return results, vis


def _results(clean: _Tally, prior: _Tally | None, tallies: dict, map_size: list[int] | None,
             args: argparse.Namespace, info: DistInfo) -> dict:
    clean.gather(info)
    entries = []
    for (objective, attack_type, budget), tally in tallies.items():
        tally.gather(info)
        entries.append({"objective": objective, "attack": attack_type, "budget": budget.name,
                        "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio, "grid": budget.grid,
                        "seconds": tally.seconds, **tally.summary(args.imgSize)})
    results = {
        "run": args.id, "arch_classifier": args.arch_classifier, "boxes": args.boxes,
        "num_samples": len(clean.correct), "num_boxed": len(clean.ious), "input_size": args.imgSize,
        "map_size": map_size, "ciou_threshold": CIOU_THRESHOLD, "top_mass": TOP_MASS,
        "eps_units": args.eps_units, "attack_steps": args.attack_steps, "attack_alpha": args.attack_alpha,
        "attack_loss": args.attack_loss, "random_start": args.random_start, "restarts": args.restarts,
        "clean": clean.summary(args.imgSize), "attacks": entries,
    }
    if prior is not None:
        prior.gather(info)
        results["center_prior"] = prior.summary(args.imgSize)
    return results


# ------------------------------------------------------------------------------------------- outputs

BOX_COLUMNS = (("pointing", "pointing", ".3f"), ("ciou", f"cIoU@{CIOU_THRESHOLD}", ".3f"), ("miou", "mean IoU", ".3f"),
               ("auc", "AUC", ".3f"))
CHANGE_COLUMNS = (("map_iou_top_mass", f"map IoU top {TOP_MASS:.0%} mass", ".3f"),
                  ("map_iou_threshold", f"map IoU >= {CIOU_THRESHOLD}", ".3f"),
                  ("peak_shift_px", "peak shift (px)", ".1f"))


def loc_table_markdown(results: dict) -> str:
    """One row per condition (clean, the centre prior, every protocol attack): accuracy, the box metrics
    (with boxes) and how far the map moved from the clean one."""
    columns = [("acc", "acc (%)", ".2f")] + (list(BOX_COLUMNS) if results["num_boxed"] else []) + list(CHANGE_COLUMNS)
    h, w = results["map_size"] or ("?", "?")
    lines = [f"# {results['run']}: sound-source localization", "",
             f"{results['num_samples']} test samples, {results['num_boxed']} with a box; map {h}x{w} upsampled to "
             f"{results['input_size']}x{results['input_size']}; visual eps in {results['eps_units']} units, audio eps "
             f"in waveform amplitude; {results['attack_steps'] or 'default'} steps. Objective 'class': untargeted "
             f"{results['attack_loss']} on the label; 'map': maximise the map's mass outside the box (without "
             f"boxes: outside the clean map's >= {CIOU_THRESHOLD} region). Pointing, cIoU@{CIOU_THRESHOLD} (fraction "
             f"of samples with IoU >= {CIOU_THRESHOLD}) and AUC are fractions; map IoU compares the adversarial map's "
             "top region with the clean one's.", "",
             "| objective | attack | budget | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---" * (len(columns) + 3) + "|"]
    clean = {**results["clean"], "map_iou_top_mass": 1.0, "map_iou_threshold": 1.0, "peak_shift_px": 0.0}
    rows = [("-", "-", "clean", clean)]
    if "center_prior" in results:
        rows.append(("-", "-", "centre prior", results["center_prior"]))
    rows += [(e["objective"], e["attack"].upper(), budget_label(e), e) for e in results["attacks"] if not e["grid"]]
    for objective, attack, budget, values in rows:
        cells = ["" if values.get(key) is None else format(values[key], fmt) for key, _, fmt in columns]
        lines.append(f"| {objective} | {attack} | {budget} | " + " | ".join(cells) + " |")
    seconds = sum(e["seconds"] for e in results["attacks"])
    lines += ["", f"Attack time: {seconds:.1f} s in all."]
    return "\n".join(lines) + "\n"


COLORS = {"A": "tab:blue", "V": "tab:orange", "A+V": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def plot_ciou_vs_eps(results: dict, path: str | os.PathLike) -> None:
    """cIoU@0.5 and mean IoU (without boxes: IoU of the clean and adversarial top-mass regions) against
    the per-modality budget: one column per objective, one line per (attack, attacked modalities)."""
    if results["num_boxed"]:
        metrics = [("ciou", f"cIoU@{CIOU_THRESHOLD}"), ("miou", "mean IoU")]
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
            if "center_prior" in results:
                ax.axhline(results["center_prior"][key], color="tab:gray", linewidth=1, label="centre prior")
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
                            title: str) -> Path:
    """``out_dir/index.html``: per sample the map over the frame, clean beside every adversarial one."""
    out_dir = Path(out_dir)
    assets = out_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for s in samples for c in s["adv"]))
    head = "".join(f"<th>{html.escape(c)} attack</th>" for c in columns)
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
            caption = f"εv={budget.eps_visual:g}, εa={budget.eps_audio:g}"
            cells.append(_loc_cell(name, caption, categories, adv["pred"], sample["label"], adv["iou"]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Sound-source localization under attack</h1>"
            f"<p>{html.escape(title)}</p><p>Each cell: the min-max normalised map (jet colours) over the model's "
            "input frame, the sounding object's box in white, the prediction and the box IoU of the map "
            f"thresholded at {CIOU_THRESHOLD}. 'class' attacks the label, 'map' pushes the map out of the box.</p>"
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
        parts.append(f"<div>IoU {iou:.2f}</div>")
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
        written.append(write_loc_visualization(vis, out_dir, categories, f"{results['run']}: {attack} attacks"))
    return written
