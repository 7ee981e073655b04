"""Own data: ``--dataset custom`` (categories from categories.txt or the class folders), its errors, and the
second generated dataset (dataset/generators/shapes.py) that the learnability benchmark trains on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arguments import ArgParser
from dataset.boxes import Boxes
from dataset.generators import shapes
from scripts import create_index
from tests.sop_fixture import make_root


def parse(*argv: str):
    return ArgParser("test").add_data_arguments().parse(list(argv))


def parse_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit):
        parse(*argv)
    return capsys.readouterr().err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three classes whose sorted folder order (apple, mango, zebra) differs from the listed order."""
    return make_root(tmp_path / "own", classes=("zebra", "apple", "mango"), per_class=1, num_frames=4)


def test_custom_reads_categories_txt_in_its_order_and_the_index_files(root: Path) -> None:
    args = parse("--dataset", "custom", "--data_root", str(root))
    assert args.categories == ["zebra", "apple", "mango"]
    assert args.cls_num == 3
    assert args.list_train == str(root / "train.csv") and args.audio_path == str(root / "audio")


def test_custom_without_categories_txt_uses_sorted_class_folders_and_says_so(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "categories.txt").unlink()
    args = parse("--dataset", "custom", "--data_root", str(root))
    assert args.categories == ["apple", "mango", "zebra"]
    err = capsys.readouterr().err
    assert "categories.txt not found" in err and "3 class folders" in err


def test_custom_ignores_hidden_folders_under_audio_like_create_index(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "audio" / ".ipynb_checkpoints").mkdir()
    assert parse("--dataset", "custom", "--data_root", str(root)).categories == ["zebra", "apple", "mango"]
    (root / "categories.txt").unlink()
    args = parse("--dataset", "custom", "--data_root", str(root))
    assert args.categories == ["apple", "mango", "zebra"] and args.cls_num == 3
    assert "3 class folders" in capsys.readouterr().err


def test_synthetic_still_needs_categories_txt(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert parse("--dataset", "synthetic", "--data_root", str(root)).categories == ["zebra", "apple", "mango"]
    (root / "categories.txt").unlink()
    assert "categories file not found" in parse_error(capsys, "--dataset", "synthetic", "--data_root", str(root))


def test_custom_errors_name_the_problem(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert f"{missing}: no such dataset folder" in parse_error(capsys, "--dataset", "custom", "--data_root",
                                                               str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "neither categories.txt nor class folders" in parse_error(capsys, "--dataset", "custom", "--data_root",
                                                                     str(empty))
    (empty / "categories.txt").write_text("# only a comment\n\n")
    assert "no class names" in parse_error(capsys, "--dataset", "custom", "--data_root", str(empty))
    (root / "audio" / "walrus").mkdir()
    err = parse_error(capsys, "--dataset", "custom", "--data_root", str(root))
    assert "walrus not listed in" in err and "categories.txt" in err


def test_create_index_rerun_reads_its_categories_txt_line_by_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A class name with a space ("playing guitar", as in Kinetics) is one line of categories.txt, not two."""
    root = make_root(tmp_path / "own", classes=("playing guitar", "dog"), per_class=1, num_frames=4)
    (root / "categories.txt").write_text("# label order\nplaying guitar\ndog\n")
    assert create_index.main(["--root", str(root), "--split", "1", "0", "0"]) == 0
    err = capsys.readouterr().err
    assert "not listed" not in err
    (root / "categories.txt").write_text("dog\n")
    assert create_index.main(["--root", str(root), "--split", "1", "0", "0"]) == 0
    assert "classes not listed in" in capsys.readouterr().err
    (root / "categories.txt").write_text("# only a comment\n")
    assert create_index.main(["--root", str(root), "--split", "1", "0", "0"]) == 1
    assert "no class names" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ shapes


SMALL = shapes.ShapesConfig(num_classes=4, per_class=1, size=64, duration=1.0, fps=4, audio_rate=8000)


def test_render_clip_is_deterministic_and_its_box_holds_the_object() -> None:
    frames, audio, meta = shapes.render_clip(SMALL, 2, 0)
    again = shapes.render_clip(SMALL, 2, 0)
    assert np.array_equal(frames, again[0]) and np.array_equal(audio, again[1]) and meta == again[2]
    assert frames.shape == (SMALL.num_frames, 64, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (SMALL.num_samples,) and np.abs(audio).max() <= 1.0
    x0, y0, x1, y1 = meta["box"]
    lo, hi = SMALL.object_scale
    assert lo * 64 - 2 <= max(x1 - x0, y1 - y0) <= hi * 64 + 1
    other = shapes.render_clip(SMALL, 2, 1)
    assert not np.array_equal(frames, other[0])


def test_object_scale_and_centre_bias_shape_the_boxes() -> None:
    def boxes(config: shapes.ShapesConfig) -> np.ndarray:
        return np.array([shapes.render_clip(config, c, v)[2]["box"] for c in range(4) for v in range(10)], float)

    spread = boxes(shapes.ShapesConfig(num_classes=4, size=64, duration=0.5, fps=2, audio_rate=8000,
                                       object_scale=(0.2, 0.3)))
    centred = boxes(shapes.ShapesConfig(num_classes=4, size=64, duration=0.5, fps=2, audio_rate=8000,
                                        object_scale=(0.5, 0.6), centre_bias=1.0))
    side = lambda b: np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # noqa: E731
    offset = lambda b: np.hypot((b[:, 0] + b[:, 2]) / 2 - 32, (b[:, 1] + b[:, 3]) / 2 - 32)  # noqa: E731
    assert side(centred).min() > side(spread).max()
    assert offset(centred).mean() < 0.5 * offset(spread).mean()


def test_generate_shapes_writes_videos_categories_and_a_boxes_json_the_evaluation_reads(tmp_path: Path) -> None:
    data = shapes.generate_shapes(tmp_path, num_classes=2, per_class=1, size=64, duration=0.5, fps=4,
                                  audio_rate=8000, workers=1)
    names = shapes.class_names(2)
    assert (tmp_path / "categories.txt").read_text().split() == names
    assert sorted(p.relative_to(tmp_path / "videos").as_posix() for p in (tmp_path / "videos").rglob("*.mp4")) == \
        sorted(f"{name}/vid0000.mp4" for name in names)
    assert json.loads((tmp_path / "boxes.json").read_text()) == data
    boxes = Boxes.load(tmp_path / "boxes.json")
    assert boxes.frame_size == (64, 64) and set(boxes.boxes) == {f"{name}/vid0000" for name in names}


@pytest.mark.parametrize("field, value", [("object_scale", (0.7, 0.3)), ("centre_bias", 1.5), ("num_classes", 13)])
def test_shapes_config_rejects_bad_values_naming_the_field(field: str, value) -> None:
    with pytest.raises(shapes.ShapesConfigError, match=field):
        shapes.ShapesConfig(**{field: value})
