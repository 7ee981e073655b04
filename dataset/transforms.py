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
    the full frame's extent in the reduced image's pixels. Only the window is resampled: the pixels of resizing
    the whole frame to the target and cropping, at a half or less of the work. It takes PIL's two passes
    explicitly, horizontal then vertical as PIL resizes a whole frame (given a box, PIL may take the vertical
    pass first, and the other order rounds the intermediate differently: up to 3 levels). PIL takes the box in
    single precision, so a value next to a rounding boundary may still land one level off the whole-frame resize
    (about 0.1 % of the values; tests/test_fast_loading.py). A frame already at the target is only cut.
    """
    target = resized_size(full_size, geometry.shorter)
    left, top, size = geometry.left, geometry.top, geometry.size
    if reduced_box is None and img.size == target:
        window = img.crop((left, top, left + size, top + size))
    else:
        width, height = reduced_box[2:] if reduced_box is not None else img.size
        sx, sy = width / target[0], height / target[1]
        columns = img.resize((size, img.height), Image.BICUBIC,
                             box=(left * sx, 0, min(width, (left + size) * sx), img.height))
        window = columns.resize((size, size), Image.BICUBIC, box=(0, top * sy, size, min(height, (top + size) * sy)))
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
        np.clip(wave, -1.0, 1.0, out=wave)  # a new array already: clipped where it is
    else:
        wave = np.clip(wave, -1.0, 1.0)
    return torch.from_numpy(wave.astype(np.float32, copy=False)).unsqueeze(0)
