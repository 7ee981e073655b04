"""Ground truth of sound-source localization, from the three box formats ``--boxes`` reads, as maps in the model input.

* ``boxes.json`` of the generators (``dataset.generators``): ``{"size": [H, W], "videos": {"<class>/<id>": {"box":
  [x0, y0, x1, y1]}}}`` in pixels of the generated frames, keyed by sample id. Ground truth: the box (0 or 1).
* Flickr-SoundNet test annotations (Senocak et al. 2018): a folder of ``<id>.xml`` files, one per image, each with
  the boxes of several annotators: ``bbox`` elements whose children give xmin, ymin, xmax, ymax in pixels of the
  256 x 256 image (named ``xmin`` ... or, unnamed, the four children after the first, as the public evaluation
  code reads them). Ground truth as LVS (Chen et al. 2021): the boxes summed, halved and clipped to 1, so a pixel
  inside the boxes of two or more annotators is 1 and one inside a single annotator's box 0.5.
* VGG-Sound Sources (Chen et al. 2021): one JSON file, a list of ``{"file": "<id>", "bbox": [[x0, y0, x1, y1],
  ...]}`` with coordinates as fractions of the frame (clipped to [0, 1]). Ground truth: the union of the boxes.

The benchmarks are keyed by the video id ``<id>``, matched to the last part of a sample id ``<class>/<id>``
(``scripts/preprocess.py`` names a video ``VIDEOS/<class>/<id>.mp4`` sample ``<class>/<id>``). Boxes are mapped
into the model input through the eval transform (resize the shorter side, centre crop) with the frame size of
each sample: boxes.json gives it; for the benchmarks the caller reads it from the frames on disk.
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from dataset.boxes import Boxes, box_masks, box_to_input

NormalizedBox = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame's width / height
FLICKR_IMAGE_SIZE = 256  # the Flickr-SoundNet annotations are in pixels of the 256 x 256 test images
FLICKR_CORNERS = ("xmin", "ymin", "xmax", "ymax")
CONSENSUS_UNION = "union"  # any box: 1
CONSENSUS_LVS = "lvs"  # summed boxes / 2, clipped to 1 (Flickr-SoundNet's annotators)


class AnnotationError(ValueError):
    """A box file that cannot be read; the message names the file (and the entry)."""


@dataclass
class GroundTruth:
    """Per annotation key, the boxes (fractions of the frame); how boxes combine; and the frame sizes."""

    source: str  # "boxes.json", "flickr" or "vggss"
    boxes: dict[str, tuple[NormalizedBox, ...]]
    consensus: str
    keyed_by_sample: bool  # boxes.json: keys are sample ids '<class>/<id>'; benchmarks: video ids '<id>'
    default_frame_size: tuple[int, int] | None = None  # (H, W) of every frame (boxes.json)
    frame_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # sample id -> (H, W)

    def key_of(self, sample_id: str) -> str:
        return sample_id if self.keyed_by_sample else sample_id.rsplit("/", 1)[-1]

    def covers(self, sample_id: str) -> bool:
        return self.key_of(sample_id) in self.boxes

    def with_frame_sizes(self, sizes: Mapping[str, tuple[int, int]]) -> GroundTruth:
        return replace(self, frame_sizes={**self.frame_sizes, **sizes})

    def frame_size(self, sample_id: str) -> tuple[int, int]:
        size = self.frame_sizes.get(sample_id, self.default_frame_size)
        if size is None:
            raise AnnotationError(f"{self.source} boxes: no frame size known for sample {sample_id}")
        return size

    def input_maps(self, keys: Sequence[str], img_size: int,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Ground-truth maps ``[B, img_size, img_size]`` (float, in [0, 1]) in the model input, and whether each
        sample has a box (annotated, and not cropped away); a sample without one has an all-zero map."""
        maps = torch.zeros(len(keys), img_size, img_size)
        for i, sample_id in enumerate(keys):
            boxes = self.boxes.get(self.key_of(sample_id))
            if not boxes:
                continue
            height, width = self.frame_size(sample_id)
            pixel = [box_to_input((x0 * width, y0 * height, x1 * width, y1 * height), (height, width), img_size)
                     for x0, y0, x1, y1 in boxes]
            maps[i] = box_masks(torch.tensor(pixel, dtype=torch.float32), img_size, img_size).float().sum(dim=0)
        maps = (maps > 0).float() if self.consensus == CONSENSUS_UNION else (maps / 2).clamp(max=1.0)
        maps = maps.to(device)
        return maps, maps.flatten(1).amax(dim=1) > 0


# ------------------------------------------------------------------------------------------------ readers


def _number(text: str | None, where: str) -> float:
    try:
        value = float(text if text is not None else "")
    except ValueError:
        raise AnnotationError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: expected a finite number, got {text!r}")
    return value


def _checked_box(box: Sequence[float], where: str) -> NormalizedBox:
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError(f"{where}: an empty box {list(box)} (needs x0 < x1 and y0 < y1 inside the frame)")
    return x0, y0, x1, y1


def read_flickr_xml(path: str | os.PathLike) -> tuple[NormalizedBox, ...]:
    """The annotators' boxes of one Flickr-SoundNet XML file, as fractions of the 256 x 256 image."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: not an XML file ({err})") from None
    boxes = []
    for n, bbox in enumerate(root.iter("bbox")):
        where = f"{path}: bbox {n + 1}"
        children = list(bbox)
        named = {child.tag: child.text for child in children}
        if all(tag in named for tag in FLICKR_CORNERS):
            texts = [named[tag] for tag in FLICKR_CORNERS]
        elif len(children) == 5:
            texts = [child.text for child in children[1:]]
        else:
            raise AnnotationError(f"{where}: expected xmin, ymin, xmax, ymax (or five children, the last four the "
                                  f"corners), got {[child.tag for child in children]}")
        corners = [_number(text, where) / FLICKR_IMAGE_SIZE for text in texts]
        boxes.append(_checked_box(corners, where))
    if not boxes:
        raise AnnotationError(f"{path}: no bbox element")
    return tuple(boxes)


def read_flickr_folder(folder: str | os.PathLike) -> GroundTruth:
    """Every ``<id>.xml`` of a Flickr-SoundNet annotation folder."""
    files = sorted(Path(folder).glob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder}: no .xml annotation files (expected Flickr-SoundNet's <id>.xml)")
    boxes = {path.stem: read_flickr_xml(path) for path in files}
    return GroundTruth("flickr", boxes, CONSENSUS_LVS, keyed_by_sample=False)


def read_vggss(path: str | os.PathLike) -> GroundTruth:
    """VGG-Sound Sources' box file: a JSON list of ``{"file": id, "bbox": [[x0, y0, x1, y1], ...]}`` (fractions)."""
    try:
        entries = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a list of {{'file', 'bbox'}} entries (VGG-Sound Sources)")
    boxes: dict[str, tuple[NormalizedBox, ...]] = {}
    for n, entry in enumerate(entries):
        where = f"{path}: entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("bbox"), list) or not entry["bbox"]:
            raise AnnotationError(f"{where}: expected {{'file': <id>, 'bbox': [[x0, y0, x1, y1], ...]}}, got {entry!r}")
        parsed = []
        for box in entry["bbox"]:
            if not isinstance(box, list) or len(box) != 4:
                raise AnnotationError(f"{where} ({entry['file']}): a box must be [x0, y0, x1, y1], got {box!r}")
            parsed.append(_checked_box([_number(str(v), f"{where} ({entry['file']})") for v in box],
                                       f"{where} ({entry['file']})"))
        if entry["file"] in boxes:
            raise AnnotationError(f"{where}: {entry['file']} is listed twice")
        boxes[entry["file"]] = tuple(parsed)
    return GroundTruth("vggss", boxes, CONSENSUS_UNION, keyed_by_sample=False)


def read_boxes_json(path: str | os.PathLike) -> GroundTruth:
    """A synthetic dataset's boxes.json (``dataset.boxes.Boxes``) as ground truth."""
    try:
        synthetic = Boxes.load(path)
    except (ValueError, json.JSONDecodeError) as err:
        raise AnnotationError(str(err)) from None
    height, width = synthetic.frame_size
    boxes = {key: (_checked_box((x0 / width, y0 / height, x1 / width, y1 / height), f"{path}: {key}"),)
             for key, (x0, y0, x1, y1) in synthetic.boxes.items()}
    return GroundTruth("boxes.json", boxes, CONSENSUS_UNION, keyed_by_sample=True,
                       default_frame_size=synthetic.frame_size)


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """``--boxes``: a Flickr-SoundNet annotation folder, VGG-Sound Sources' JSON list, or a boxes.json."""
    path = Path(path)
    if path.is_dir():
        return read_flickr_folder(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file or folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not a JSON file ({err})") from None
    return read_vggss(path) if isinstance(data, list) else read_boxes_json(path)
