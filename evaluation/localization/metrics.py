"""Sound-source localization metrics: pointing game, cIoU, AUC, map changes.

A localization map is what a head's ``attention(feat_a, fmap_v)`` returns, ``[B, h, w]`` on the grid
of the visual feature map (the ``loc``, ``attention``, ``ssl`` and ``ssl_lvs`` heads have one). Data-free
baselines: ``center_prior_maps`` and ``random_maps``. Every metric works on maps
upsampled bilinearly to the model input (``imgSize`` x ``imgSize``), against boxes mapped from the
generated frame into that input through the eval transform (``dataset.boxes``).

Metrics against the boxes (gt: the binary union of a sample's boxes; with several annotators, the ground-truth
map of ``dataset.annotations`` with values in [0, 1], where ``gt_pointing_hits`` / ``gt_ciou`` apply):

* pointing game: the map's argmax lies inside the box;
* cIoU, by default in the published convention (``CIOU_LVS``: LVS, Chen et al. CVPR 2021; EZ-VSL follows
  it): pred = the pixels above the map's median, cIoU = Σ(pred·gt) / (Σgt + Σpred·[gt = 0]).
  ``CIOU_THRESHOLD05`` is this project's earlier convention: the IoU of gt with the min-max normalised
  map thresholded at ``MAP_THRESHOLD`` (0.5). Either way cIoU@0.5 is the fraction of samples with
  cIoU >= ``SUCCESS_THRESHOLD`` (0.5);
* AUC: area under the success rate (fraction with cIoU >= t) against t = 0, 0.05, ..., 1 (trapezoids).

Without boxes (real data) the change of the map under attack is measured instead: IoU between the
clean and the adversarial top regions (the highest locations holding ``TOP_MASS`` of the map's mass,
and the normalised map >= ``MAP_THRESHOLD``), and the shift of the map's peak.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CIOU_LVS = "lvs"  # the published convention: the map above its median against the boxes
CIOU_THRESHOLD05 = "threshold0.5"  # the IoU of the boxes with the normalised map >= MAP_THRESHOLD
DEFAULT_CIOU_MODE = CIOU_LVS
CIOU_CONVENTIONS = {
    CIOU_LVS: "LVS convention (Chen et al. CVPR 2021; EZ-VSL follows it): pred = the pixels above the map's "
              "median, gt = the union of the boxes, cIoU = Σ(pred·gt) / (Σgt + Σpred·[gt = 0])",
    CIOU_THRESHOLD05: "fixed-threshold convention: cIoU = IoU of the union of the boxes with the min-max "
                      "normalised map >= 0.5",
}
SUCCESS_THRESHOLD = 0.5  # a sample counts in cIoU@0.5 when its cIoU is at least this
MAP_THRESHOLD = 0.5  # of the min-max normalised map (CIOU_THRESHOLD05 and the map-change regions)
TOP_MASS = 0.2  # share of the map's mass in the top region of the real-data comparison
AUC_THRESHOLDS = 21  # cIoU thresholds 0, 0.05, ..., 1


# ------------------------------------------------------------------------------------------- metrics


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` maps bilinearly resized to ``size`` (differentiable).

    Interpolated in float64: in float32 the border strips, which repeat one cell, come out one rounding step
    apart instead of tied, and which pixel ranks first (peak, median mask, top mass) then depends on the
    batch the sample is in."""
    return F.interpolate(maps.unsqueeze(1).double(), size=size, mode="bilinear",
                         align_corners=False).squeeze(1).float()


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


def threshold_masks(maps: Tensor, threshold: float = MAP_THRESHOLD) -> Tensor:
    """Where the min-max normalised maps reach ``threshold``."""
    return normalize_maps(maps) >= threshold


def median_masks(maps: Tensor) -> Tensor:
    """Where each map lies strictly above its median (for an even pixel count the lower of the two middle
    values): the LVS prediction, the top half of the pixels when their values are distinct.

    The convention min-max normalises first; a rescaling that keeps the order keeps this set, so the raw
    map is used (normalising in floating point could merge nearby values into ties). Pixels tied with the
    median are 0, so a constant map predicts nothing. With N pixels and ``v = sorted(values)[N // 2]``,
    EZ-VSL's code keeps the pixels >= v: the same set for distinct values and an even N (an even imgSize);
    LVS's code keeps those > v, one pixel fewer.
    """
    flat = maps.flatten(1)
    median = flat.median(dim=1, keepdim=True).values
    return (flat > median).view_as(maps)


def ciou(maps: Tensor, masks: Tensor, mode: str = DEFAULT_CIOU_MODE) -> Tensor:
    """Per-sample cIoU ``[B]`` of ``maps [B, H, W]`` against the boolean box masks ``[B, H, W]`` (the union of
    each sample's boxes) in convention ``mode`` (``CIOU_LVS`` or ``CIOU_THRESHOLD05``, see the module doc).

    With a binary gt the LVS denominator Σgt + Σpred·[gt = 0] is the size of pred ∪ gt, so LVS is the IoU
    of the median mask with the boxes. That mask covers half the frame, so a box of area A (pixels N)
    scores at most 2A/N when A < N/2: below a quarter of the frame no sample reaches cIoU 0.5. A sample
    without a box has no cIoU: it gives 0 here and its caller must leave it out.
    """
    if maps.shape != masks.shape or masks.dtype != torch.bool:
        raise ValueError(f"ciou needs maps and boolean box masks of one shape, got maps {tuple(maps.shape)} and "
                         f"masks {tuple(masks.shape)} of {masks.dtype}")
    if not torch.isfinite(maps).all():
        raise ValueError("ciou: the localization maps hold NaN or infinite values")
    if mode == CIOU_LVS:
        pred, gt = median_masks(maps).flatten(1), masks.flatten(1)
        inter = (pred & gt).sum(dim=1).float()
        denominator = gt.sum(dim=1).float() + (pred & ~gt).sum(dim=1).float()
        return inter / denominator.clamp_min(1)
    if mode == CIOU_THRESHOLD05:
        return mask_iou(threshold_masks(maps, MAP_THRESHOLD), masks)
    raise ValueError(f"unknown cIoU mode {mode!r}; choose one of {sorted(CIOU_CONVENTIONS)}")


def gt_pointing_hits(maps: Tensor, gt_maps: Tensor) -> Tensor:
    """The pointing game against ground-truth maps ``[B, H, W]`` in [0, 1] (``dataset.annotations``): the map's
    argmax lies where the ground truth is above 0 (inside any annotator's box)."""
    return pointing_hits(maps, gt_maps > 0)


def gt_ciou(maps: Tensor, gt_maps: Tensor, mode: str = DEFAULT_CIOU_MODE) -> Tensor:
    """cIoU against ground-truth maps ``[B, H, W]`` with values in [0, 1] (Flickr-SoundNet's 0.5 for a box of one
    annotator). LVS convention: Σ(pred·gt) / (Σgt + Σpred·[gt = 0]), pred the median mask, exactly LVS's formula
    for soft gt and ``ciou`` for a binary one; the fixed-threshold convention compares with gt > 0."""
    if maps.shape != gt_maps.shape or not gt_maps.is_floating_point():
        raise ValueError(f"gt_ciou needs maps and float ground-truth maps of one shape, got maps {tuple(maps.shape)}"
                         f" and ground truth {tuple(gt_maps.shape)} of {gt_maps.dtype}")
    if mode != CIOU_LVS:
        return ciou(maps, gt_maps > 0, mode)
    if not torch.isfinite(maps).all():
        raise ValueError("ciou: the localization maps hold NaN or infinite values")
    pred, gt = median_masks(maps).flatten(1).float(), gt_maps.flatten(1).float()
    inter = (pred * gt).sum(dim=1)
    denominator = gt.sum(dim=1) + (pred * (gt == 0).float()).sum(dim=1)
    return inter / denominator.clamp_min(1e-12)


def success_rates(cious: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of samples with cIoU >= t, for every t."""
    values = np.asarray(cious, dtype=np.float64)
    return np.array([(values >= t).mean() if values.size else 0.0 for t in thresholds])


def auc(cious: Sequence[float], num_thresholds: int = AUC_THRESHOLDS) -> float:
    """Area under the success-rate curve over ``num_thresholds`` evenly spaced cIoU thresholds in [0, 1]
    (trapezoidal rule; 21 gives the published 0, 0.05, ..., 1)."""
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    rates = success_rates(cious, thresholds)
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


def random_maps(indices: Sequence[int], height: int, width: int, seed: int,
                device: torch.device | None = None) -> Tensor:
    """A data-free baseline: per sample, uniform noise on a ``height`` x ``width`` grid (the model's map grid),
    drawn from a generator seeded by (``seed``, the sample's dataset index), so it does not depend on the batch."""
    maps = [torch.rand(height, width, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
            for i in indices]
    return torch.stack(maps).to(device)


def center_prior_maps(batch: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """A data-free baseline: a Gaussian at the frame centre whose half-maximum ellipse spans half the frame."""
    ys = (torch.arange(height, device=device) + 0.5 - height / 2) / (height / 4)
    xs = (torch.arange(width, device=device) + 0.5 - width / 2) / (width / 4)
    prior = torch.exp(-math.log(2) * (ys[:, None] ** 2 + xs[None, :] ** 2))
    return prior.expand(batch, height, width)
