"""Ground truth from the three --boxes formats: Flickr-SoundNet XML (several annotators, LVS consensus), VGG-Sound
Sources JSON (fractions of the frame, union) and boxes.json, on files the tests write in those formats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dataset.annotations import (
    CONSENSUS_LVS,
    AnnotationError,
    load_ground_truth,
    read_flickr_xml,
)
from evaluation.localization.metrics import gt_ciou, gt_pointing_hits

ANNOTATORS = ((0, 0, 128, 128), (64, 64, 192, 192), (64, 0, 128, 64))  # pixels of the 256 x 256 Flickr image


def flickr_xml(boxes, named: bool = True) -> str:
    """One Flickr-SoundNet annotation file: an object per annotator, each with a bbox whose first child is not a
    corner (as the public evaluation code assumes: it skips it)."""
    objects = []
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        if named:
            corners = f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        else:
            corners = f"<c>{x0}</c><c>{y0}</c><c>{x1}</c><c>{y1}</c>"
        objects.append(f"<object><name>annotator{n}</name><bbox><id>{n}</id>{corners}</bbox></object>")
    return f"<?xml version='1.0'?><annotation><filename>x.jpg</filename>{''.join(objects)}</annotation>"


def write_flickr(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for stem, text in files.items():
        (folder / f"{stem}.xml").write_text(text)
    return folder


@pytest.mark.parametrize("named", [True, False])
def test_flickr_consensus_map_counts_agreeing_annotators(tmp_path: Path, named: bool) -> None:
    folder = write_flickr(tmp_path / "Annotations", {"1000": flickr_xml(ANNOTATORS, named)})
    truth = load_ground_truth(folder)
    assert truth.source == "flickr" and truth.consensus == CONSENSUS_LVS
    truth = truth.with_frame_sizes({"guitar/1000": (256, 256)})
    gt, has_box = truth.input_maps(["guitar/1000", "guitar/2000"], 128)  # a 256 frame halves into the input
    assert has_box.tolist() == [True, False] and gt[1].sum().item() == 0
    at = {name: gt[0, y // 2, x // 2].item() for name, (x, y) in {
        "first only": (20, 20), "first and second": (80, 80), "first and third": (100, 40),
        "second only": (150, 150), "nobody": (220, 220), "nobody, top right": (220, 20)}.items()}
    assert at == {"first only": 0.5, "first and second": 1.0, "first and third": 1.0, "second only": 0.5,
                  "nobody": 0.0, "nobody, top right": 0.0}


def test_flickr_boxes_follow_the_frame_on_disk(tmp_path: Path) -> None:
    # the annotation is in 256 x 256 pixels; frames extracted at 512 x 384 (W x H) are resized and centre-cropped
    folder = write_flickr(tmp_path / "Annotations", {"7": flickr_xml([(0, 128, 128, 256)])})
    truth = load_ground_truth(folder).with_frame_sizes({"c/7": (384, 512)})
    gt, _ = truth.input_maps(["c/7"], 96)  # 384 -> 96: scale 1/4, width 128, 16 px cropped off the left
    rows, cols = gt[0].nonzero()[:, 0], gt[0].nonzero()[:, 1]
    # one annotator only: 0.5 inside the box x 0..64 (-16 -> 0..48), y 48..96 of the input
    assert gt[0].max().item() == 0.5
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (48, 95, 0, 47)


def test_vggss_boxes_are_fractions_of_the_frame_and_their_union_is_one(tmp_path: Path) -> None:
    path = tmp_path / "vggss.json"
    path.write_text(json.dumps([
        {"file": "abcdefghijk_000030", "bbox": [[0.25, 0.5, 0.75, 1.0], [0.3, 0.6, 0.7, 1.2]]},  # overlap; clipped
        {"file": "other_000010", "bbox": [[0.0, 0.0, 0.5, 0.5]]},
    ]))
    truth = load_ground_truth(path)
    assert truth.source == "vggss" and truth.covers("dog/abcdefghijk_000030") and not truth.covers("dog/else")
    truth = truth.with_frame_sizes({"dog/abcdefghijk_000030": (100, 200)})
    gt, has_box = truth.input_maps(["dog/abcdefghijk_000030"], 50)
    # H 100 -> 50, W 200 -> 100, 25 px cropped each side: x 50..150 -> 0..50, y 50..100 -> 25..50
    expected = torch.zeros(50, 50)
    expected[25:, :] = 1.0
    assert has_box.tolist() == [True] and torch.equal(gt[0], expected)


def test_boxes_json_is_read_as_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"size": [64, 64], "videos": {"a/v0": {"label": 0, "box": [8, 8, 24, 40]}}}))
    truth = load_ground_truth(path)
    gt, has_box = truth.input_maps(["a/v0", "b/v0"], 32)  # keyed by sample id: b/v0 has no box
    assert has_box.tolist() == [True, False] and gt[0].sum().item() == 8 * 16 and set(gt[0].unique().tolist()) == {0, 1}


def test_bad_annotation_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><bbox><xmin>1</xmin><ymin>2</ymin></bbox></object></annotation>")
    with pytest.raises(AnnotationError, match="bad.xml: bbox 1: expected xmin"):
        read_flickr_xml(bad)
    bad.write_text("<annotation><object><bbox><i>0</i><a>1</a><a>x</a><a>3</a><a>4</a></bbox></object></annotation>")
    with pytest.raises(AnnotationError, match="bad.xml: bbox 1: expected a number, got 'x'"):
        read_flickr_xml(bad)
    bad.write_text("<annotation>")
    with pytest.raises(AnnotationError, match="bad.xml: not an XML file"):
        read_flickr_xml(bad)
    with pytest.raises(AnnotationError, match="no .xml annotation files"):
        load_ground_truth(_empty(tmp_path / "empty"))
    vggss = tmp_path / "vggss.json"
    vggss.write_text(json.dumps([{"file": "a", "bbox": [[0.1, 0.1, 0.5]]}]))
    with pytest.raises(AnnotationError, match=r"vggss.json: entry 0 \(a\): a box must be"):
        load_ground_truth(vggss)
    vggss.write_text(json.dumps([{"file": "a", "bbox": [[0.5, 0.1, 0.2, 0.4]]}]))
    with pytest.raises(AnnotationError, match="an empty box"):
        load_ground_truth(vggss)
    with pytest.raises(AnnotationError, match="no such file"):
        load_ground_truth(tmp_path / "missing.json")


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def test_soft_ground_truth_ciou_and_pointing() -> None:
    gt = torch.zeros(1, 4, 4)
    gt[0, 0, :] = 1.0  # row 0: two annotators
    gt[0, 1, :] = 0.5  # row 1: one
    falling = torch.arange(15, -1, -1, dtype=torch.float32).view(1, 4, 4)  # above the median: rows 0 and 1
    # LVS: Σ pred·gt / (Σ gt + Σ pred·[gt = 0]) = (4 + 2) / (6 + 0)
    assert gt_ciou(falling, gt).item() == pytest.approx(1.0)
    rising = falling.flip(1)  # above the median: rows 2 and 3, where gt = 0
    assert gt_ciou(rising, gt).item() == 0.0
    shifted = torch.roll(falling, shifts=1, dims=1)  # rows 1 and 2: 4 x 0.5 inside, 4 pixels outside
    assert gt_ciou(shifted, gt).item() == pytest.approx(2 / (6 + 4))
    assert gt_pointing_hits(torch.cat([falling, rising]), gt.expand(2, 4, 4)).tolist() == [True, False]
    with pytest.raises(ValueError, match="float ground-truth maps"):
        gt_ciou(falling, gt > 0)
