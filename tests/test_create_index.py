from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataset.index import DataError
from dataset.index_builder import Entry, check_fractions, scan_root, split_counts, stratified_split, write_index
from dataset.layout import frame_name
from dataset.preprocess import preprocess_tree

REPO = Path(__file__).resolve().parents[1]
CLASS_SIZES = {"accordion": 10, "cello": 5, "erhu": 3}


def add_video(root: Path, cls: str, vid: str, frames: int | list[int], wav: bool = True, suffix: str = ".mp4") -> None:
    """Fake a preprocessed video: empty files are enough, the index only looks at names."""
    frame_dir = root / "frames" / cls / f"{vid}{suffix}"
    frame_dir.mkdir(parents=True)
    for k in range(1, frames + 1) if isinstance(frames, int) else frames:
        (frame_dir / frame_name(k)).touch()
    (root / "audio" / cls).mkdir(parents=True, exist_ok=True)
    if wav:
        (root / "audio" / cls / f"{vid}.wav").touch()


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    for cls, size in CLASS_SIZES.items():
        for i in range(size):
            add_video(tmp_path, cls, f"v{i:02d}", frames=5 + i)
    return tmp_path


def run_create_index(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "create_index.py"), *args],
                          capture_output=True, text=True, cwd="/", timeout=60)


def test_scan_keeps_only_complete_videos(tmp_path):
    add_video(tmp_path, "a", "ok", 3)
    add_video(tmp_path, "a", "gap", [1, 2, 4])  # frames counted up to the first missing one
    add_video(tmp_path, "a", "nowav", 3, wav=False)
    add_video(tmp_path, "a", "cut", 3, suffix=".mp4.partial")  # unfinished extraction
    (tmp_path / "audio" / "a" / "cut.wav").touch()
    add_video(tmp_path, "a", "empty", 0)
    add_video(tmp_path, "a", ".hidden", 3)
    add_video(tmp_path, ".trash", "x", 3)
    (tmp_path / "audio" / "a" / ".ok.wav.tmp.wav").touch()  # an atomic write in progress
    add_video(tmp_path, "b", "ok", 1)
    assert scan_root(tmp_path) == [Entry("a", "gap", 2), Entry("a", "ok", 3), Entry("b", "ok", 1)]
    assert scan_root(tmp_path, min_frames=3) == [Entry("a", "ok", 3)]


def test_scan_missing_layout_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="frames"):
        scan_root(tmp_path)


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (0.5, 0.5, 0.0)])
def test_split_is_stratified_and_respects_fractions(sop_root, fractions):
    entries = scan_root(sop_root)
    splits = stratified_split(entries, fractions, seed=3)
    assert sorted(e for items in splits.values() for e in items) == entries  # a partition
    for cls, size in CLASS_SIZES.items():
        counts = [sum(e.cls == cls for e in splits[name]) for name in ("train", "val", "test")]
        assert sum(counts) == size
        for count, fraction in zip(counts, fractions):
            assert (count >= 1) == (fraction > 0)  # every class of >= 3 videos in every used split
            if size == 10:  # large enough that no split needed topping up to one video
                assert abs(count - fraction * size) < 1


def test_split_counts_exact_cases():
    assert split_counts(10, (0.6, 0.2, 0.2)) == [6, 2, 2]
    assert split_counts(3, (0.6, 0.2, 0.2)) == [1, 1, 1]
    assert split_counts(4, (0.8, 0.1, 0.1)) == [2, 1, 1]
    assert split_counts(7, (1.0, 0.0, 0.0)) == [7, 0, 0]
    assert split_counts(2, (0.6, 0.2, 0.2)) == [1, 1, 0]


def test_split_is_deterministic_for_a_seed_and_input_order(sop_root):
    entries = scan_root(sop_root)
    shuffled = [entries[i] for i in np.random.default_rng(7).permutation(len(entries))]
    first = stratified_split(entries, (0.6, 0.2, 0.2), seed=11)
    assert stratified_split(shuffled, (0.6, 0.2, 0.2), seed=11) == first
    assert stratified_split(entries, (0.6, 0.2, 0.2), seed=12) != first


@pytest.mark.parametrize("bad", [(0.5, 0.5, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5), (float("nan"), 0.5, 0.5)])
def test_bad_fractions_rejected(bad):
    with pytest.raises(ValueError, match="summing to 1"):
        check_fractions(bad)


def test_write_index_rows(tmp_path):
    splits = {"train": [Entry("a", "x", 4)], "val": [], "test": [Entry("b", "y.z", 9), Entry("b", "z", 1)]}
    write_index(tmp_path, splits)
    assert (tmp_path / "train.csv").read_text() == "/a/x.wav,/a/x.mp4,4\n"
    assert (tmp_path / "val.csv").read_text() == ""
    assert (tmp_path / "test.csv").read_text() == "/b/y.z.wav,/b/y.z.mp4,9\n/b/z.wav,/b/z.mp4,1\n"


def test_cli_writes_index_and_categories(sop_root):
    proc = run_create_index("--root", str(sop_root), "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    rows = {name: (sop_root / f"{name}.csv").read_text().splitlines() for name in ("train", "val", "test")}
    assert [len(rows[name]) for name in rows] == [10, 4, 4]  # classes of 10, 5, 3: 6+3+1, 2+1+1, 2+1+1
    for line in rows["train"] + rows["val"] + rows["test"]:
        audio, frames, count = line.split(",")
        cls, vid = frames.strip("/").removesuffix(".mp4").split("/")
        assert audio == f"/{cls}/{vid}.wav"
        assert int(count) == 5 + int(vid[1:])  # the fixture's frame count, read from disk
    assert (sop_root / "categories.txt").read_text() == "accordion\ncello\nerhu\n"
    table = proc.stdout.splitlines()
    assert any(line.split() == ["accordion", "6", "2", "2", "10"] for line in table)
    assert any(line.split() == ["total", "10", "4", "4", "18"] for line in table)
    again = run_create_index("--root", str(sop_root), "--seed", "5")
    assert again.returncode == 0
    assert {name: (sop_root / f"{name}.csv").read_text().splitlines() for name in rows} == rows


def test_cli_keeps_existing_categories(sop_root):
    (sop_root / "categories.txt").write_text("erhu\ncello\naccordion\n")
    proc = run_create_index("--root", str(sop_root))
    assert proc.returncode == 0, proc.stderr
    assert (sop_root / "categories.txt").read_text() == "erhu\ncello\naccordion\n"


def test_cli_names_empty_classes_and_refuses_them(sop_root):
    (sop_root / "categories.txt").write_text("erhu\ncello\naccordion\nflute\n")
    proc = run_create_index("--root", str(sop_root))
    assert proc.returncode == 1 and "without a complete video" in proc.stderr and "flute" in proc.stderr
    assert not (sop_root / "train.csv").exists()
    (sop_root / "categories.txt").unlink()
    (sop_root / "audio" / "tuba").mkdir()
    (sop_root / "frames" / "tuba").mkdir()
    proc = run_create_index("--root", str(sop_root))
    assert proc.returncode == 1 and ": tuba;" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_lists_unpaired_ids(sop_root):
    add_video(sop_root, "cello", "mute", 4, wav=False)
    (sop_root / "audio" / "erhu" / "blind.wav").touch()
    proc = run_create_index("--root", str(sop_root))
    assert proc.returncode == 0, proc.stderr
    assert "2 video(s) have frames or audio but not both" in proc.stderr
    assert (sop_root / "unpaired.txt").read_text().splitlines() == [
        "cello/mute: frames without audio", "erhu/blind: audio without frames"]
    assert "mute" not in (sop_root / "train.csv").read_text() + (sop_root / "test.csv").read_text()


@pytest.mark.parametrize("split", [["0.5", "0.5", "0.2"], ["1.2", "-0.1", "-0.1"]])
def test_cli_rejects_bad_split(sop_root, split):
    proc = run_create_index("--root", str(sop_root), "--split", *split)
    assert proc.returncode == 2
    assert "--split" in proc.stderr
    assert not (sop_root / "train.csv").exists()


def test_cli_on_preprocessed_videos(video_tree, tmp_path):
    videos, specs = video_tree
    preprocess_tree(videos, tmp_path, fps=8, audio_rate=11025, workers=1)
    proc = run_create_index("--root", str(tmp_path), "--split", "1", "0", "0")
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "train.csv").read_text().splitlines()
    with_audio = sorted(name for name, spec in specs.items() if spec.audio_rate is not None)
    assert sorted(row.split(",")[1].strip("/").removesuffix(".mp4") for row in rows) == with_audio
    counts = Counter(int(row.split(",")[2]) for row in rows)
    assert counts == Counter({17: 2, 12: 1, 10: 1})  # floor(duration * 8) of fast, slow, pcm, opus


@pytest.mark.parametrize("cls, vid", [("accordion", "solo,take2"), ("brass,wind", "v00"), ("cello", "line\nbreak")])
def test_names_the_unquoted_csv_cannot_hold_are_rejected(sop_root, cls, vid):
    add_video(sop_root, cls, vid, 3)
    with pytest.raises(DataError) as err:
        scan_root(sop_root)
    assert repr(str(sop_root / "frames" / cls / f"{vid}.mp4")) in str(err.value)
    assert "comma or line break" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="comma or line break"):
        Entry(cls, vid, 3)


def test_cli_rejects_a_comma_in_a_video_name(sop_root):
    add_video(sop_root, "cello", "solo,take2", 4)
    proc = run_create_index("--root", str(sop_root))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "solo,take2.mp4" in proc.stderr
    assert not (sop_root / "train.csv").exists()
