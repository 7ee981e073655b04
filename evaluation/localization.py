"""Sound-source localization under multimodal attacks: the map of a head, the map attack and the
evaluation loop (metrics in ``evaluation.loc_metrics``, outputs in ``evaluation.loc_report``).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from attacks import LossFn, build_attack
from dataset.loaders import to_device
from evaluation.loc_metrics import (
    CIOU_THRESHOLD,
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
from models.av_model import AVModel, ModelOutput
from models.fusion import FusionHead
from utils.distributed import DistInfo, all_gather_list, all_reduce_sum

OBJECTIVES = ("class", "map")


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


