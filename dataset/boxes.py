"""Box geometry: sounding-object boxes of a dataset, mapped into the model input through the eval transform
(resize the shorter side to ``imgSize``, centre crop), and their pixel masks."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


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
            raise ValueError(f"{path}: not a boxes.json of dataset/generators/synthetic.py "
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
