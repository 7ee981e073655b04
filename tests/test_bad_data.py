"""Hostile inputs that once loaded silently: each now ends in a DataError naming the file and CSV line,
or is handled as documented (stratified --max_samples, dataset_stats warnings)."""
from __future__ import annotations

import importlib.util
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from dataset.av_dataset import AVDataset
from dataset.index import DataError, IndexRow, stratified_subset
from dataset.stats import imbalance_warning, short_audio_warning
from dataset.wav_header import wav_truncation
from tests.sop_fixture import make_root, write_clip, write_index

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat_a", "cat_b", "cat_c"]
FPS = 8
RATE = 11025
CLIP_FRAMES = 40
CLIP_SAMPLES = CLIP_FRAMES * RATE // FPS  # the fixture's wav length


def make_dataset(root, csv="test.csv", **kwargs):
    defaults = dict(num_frames=1, stride_frames=8, frame_rate=FPS, img_size=32, aud_len=4096, aud_rate=RATE)
    defaults.update(kwargs)
    return AVDataset(str(root / csv), str(root / "audio"), str(root / "frames"), CLASSES, **defaults)


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path, CLASSES, per_class=2, num_frames=CLIP_FRAMES)


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ------------------------------------------------------------------ 1. wav shorter than its header


@pytest.mark.parametrize("container, subtype", [("WAV", "FLOAT"), ("WAV", "PCM_16"), ("WAVEX", "PCM_24"),
                                                ("RF64", "PCM_16")])
def test_wav_truncation_compares_header_with_bytes(tmp_path, container, subtype):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros((1000, 2), np.float32), RATE, format=container, subtype=subtype)
    assert wav_truncation(path) is None
    truncate(path, 0.5)
    message = wav_truncation(path)
    assert message is not None and message.startswith("header says 1000 frames, file holds ")
    held = int(message.split("file holds ")[1].split()[0])
    assert 0 < held < 1000


def test_wav_with_a_chunk_after_its_data_is_complete(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1000, np.float32), RATE, subtype="PCM_16")
    with open(path, "ab") as f:  # a LIST chunk after the data, as some editors write
        f.write(b"LIST" + struct.pack("<I", 5) + b"INFOx\x00")
    assert wav_truncation(path) is None


def test_streamed_wav_of_unknown_size_is_left_to_libsndfile(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1000, np.float32), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data[:-100]))
    assert wav_truncation(path) is None


def test_truncated_wav_raises_naming_wav_and_line(root):
    wav = root / "audio" / "cat_b" / "v0.wav"
    truncate(wav, 0.3)
    ds = make_dataset(root)
    with pytest.raises(DataError) as err:
        ds[2]
    message = str(err.value)
    assert message.startswith(f"{root / 'test.csv'} line 3: audio {wav}: header says {CLIP_SAMPLES} frames")
    assert "truncated" in message
    ds[3]  # the other rows still load


def test_truncated_wav_is_dropped_by_skip_bad(root, capsys):
    truncate(root / "audio" / "cat_b" / "v0.wav", 0.3)
    ds = make_dataset(root, skip_bad=True)
    assert [r.info for r in ds.rows] == ["cat_a/v0", "cat_a/v1", "cat_b/v1", "cat_c/v0", "cat_c/v1"]
    out = capsys.readouterr().out
    assert "dropped 1 of 6 rows" in out
    assert f"line 3: audio {root / 'audio' / 'cat_b' / 'v0.wav'}: header says {CLIP_SAMPLES} frames" in out


# ------------------------------------------------------------------ 2. frame count above the disk


def test_frame_count_a_little_above_disk_raises_at_first_use(tmp_path):
    row = write_clip(tmp_path, "cat_a", "v0", num_frames=16).replace(",16", ",20")
    write_index(tmp_path, "test.csv", [row])
    for train in (False, True):
        ds = make_dataset(tmp_path, train=train)
        with pytest.raises(DataError) as err:
            ds[0]
        missing = tmp_path / "frames" / "cat_a" / "v0.mp4" / "000020.jpg"
        assert str(err.value) == (f"{tmp_path / 'test.csv'} line 1: frame {missing}: file not found "
                                  "(the index says 20 frames)")


def test_frame_count_a_little_above_disk_is_dropped_by_skip_bad(tmp_path, capsys):
    good = write_clip(tmp_path, "cat_b", "ok", num_frames=16)
    bad = write_clip(tmp_path, "cat_a", "v0", num_frames=16).replace(",16", ",20")
    write_index(tmp_path, "test.csv", [bad, good])
    ds = make_dataset(tmp_path, skip_bad=True)
    assert [r.info for r in ds.rows] == ["cat_b/ok"]
    assert "line 1: frames" in capsys.readouterr().out


# ------------------------------------------------------------------ 3. errors from loader workers


def test_worker_data_error_reaches_the_user_as_its_one_line_message(root):
    (root / "audio" / "cat_b" / "v1.wav").unlink()
    ds = make_dataset(root)
    with pytest.raises(DataError) as in_process:
        ds[3]
    expected = str(in_process.value)
    assert expected.startswith(f"{root / 'test.csv'} line 4: audio ")
    loader = DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as from_worker:
        for _ in loader:
            pass
    assert str(from_worker.value) == expected


def test_data_error_keeps_messages_that_do_not_come_from_a_worker():
    assert str(DataError("a.csv line 2: frame x.jpg: file not found")) == "a.csv line 2: frame x.jpg: file not found"
    own = "Caught DataError in my own words\nsecond line"
    assert str(DataError(own)) == own


# ------------------------------------------------------------------ 5. --max_samples is stratified


def index_rows(sizes: dict[str, int]) -> list[IndexRow]:
    """Rows of a class-sorted index, ``sizes[class]`` videos per class."""
    rows = []
    for cls, size in sizes.items():
        for i in range(size):
            rows.append(IndexRow(f"/{cls}/v{i}.wav", f"/{cls}/v{i}.mp4", 40, cls, f"v{i}", CLASSES.index(cls),
                                 "x.csv", len(rows) + 1))
    return rows


def test_stratified_subset_spreads_over_classes_in_csv_order():
    rows = index_rows({"cat_a": 5, "cat_b": 3, "cat_c": 1})
    subset = stratified_subset(rows, 6)
    assert [r.info for r in subset] == ["cat_a/v0", "cat_a/v1", "cat_a/v2", "cat_b/v0", "cat_b/v1", "cat_c/v0"]
    assert Counter(r.cls for r in stratified_subset(rows, 2)) == {"cat_a": 1, "cat_b": 1}
    assert stratified_subset(rows, 9) == rows and stratified_subset(rows, 50) == rows


def test_max_samples_keeps_every_class(root):
    ds = make_dataset(root, max_samples=3)
    assert [r.info for r in ds.rows] == ["cat_a/v0", "cat_b/v0", "cat_c/v0"]
    assert [r.info for r in make_dataset(root, max_samples=3).rows] == [r.info for r in ds.rows]


# ------------------------------------------------------------------ 6. dataset_stats warnings


def test_imbalance_warning():
    warning = imbalance_warning("train", [6, 2, 3], CLASSES)
    assert warning is not None and "cat_a has 6 samples, cat_b 2 (3.0x)" in warning
    assert imbalance_warning("train", [4, 2, 3], CLASSES) is None
    assert imbalance_warning("val", [3, 0, 1], CLASSES) == "val: no samples of 1 of 3 classes: cat_b"


def test_short_audio_warning():
    rows = index_rows({"cat_a": 3})
    warning = short_audio_warning(rows, [6.0, 5.0, 0.5], 65535, RATE)
    assert warning is not None and warning.startswith("2 of 3 clips have less audio than the 5.94 s window")
    assert "x.csv line 2 cat_a/v1 (5.00 s)" in warning and "cat_a/v0" not in warning
    assert short_audio_warning(rows, [6.0, 6.0, 6.0], 65535, RATE) is None


def run_stats(root: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """scripts/dataset_stats.py's main, in this process (a subprocess would spend seconds importing torch)."""
    spec = importlib.util.spec_from_file_location("dataset_stats", REPO / "scripts" / "dataset_stats.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["dataset_stats.py", "--dataset", "synthetic", "--data_root", str(root),
                                      "--imgSize", "32", *args])
    script.main()


def test_dataset_stats_warns_and_reports_bad_wavs(root, monkeypatch, capsys):
    rows = (root / "train.csv").read_text().splitlines()
    rows += [write_clip(root, "cat_a", f"extra{i}", CLIP_FRAMES) for i in range(3)]
    write_index(root, "train.csv", rows)
    run_stats(root, monkeypatch)
    out, err = capsys.readouterr()
    assert "warning: train: classes are imbalanced: cat_a has 5 samples" in err
    assert "warning: 21 of 21 clips have less audio than the 5.94 s window" in err
    assert "one train batch" in out
    (root / "audio" / "cat_c" / "v1.wav").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_stats(root, monkeypatch, "--audLen", "4096")
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {root / 'train.csv'} line 6: audio ") and "\n" not in message
