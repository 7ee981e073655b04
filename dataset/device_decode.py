"""Decoding frames on the training device (``--decode_device cuda``).

Loader workers only read each frame's JPEG bytes and its header, and draw the clip's crop and flip exactly as
the CPU path does (:class:`JpegClip`); :func:`collate_batch` packs a batch's bytes into one tensor
(:class:`JpegBatch`), and :func:`decode_clips` decodes them together with ``torchvision.io.decode_jpeg`` on the
device, resizes each frame (bicubic, antialiased, PIL's kernel) and cuts the same window as the CPU path.

On the CPU (``device='cpu'``, how the tests run it) the result matches the CPU path within one level per pixel:
libjpeg decodes on both sides, and the resize repeats PIL's two passes with 8-bit rounding in between, in float
where PIL uses 22-bit fixed-point coefficients. nvJPEG on a GPU is a different decoder (IDCT and chroma
upsampling), not measured here. Frames that the CPU path decodes at reduced scale (stored at least twice the
resize target) are decoded in full here, so they differ as reduced decoding does (tests/test_fast_loading.py).

``torchvision.io.decode_jpeg`` is deprecated since torchvision 0.29 (a DeprecationWarning; it still works, and
older stacks have no successor); its successor is TorchCodec's ``decode_jpeg`` (from 0.16: batched nvJPEG with
``device='cuda'``), not adopted here: TorchCodec's wheels follow one torch release each, and no GPU was at hand
to check it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from dataset.geometry import CropGeometry, resized_size
from dataset.index import DataError

# Frames resized in one call at most: 1280 x 720 float frames take 11 MB each.
_RESIZE_CHUNK = 64


@dataclass
class JpegClip:
    """The frames of one sample, still encoded: a worker's stand-in for ``frames``."""

    data: list[bytes]
    sizes: list[tuple[int, int]]  # (width, height) of each stored frame
    geometry: CropGeometry
    paths: list[str]
    where: str  # the sample's index CSV file and line, for error messages


@dataclass
class JpegBatch:
    """The clips of one batch, their bytes in one uint8 tensor (one shared-memory block from a worker)."""

    buffer: torch.Tensor
    spans: list[list[tuple[int, int]]]  # per clip, per frame: (start, end) in ``buffer``
    clips: list[JpegClip]  # with their ``data`` emptied

    def __len__(self) -> int:
        return len(self.clips)


def collate_batch(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The default collation, except that the ``jpeg`` clips of deferred decoding become one :class:`JpegBatch`."""
    if "jpeg" not in samples[0]:
        return default_collate(samples)
    clips = [sample["jpeg"] for sample in samples]
    batch = default_collate([{k: v for k, v in sample.items() if k != "jpeg"} for sample in samples])
    spans, start = [], 0
    for clip in clips:
        spans.append([])
        for data in clip.data:
            spans[-1].append((start, start + len(data)))
            start += len(data)
    buffer = torch.frombuffer(bytearray(b"".join(data for clip in clips for data in clip.data)), dtype=torch.uint8)
    emptied = [JpegClip([], clip.sizes, clip.geometry, clip.paths, clip.where) for clip in clips]
    batch["jpeg"] = JpegBatch(buffer, spans, emptied)
    return batch


def _decode_all(batch: JpegBatch, device: torch.device) -> list[torch.Tensor]:
    """Every frame of the batch decoded on ``device`` as uint8 [3, H, W]; a frame that does not decode raises
    DataError naming the sample's CSV line and the file, as the CPU path does."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [batch.buffer[start:end] for spans in batch.spans for start, end in spans]
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        for clip, spans in zip(batch.clips, batch.spans):  # find the culprit, one frame at a time
            for path, (start, end) in zip(clip.paths, spans):
                try:
                    decode_jpeg(batch.buffer[start:end], mode=ImageReadMode.RGB, device=device)
                except RuntimeError as err:
                    raise DataError(f"{clip.where}: frame {path}: cannot decode ({err})") from None
        raise
    sizes = [size for clip in batch.clips for size in clip.sizes]
    paths = [(clip.where, path) for clip in batch.clips for path in clip.paths]
    for image, (w, h), (where, path) in zip(images, sizes, paths):
        if tuple(image.shape[1:]) != (h, w):
            raise DataError(f"{where}: frame {path}: decoded as {image.shape[2]} x {image.shape[1]}, "
                            f"its header says {w} x {h}")
    return images


def _resize(images: list[torch.Tensor], target: tuple[int, int]) -> list[torch.Tensor]:
    """Frames of one size resized to ``target`` (width, height) as PIL does: bicubic with its antialiased kernel,
    the horizontal pass first, rounded and clipped to 8 bits, then the vertical pass (one float pass without the
    intermediate clipping would differ by several levels next to hard edges, where the kernel overshoots)."""
    out = []
    for i in range(0, len(images), _RESIZE_CHUNK):
        stack = torch.stack(images[i:i + _RESIZE_CHUNK])
        height, width = stack.shape[2:]
        for size in ((height, target[0]), (target[1], target[0])):
            if tuple(stack.shape[2:]) != size:
                resized = F.interpolate(stack.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
                stack = resized.round_().clamp_(0, 255).to(torch.uint8)
        out.extend(stack)
    return out


def decode_clips(batch: JpegBatch, device: torch.device) -> torch.Tensor:
    """The batch's frames decoded, resized and cut on ``device``: uint8 [B, 3, T, size, size]."""
    images = _decode_all(batch, device)
    geometries = [clip.geometry for clip in batch.clips for _ in clip.sizes]
    targets = [resized_size(size, clip.geometry.shorter) for clip in batch.clips for size in clip.sizes]
    groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = defaultdict(list)
    for i, (image, target) in enumerate(zip(images, targets)):
        size = (image.shape[2], image.shape[1])
        if size != target:
            groups[size, target].append(i)
    for (_, target), members in groups.items():
        for i, resized in zip(members, _resize([images[i] for i in members], target)):
            images[i] = resized
    windows = []
    for image, g in zip(images, geometries):
        window = image[:, g.top:g.top + g.size, g.left:g.left + g.size]
        windows.append(window.flip(-1) if g.flip else window)
    frames, start = [], 0
    for clip in batch.clips:
        frames.append(torch.stack(windows[start:start + len(clip.sizes)], dim=1))
        start += len(clip.sizes)
    return torch.stack(frames)
