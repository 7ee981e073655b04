"""Sound-source localization under multimodal attacks, on the evaluation engine: the map of a head, the
map attack, and the per-sample localization metrics an engine observer records (metrics in
``evaluation.localization.metrics``, outputs in ``evaluation.localization.report``).

Objectives are engine variants: ``class``, the untargeted attack on the label (``--attack_loss``); ``map``,
which maximises the map's mass outside the box (without a box: outside the clean map's region above
``MAP_THRESHOLD``); and ``corr``, the attack on the audio-visual correspondence itself, which lowers the
per-location audio-visual similarity inside that region and raises it outside. Per sample and condition the
records hold correctness, the pointing-game hit and the cIoU (samples with a box), the mean similarity inside
the region, and how far the map moved from the clean one. Per budget, the worst case over every attack and
objective is taken per sample (a sample hits only if it hits under all of them; its cIoU is the lowest).

Baselines on the same boxes: the centre prior and a random map (seeded per sample); the model's clean pointing
and cIoU@0.5 are compared with the centre prior's by the exact McNemar test on the per-sample outcomes.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attacks import CASCADES, PerSampleLoss
from dataset.annotations import GroundTruth
from evaluation.localization.metrics import (
    MAP_THRESHOLD,
    SUCCESS_THRESHOLD,
    TOP_MASS,
    auc,
    center_prior_maps,
    gt_ciou,
    gt_pointing_hits,
    mask_iou,
    normalize_maps,
    peak_locations,
    random_maps,
    threshold_masks,
    top_mass_masks,
    upsample_maps,
)
from evaluation.robustness.engine import AttackEngine, BatchContext, Variant
from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import RecordKey, Records
from evaluation.stats import DEFAULT_ALPHA, mcnemar_exact
from models.av_model import AVModel, ModelOutput
from models.fusion import FusionHead
from utils.distributed import DistInfo

OBJECTIVES = ("class", "map", "corr")
DEFAULT_OBJECTIVES = ("class", "map")
CHANGE_FIELDS = ("map_iou_top_mass", "map_iou_threshold", "peak_shift_px")
ADV_FIELDS = (*CHANGE_FIELDS, "box_similarity")  # per adversarial pass, averaged over the samples
MAP_HEADS = "loc, attention, ssl or ssl_lvs"
UNCHANGED = {"map_iou_top_mass": 1.0, "map_iou_threshold": 1.0, "peak_shift_px": 0.0}  # a map left as it was
WORST = "worst"  # the objective name of the per-sample worst case over every attack and objective of a budget


def map_head(model: AVModel) -> FusionHead:
    """The model's fusion head if it has a localization map (``loc``, ``attention``, ``ssl``, ``ssl_lvs``), else
    ValueError."""
    head = model.net_classifier
    if not (head.needs_fmap and callable(getattr(head, "attention", None)) and model.uses_audio):
        raise ValueError(f"the {type(head).__name__} head has no localization map; use --arch_classifier {MAP_HEADS}")
    return head


def correspondence_maps(head: FusionHead, out: ModelOutput) -> Tensor:
    """The per-location audio-visual similarity ``[B, h, w]`` the head's map is built from: the self-supervised
    heads' ``similarity``; for ``loc`` and ``attention``, the cosine between the projected audio query and each
    location (before their temperature and softmax / sigmoid)."""
    if callable(getattr(head, "similarity", None)):
        return head.similarity(out.feat_a, out.fmap_v)
    b, _, h, w = out.fmap_v.shape
    keys = F.normalize(out.fmap_v.flatten(2), dim=1)
    query = F.normalize(head.query(out.feat_a), dim=1)
    return torch.einsum("bd,bdn->bn", query, keys).reshape(b, h, w)


def _region_means(values: Tensor, regions: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample means of ``values [B, H, W]`` inside and outside ``regions``; an empty part has mean 0."""
    inside = regions.flatten(1).float()
    flat = values.flatten(1)
    mean_in = (flat * inside).sum(dim=1) / inside.sum(dim=1).clamp_min(1)
    mean_out = (flat * (1 - inside)).sum(dim=1) / (1 - inside).sum(dim=1).clamp_min(1)
    return mean_in, mean_out


def region_similarity(head: FusionHead, out: ModelOutput, regions: Tensor) -> Tensor:
    """Per sample, the mean audio-visual similarity inside ``regions [B, H, W]`` (upsampled to their size)."""
    sims = upsample_maps(correspondence_maps(head, out), tuple(regions.shape[-2:]))
    return _region_means(sims, regions)[0]


def correspondence_loss(head: FusionHead, regions: Tensor) -> PerSampleLoss:
    """The correspondence attack's objective, maximised: per sample, the mean audio-visual similarity outside
    ``regions [B, H, W]`` (the box, at the model input's resolution) minus the mean inside it."""

    def similarity_gap(out: ModelOutput, labels: Tensor, regions: Tensor) -> Tensor:
        size = tuple(regions.shape[-2:])
        mean_in, mean_out = _region_means(upsample_maps(correspondence_maps(head, out), size), regions)
        return mean_out - mean_in

    return PerSampleLoss(similarity_gap, regions=regions)


def localization_maps(head: FusionHead, out: ModelOutput, size: tuple[int, int]) -> Tensor:
    """The head's map of a forward pass, upsampled to ``size`` (differentiable)."""
    return upsample_maps(head.attention(out.feat_a, out.fmap_v), size)


def outside_mass_loss(head: FusionHead, regions: Tensor) -> PerSampleLoss:
    """The map attack's objective: per sample, the share of the map's mass outside ``regions``
    ``[B, H, W]`` (the box, at the model input's resolution), which the attack maximises."""

    def outside_mass(out: ModelOutput, labels: Tensor, regions: Tensor) -> Tensor:
        maps = localization_maps(head, out, tuple(regions.shape[-2:])).clamp_min(0)
        outside = (~regions).float()
        return (maps * outside).flatten(1).sum(dim=1) / maps.flatten(1).sum(dim=1).clamp_min(1e-12)

    return PerSampleLoss(outside_mass, regions=regions)


def objective_variants(head: FusionHead, objectives: Sequence[str], attack_loss: str) -> list[Variant]:
    variants = {"class": Variant("class", attack_loss),
                "map": Variant("map", lambda ctx: outside_mass_loss(head, ctx.data["regions"])),
                "corr": Variant("corr", lambda ctx: correspondence_loss(head, ctx.data["regions"]))}
    return [variants[o] for o in objectives]


class LocalizationObserver:
    """Records the localization metrics of every clean and adversarial pass (see the module docstring)."""

    def __init__(self, head: FusionHead, boxes: GroundTruth | None, img_size: int, ciou_mode: str,
                 seed: int) -> None:
        self.head = head
        self.boxes = boxes
        self.size = (img_size, img_size)
        self.ciou_mode = ciou_mode
        self.seed = seed
        self.map_size: list[int] | None = None

    def _box_metrics(self, maps: Tensor, ctx: BatchContext) -> dict[str, Tensor]:
        if "gt" not in ctx.data:
            return {}
        gt, has_box = ctx.data["gt"], ctx.data["has_box"]
        nan = torch.full_like(has_box, math.nan, dtype=torch.float64)
        return {"pointing": torch.where(has_box, gt_pointing_hits(maps, gt).double(), nan),
                "ciou": torch.where(has_box, gt_ciou(maps, gt, self.ciou_mode).double(), nan)}

    def on_clean(self, ctx: BatchContext, batch: dict) -> dict[str, Tensor]:
        with torch.no_grad():
            maps = localization_maps(self.head, ctx.clean_out, self.size)
        self.map_size = list(ctx.clean_out.fmap_v.shape[-2:])
        ctx.data["clean_maps"] = maps
        regions = threshold_masks(maps, MAP_THRESHOLD)
        if self.boxes is not None:
            gt, has_box = self.boxes.input_maps(batch["info"], self.size[0], maps.device)
            ctx.data.update(gt=gt, has_box=has_box)
            regions = torch.where(has_box.view(-1, 1, 1), gt > 0, regions)
        ctx.data["regions"] = regions
        values = {f"clean_{k}": v for k, v in self._box_metrics(maps, ctx).items()}
        with torch.no_grad():
            values["clean_box_similarity"] = region_similarity(self.head, ctx.clean_out, regions).double()
        if self.boxes is not None:
            prior = center_prior_maps(maps.shape[0], *self.size, device=maps.device)
            values.update({f"prior_{k}": v for k, v in self._box_metrics(prior, ctx).items()})
            noise = upsample_maps(random_maps(batch["index"].tolist(), *self.map_size, self.seed, maps.device),
                                  self.size)
            values.update({f"random_{k}": v for k, v in self._box_metrics(noise, ctx).items()})
            values["has_box"] = ctx.data["has_box"]
        return values

    def on_adv(self, key: RecordKey, ctx: BatchContext, adv_frames: Tensor, adv_audio: Tensor,
               out: ModelOutput) -> dict[str, Tensor]:
        with torch.no_grad():
            maps = localization_maps(self.head, out, self.size)
            similarity = region_similarity(self.head, out, ctx.data["regions"])
        clean = ctx.data["clean_maps"]
        values = self._box_metrics(maps, ctx)
        values["box_similarity"] = similarity.double()
        values["map_iou_top_mass"] = mask_iou(top_mass_masks(maps), top_mass_masks(clean)).double()
        values["map_iou_threshold"] = mask_iou(threshold_masks(maps), threshold_masks(clean)).double()
        values["peak_shift_px"] = (peak_locations(maps) - peak_locations(clean)).norm(dim=1).double()
        return values


def condition_summary(correct: np.ndarray, pointing: np.ndarray | None, cious: np.ndarray | None,
                      changes: dict[str, np.ndarray] | None, img_size: int) -> dict:
    """Accuracy in %, pointing / cIoU@0.5 / AUC as fractions (over samples with a box) with their counts,
    map changes as means; ``None`` inputs are left out."""
    out: dict = {}
    if correct is not None:
        out.update(num_samples=int(correct.size), num_correct=int(correct.sum()),
                   acc=100.0 * float(correct.mean()) if correct.size else 0.0)
    if pointing is not None and cious is not None:
        boxed = ~np.isnan(cious)
        hits, values = pointing[boxed] > 0, cious[boxed]
        if values.size:
            out.update(num_boxed=int(values.size), pointing_hits=int(hits.sum()), pointing=float(hits.mean()),
                       ciou_hits=int((values >= SUCCESS_THRESHOLD).sum()),
                       ciou=float((values >= SUCCESS_THRESHOLD).mean()), miou=float(values.mean()),
                       auc=auc(values.tolist()), ious=values.tolist())
    if changes:
        out.update({k: float(np.nanmean(v)) for k, v in changes.items()})
        out["peak_shift_frac"] = out["peak_shift_px"] / img_size
    return out


def _final_values(records: Records, keys: list[RecordKey], name: str,
                  unattacked: np.ndarray | float = np.nan) -> np.ndarray:
    """Per sample, ``name`` of the last key that attacked it (a cascade's final adversarial input); a sample no
    key attacked (a cascade leaves clean-misclassified samples alone) gets ``unattacked``: its value on the
    input it was left with, the clean one."""
    values = np.full(records.num_samples, np.nan)
    for key in keys:
        if name in records.columns[key]:
            column = records.column(key, name).astype(np.float64)
            values = np.where(np.isnan(column), values, column)
    return np.where(np.isnan(values), unattacked, values)


def compare_with_baseline(model_hits: np.ndarray, baseline_hits: np.ndarray, alpha: float = DEFAULT_ALPHA) -> dict:
    """The model's per-sample successes against a baseline's on the same samples: counts, the exact McNemar
    test, and ``beats``: the model succeeds more often and the difference is significant at ``alpha``."""
    test = mcnemar_exact(model_hits, baseline_hits)
    model, baseline = int(np.sum(model_hits)), int(np.sum(baseline_hits))
    return {"num_boxed": test.n, "model_hits": model, "baseline_hits": baseline, "only_model": test.b,
            "only_baseline": test.c, "p_value": test.p_value, "alpha": alpha,
            "beats": bool(model > baseline and test.significant(alpha))}


def _worst_case(clean: dict[str, np.ndarray], runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per sample, the worst over ``runs`` (each: ``correct``, ``pointing``, ``ciou`` per sample, NaN where a run
    did not attack the sample): correct and hitting only if so under every run, the lowest cIoU; a sample no
    run attacked keeps its clean values."""
    correct = np.logical_and.reduce([clean["correct"]] + [run["correct"] for run in runs])
    worst = {"correct": correct}
    for name in ("pointing", "ciou"):
        if clean.get(name) is not None:
            values = clean[name].copy()
            for run in runs:
                values = np.fmin(values, run[name])  # NaN (not attacked) leaves the value as it is
            worst[name] = values
    return worst


def evaluate_localization(model: AVModel, loader, args: argparse.Namespace, info: DistInfo, budgets: list[Budget],
                          attack_types: list[str], objectives: Sequence[str], boxes: GroundTruth | None,
                          num_vis: int = 0) -> tuple[dict, Records, list[dict]]:
    """Localization clean and under every (objective, attack type, budget), the per-sample worst case of each
    budget, and the baselines; returns (results, per-sample records, vis samples). The first ``num_vis`` samples
    of rank 0 come back with their maps for the HTML page."""
    model.eval()
    head = map_head(model)
    observer = LocalizationObserver(head, boxes, args.imgSize, args.ciou_mode, args.seed)
    variants = objective_variants(head, objectives, args.attack_loss)
    engine = AttackEngine(model, args, info, budgets, attack_types, variants, observer=observer, num_vis=num_vis)
    run = engine.run(loader)
    records = run.records
    img_size = args.imgSize

    def extra(name: str) -> np.ndarray | None:
        return np.asarray(records.extra[name], dtype=np.float64) if name in records.extra else None

    def boxed(prefix: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        return extra(f"{prefix}pointing"), extra(f"{prefix}ciou")

    clean_correct = np.asarray(records.clean_correct, dtype=bool)
    clean_values = {"correct": clean_correct, "pointing": extra("clean_pointing"), "ciou": extra("clean_ciou")}
    clean_similarity = extra("clean_box_similarity")
    unattacked = {**UNCHANGED, "box_similarity": np.nan if clean_similarity is None else clean_similarity}
    entries, worst_entries = [], []
    for budget in budgets:
        budget_runs = []
        for attack in engine.attack_types:
            cascade = attack in CASCADES
            for objective in (["+".join(objectives)] if cascade else objectives):
                keys = [k for k in records.attack_keys(attack, budget.key) if cascade or k.variant == objective]
                if not keys:
                    continue
                per_sample = {"correct": records.robust(keys),  # clean-correct and never fooled
                              "pointing": None if boxes is None else _final_values(records, keys, "pointing",
                                                                                   clean_values["pointing"]),
                              "ciou": None if boxes is None else _final_values(records, keys, "ciou",
                                                                               clean_values["ciou"])}
                budget_runs.append(per_sample)
                changes = {name: _final_values(records, keys, name, unattacked[name]) for name in ADV_FIELDS}
                entries.append({"objective": objective, "attack": attack, "budget": budget.name,
                                "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio, "grid": budget.grid,
                                "seconds": sum(run.seconds.get(k, 0.0) for k in keys),
                                **condition_summary(per_sample["correct"], per_sample["pointing"], per_sample["ciou"],
                                                    changes, img_size)})
        if len(budget_runs) > 1:
            worst = _worst_case(clean_values, budget_runs)
            worst_entries.append({"objective": WORST, "attack": "+".join(engine.attack_types), "budget": budget.name,
                            "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio, "grid": budget.grid,
                            "seconds": 0.0, **condition_summary(worst["correct"], worst.get("pointing"),
                                                                worst.get("ciou"), None, img_size)})
    clean = condition_summary(clean_correct, *boxed("clean_"), None, img_size)
    clean["box_similarity"] = float(np.nanmean(extra("clean_box_similarity")))
    results = {
        "run": args.id, "arch_classifier": args.arch_classifier, "boxes": args.boxes,
        "boxes_format": None if boxes is None else boxes.source,
        "num_samples": records.num_samples, "input_size": img_size, "map_size": observer.map_size,
        "ciou_mode": args.ciou_mode, "success_threshold": SUCCESS_THRESHOLD, "map_threshold": MAP_THRESHOLD,
        "top_mass": TOP_MASS, "eps_units": args.eps_units, "attack_steps": args.attack_steps,
        "attack_alpha": args.attack_alpha, "attack_loss": args.attack_loss, "random_start": args.random_start,
        "restarts": args.restarts, "clean": clean, "attacks": entries, "worst_case": worst_entries,
    }
    results["num_boxed"] = results["clean"].get("num_boxed", 0)
    if boxes is not None:
        results["center_prior"] = condition_summary(None, *boxed("prior_"), None, img_size)
        results["random_map"] = condition_summary(None, *boxed("random_"), None, img_size)
        if results["num_boxed"]:
            has = ~np.isnan(clean_values["ciou"])
            prior_pointing, prior_ciou = boxed("prior_")
            results["vs_prior"] = {
                "pointing": compare_with_baseline(clean_values["pointing"][has] > 0, prior_pointing[has] > 0),
                "ciou": compare_with_baseline(clean_values["ciou"][has] >= SUCCESS_THRESHOLD,
                                              prior_ciou[has] >= SUCCESS_THRESHOLD)}
    return results, records, _vis_with_maps(run.vis, head, model, img_size, boxes, args.ciou_mode)


def _vis_with_maps(vis: list[dict], head: FusionHead, model: AVModel, img_size: int, boxes: GroundTruth | None,
                   ciou_mode: str) -> list[dict]:
    """The engine's HTML samples with the normalised maps (clean and adversarial), box and cIoU added."""
    size = (img_size, img_size)
    device = next(model.parameters()).device
    for sample in vis:
        gt = None
        if boxes is not None:
            gt_map, has = boxes.input_maps([sample["info"]], img_size)
            gt = gt_map if bool(has[0]) else None
        sample["box"] = None if gt is None else gt[0] > 0
        views = [sample] + list(sample["adv"].values())
        for view in views:
            frames, audio = view["frames"].unsqueeze(0), view["audio"].unsqueeze(0)
            with torch.no_grad():
                maps = localization_maps(head, model(frames.to(device), audio.to(device)), size).cpu()
            view["map"] = normalize_maps(maps)[0]
            view["iou"] = None if gt is None else float(gt_ciou(maps, gt, ciou_mode)[0])
        sample["pred"] = sample["clean_pred"]
    return vis
