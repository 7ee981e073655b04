"""The paper's transforms (as in Sound-of-Pixels), with one set of random parameters per sample.

Train: resize the shorter side to 1.1 x imgSize (bicubic), random imgSize crop, random horizontal
flip — the same crop and flip for every frame of the clip — and audio volume x U(0.5, 1.5) clipped
to [-1, 1]. Eval: resize the shorter side to imgSize and take the centre crop; audio unchanged.

Frames leave the dataset as uint8 (a quarter of the bytes of float32 on their way to the device);
:func:`frames_to_float` turns them into floats in [0, 1] on the device, once, in
``dataset.loaders.to_device``.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import torch
from PIL import Image

from dataset.geometry import CropGeometry, crop_geometry, resized_size

# Level k -> float32(k) / float32(255), computed once on the CPU: a lookup gives the same floats on every device,
# where a division on the GPU may be carried out as a multiplication by 1/255 and differ in the last bit.
_UNIT_LEVELS = torch.arange(256, dtype=torch.float32) / 255


def cut_window(img: Image.Image, full_size: tuple[int, int], geometry: CropGeometry,
               reduced_box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The ``geometry`` window of one frame as uint8 [size, size, 3].

    ``img`` is the frame decoded at ``full_size``, or at a reduced scale (JPEG draft) where ``reduced_box`` is
    the full frame's extent in the reduced image's pixels. A full decode is resized whole and cropped (exactly
    as before reduced decoding existed); a reduced one has only the window resampled, from the same region of
    the picture, since it differs from the full decode anyway.
    """
    target = resized_size(full_size, geometry.shorter)
    left, top, size = geometry.left, geometry.top, geometry.size
    if reduced_box is None:
        resized = img if img.size == target else img.resize(target, Image.BICUBIC)
        window = resized.crop((left, top, left + size, top + size))
    else:
        sx, sy = reduced_box[2] / target[0], reduced_box[3] / target[1]
        window = img.resize((size, size), Image.BICUBIC,
                            box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    if geometry.flip:
        window = window.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(window, dtype=np.uint8)


def frames_tensor(windows: list[np.ndarray]) -> torch.Tensor:
    """[H, W, 3] uint8 windows as uint8 [3, T, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(windows).transpose(3, 0, 1, 2)))


def transform_frames(imgs: list[Image.Image], img_size: int, train: bool,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
    """Fully decoded frames of one clip as uint8 [3, T, H, W] (the dataset's transform)."""
    geometry = crop_geometry(imgs[0].size, img_size, train, rng)
    return frames_tensor([cut_window(img, img.size, geometry) for img in imgs])


@cache
def _unit_levels_on(device: torch.device) -> torch.Tensor:
    return _UNIT_LEVELS.to(device)  # once per device, not a small blocking copy per batch


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames as float32 in [0, 1], on their own device: bit-identical to numpy's float32(k) / 255."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames_to_float expects uint8 frames, got {frames.dtype}")
    return _unit_levels_on(frames.device)[frames.long()]


def transform_audio(wave: np.ndarray, train: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Waveform as float [1, L] in [-1, 1]."""
    if train:
        if rng is None:
            raise ValueError("train transforms need a random generator")
        wave = wave * rng.uniform(0.5, 1.5)
    return torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32)).unsqueeze(0)
