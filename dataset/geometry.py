"""Crop geometry shared by every frame path (CPU decoding, reduced decoding, decoding on the device) and by
preprocessing: which size a frame is resized to and where the crop window lies. No torch here, so the
preprocessing script starts without importing it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resized_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) of a ``size`` frame resized so that its shorter side is ``shorter``, aspect kept."""
    w, h = size
    if min(w, h) == shorter:
        return size
    if w <= h:
        return shorter, max(shorter, round(h * shorter / w))
    return max(shorter, round(w * shorter / h)), shorter


def resize_target(img_size: int, train: bool) -> int:
    """The shorter side frames are resized to before the ``img_size`` crop: 1.1 x larger in train."""
    return int(img_size * 1.1) if train else img_size


@dataclass(frozen=True)
class CropGeometry:
    """Where the frames of one clip are cut: each frame is resized so that its shorter side is ``shorter``
    (bicubic), the ``size`` x ``size`` window at (``left``, ``top``) of the resized frame is taken and mirrored
    when ``flip``."""

    shorter: int
    left: int
    top: int
    size: int
    flip: bool


def crop_geometry(frame_size: tuple[int, int], img_size: int, train: bool,
                  rng: np.random.Generator | None = None) -> CropGeometry:
    """The clip's crop for a first frame of ``frame_size`` (width, height): random in train (draws left, top,
    flip from ``rng`` in that order), the centre in eval."""
    shorter = resize_target(img_size, train)
    w, h = resized_size(frame_size, shorter)
    if train:
        if rng is None:
            raise ValueError("train transforms need a random generator")
        left = int(rng.integers(0, w - img_size + 1))
        top = int(rng.integers(0, h - img_size + 1))
        flip = bool(rng.random() < 0.5)
        return CropGeometry(shorter, left, top, img_size, flip)
    return CropGeometry(shorter, (w - img_size) // 2, (h - img_size) // 2, img_size, False)
