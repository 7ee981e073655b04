"""The paper's transforms (as in Sound-of-Pixels), with one set of random parameters per sample.

Train: resize the shorter side to 1.1 x imgSize (bicubic), random imgSize crop, random horizontal
flip — the same crop and flip for every frame of the clip — and audio volume x U(0.5, 1.5) clipped
to [-1, 1]. Eval: resize the shorter side to imgSize and take the centre crop; audio unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return img.resize(new, Image.BICUBIC)


def _to_tensor(imgs: list[Image.Image]) -> torch.Tensor:
    """Frames as float [3, T, H, W] in [0, 1]."""
    stack = np.stack([np.asarray(img, dtype=np.uint8) for img in imgs])  # T, H, W, 3
    # numpy, not torch, for the conversion: torch's intra-op threads cost more than they save here.
    return torch.from_numpy(np.ascontiguousarray(stack.transpose(3, 0, 1, 2), dtype=np.float32) / np.float32(255))


def transform_frames(imgs: list[Image.Image], img_size: int, train: bool,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
    if train:
        if rng is None:
            raise ValueError("train transforms need a random generator")
        resized = [_resize_shorter(img, int(img_size * 1.1)) for img in imgs]
        w, h = resized[0].size
        left = int(rng.integers(0, w - img_size + 1))
        top = int(rng.integers(0, h - img_size + 1))
        flip = bool(rng.random() < 0.5)
        out = []
        for img in resized:
            img = img.crop((left, top, left + img_size, top + img_size))
            out.append(img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img)
        return _to_tensor(out)
    resized = [_resize_shorter(img, img_size) for img in imgs]
    w, h = resized[0].size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return _to_tensor([img.crop((left, top, left + img_size, top + img_size)) for img in resized])


def transform_audio(wave: np.ndarray, train: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Waveform as float [1, L] in [-1, 1]."""
    if train:
        if rng is None:
            raise ValueError("train transforms need a random generator")
        wave = wave * rng.uniform(0.5, 1.5)
    return torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32)).unsqueeze(0)
