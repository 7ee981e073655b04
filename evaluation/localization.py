"""Sound-source localization under multimodal attacks, on the evaluation engine: the map of a head, the
map attack, and the per-sample localization metrics an engine observer records (metrics in
``evaluation.loc_metrics``, outputs in ``evaluation.loc_report``).

Objectives are engine variants: ``class``, the untargeted attack on the label (``--attack_loss``), and
``map``, which maximises the map's mass outside the box (without a box: outside the clean map's region
above ``MAP_THRESHOLD``). Per sample and condition the records hold correctness, the pointing-game hit and
the cIoU (samples with a box), and how far the map moved from the clean one.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from attacks import LossFn
from evaluation.engine import CASCADES, AttackEngine, BatchContext, Variant
from evaluation.loc_metrics import (
    MAP_THRESHOLD,
    SUCCESS_THRESHOLD,
    TOP_MASS,
    Boxes,
    auc,
    center_prior_maps,
    ciou,
    mask_iou,
    normalize_maps,
    peak_locations,
    pointing_hits,
    threshold_masks,
    top_mass_masks,
    upsample_maps,
)
from evaluation.protocol import Budget
from evaluation.records import Key, Records
from models.av_model import AVModel, ModelOutput
from models.fusion import FusionHead
from utils.distributed import DistInfo

OBJECTIVES = ("class", "map")
CHANGE_FIELDS = ("map_iou_top_mass", "map_iou_threshold", "peak_shift_px")


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


def objective_variants(head: FusionHead, objectives: Sequence[str], attack_loss: str) -> list[Variant]:
    variants = {"class": Variant("class", attack_loss),
                "map": Variant("map", lambda ctx: outside_mass_loss(head, ctx.data["regions"]))}
    return [variants[o] for o in objectives]


class LocalizationObserver:
    """Records the localization metrics of every clean and adversarial pass (see the module docstring)."""

    def __init__(self, head: FusionHead, boxes: Boxes | None, img_size: int, ciou_mode: str) -> None:
        self.head = head
        self.boxes = boxes
        self.size = (img_size, img_size)
        self.ciou_mode = ciou_mode
        self.map_size: list[int] | None = None

    def _box_metrics(self, maps: Tensor, ctx: BatchContext) -> dict[str, Tensor]:
        if "masks" not in ctx.data:
            return {}
        masks, has_box = ctx.data["masks"], ctx.data["has_box"]
        nan = torch.full_like(has_box, math.nan, dtype=torch.float64)
        return {"pointing": torch.where(has_box, pointing_hits(maps, masks).double(), nan),
                "ciou": torch.where(has_box, ciou(maps, masks, self.ciou_mode).double(), nan)}

    def on_clean(self, ctx: BatchContext, batch: dict) -> dict[str, Tensor]:
        with torch.no_grad():
            maps = localization_maps(self.head, ctx.clean_out, self.size)
        self.map_size = list(ctx.clean_out.fmap_v.shape[-2:])
        ctx.data["clean_maps"] = maps
        regions = threshold_masks(maps, MAP_THRESHOLD)
        if self.boxes is not None:
            masks, has_box = self.boxes.input_masks(batch["info"], self.size[0], maps.device)
            ctx.data.update(masks=masks, has_box=has_box)
            regions = torch.where(has_box.view(-1, 1, 1), masks, regions)
        ctx.data["regions"] = regions
        values = {f"clean_{k}": v for k, v in self._box_metrics(maps, ctx).items()}
        if self.boxes is not None:
            prior = center_prior_maps(maps.shape[0], *self.size, device=maps.device)
            values.update({f"prior_{k}": v for k, v in self._box_metrics(prior, ctx).items()})
            values["has_box"] = ctx.data["has_box"]
        return values

    def on_adv(self, key: Key, ctx: BatchContext, adv_frames: Tensor, adv_audio: Tensor,
               out: ModelOutput) -> dict[str, Tensor]:
        with torch.no_grad():
            maps = localization_maps(self.head, out, self.size)
        clean = ctx.data["clean_maps"]
        values = self._box_metrics(maps, ctx)
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


def _final_values(records: Records, keys: list[str], name: str) -> np.ndarray:
    """Per sample, ``name`` of the last key that attacked it (a cascade's final adversarial input)."""
    values = np.full(records.num_samples, np.nan)
    for key in keys:
        if name in records.columns[key]:
            column = records.column(key, name).astype(np.float64)
            values = np.where(np.isnan(column), values, column)
    return values


def _correct(records: Records, keys: list[str], cascade: bool) -> np.ndarray:
    if cascade:
        return records.robust(keys)
    return records.column(keys[0]) == 1


def evaluate_localization(model: AVModel, loader, args: argparse.Namespace, info: DistInfo, budgets: list[Budget],
                          attack_types: list[str], objectives: Sequence[str], boxes: Boxes | None,
                          num_vis: int = 0) -> tuple[dict, Records, list[dict]]:
    """Localization clean and under every (objective, attack type, budget); returns (results, per-sample
    records, vis samples). The first ``num_vis`` samples of rank 0 come back with their maps for the HTML page."""
    model.eval()
    head = map_head(model)
    observer = LocalizationObserver(head, boxes, args.imgSize, args.ciou_mode)
    variants = objective_variants(head, objectives, args.attack_loss)
    engine = AttackEngine(model, args, info, budgets, attack_types, variants, observer=observer, num_vis=num_vis)
    run = engine.run(loader)
    records = run.records
    img_size = args.imgSize

    def boxed(prefix: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if f"{prefix}ciou" not in records.extra:
            return None, None
        return (np.asarray(records.extra[f"{prefix}pointing"], dtype=np.float64),
                np.asarray(records.extra[f"{prefix}ciou"], dtype=np.float64))

    clean_correct = np.asarray(records.clean_correct, dtype=bool)
    entries = []
    for attack in engine.attack_types:
        cascade = attack in CASCADES
        for objective in (["+".join(objectives)] if cascade else objectives):
            for budget in budgets:
                keys = [k for k in records.keys() if k.split("|")[1] == budget.key
                        and (k.startswith(f"{attack}/") if cascade else k == f"{attack}|{budget.key}|{objective}")]
                if not keys:
                    continue
                pointing = _final_values(records, keys, "pointing") if boxes is not None else None
                cious = _final_values(records, keys, "ciou") if boxes is not None else None
                changes = {name: _final_values(records, keys, name) for name in CHANGE_FIELDS}
                entries.append({"objective": objective, "attack": attack, "budget": budget.name,
                                "eps_visual": budget.eps_visual, "eps_audio": budget.eps_audio, "grid": budget.grid,
                                "seconds": sum(run.seconds.get(k, 0.0) for k in keys),
                                **condition_summary(_correct(records, keys, cascade), pointing, cious, changes,
                                                    img_size)})
    results = {
        "run": args.id, "arch_classifier": args.arch_classifier, "boxes": args.boxes,
        "num_samples": records.num_samples, "input_size": img_size, "map_size": observer.map_size,
        "ciou_mode": args.ciou_mode, "success_threshold": SUCCESS_THRESHOLD, "map_threshold": MAP_THRESHOLD,
        "top_mass": TOP_MASS, "eps_units": args.eps_units, "attack_steps": args.attack_steps,
        "attack_alpha": args.attack_alpha, "attack_loss": args.attack_loss, "random_start": args.random_start,
        "restarts": args.restarts, "clean": condition_summary(clean_correct, *boxed("clean_"), None, img_size),
        "attacks": entries,
    }
    results["num_boxed"] = results["clean"].get("num_boxed", 0)
    if boxes is not None:
        results["center_prior"] = condition_summary(None, *boxed("prior_"), None, img_size)
    return results, records, _vis_with_maps(run.vis, head, model, img_size, boxes, args.ciou_mode)


def _vis_with_maps(vis: list[dict], head: FusionHead, model: AVModel, img_size: int, boxes: Boxes | None,
                   ciou_mode: str) -> list[dict]:
    """The engine's HTML samples with the normalised maps (clean and adversarial), box and cIoU added."""
    size = (img_size, img_size)
    device = next(model.parameters()).device
    for sample in vis:
        masks = None
        if boxes is not None:
            mask, has = boxes.input_masks([sample["info"]], img_size)
            masks = mask if bool(has[0]) else None
        sample["box"] = None if masks is None else masks[0]
        views = [sample] + list(sample["adv"].values())
        for view in views:
            frames, audio = view["frames"].unsqueeze(0), view["audio"].unsqueeze(0)
            with torch.no_grad():
                maps = localization_maps(head, model(frames.to(device), audio.to(device)), size).cpu()
            view["map"] = normalize_maps(maps)[0]
            view["iou"] = None if masks is None else float(ciou(maps, masks, ciou_mode)[0])
        sample["pred"] = sample["clean_pred"]
    return vis
