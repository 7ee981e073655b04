"""The SoP-layout loader: shapes, alignment of audio and frames, audio handling, transforms, bad data."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from dataset.av_dataset import AVDataset
from dataset.index import DataError, read_index
from dataset.layout import frame_time
from dataset.media import load_audio_window
from tests.sop_fixture import GRAY_STEP, RAMP_SLOPE, RAMP_START, make_root, ramp_time, write_clip, write_index

CLASSES = ["cat_a", "cat_b", "cat_c"]
FPS = 8
RATE = 11025


def make_dataset(root, csv="train.csv", **kwargs):
    defaults = dict(num_frames=1, stride_frames=8, frame_rate=FPS, img_size=32, aud_len=4096, aud_rate=RATE)
    defaults.update(kwargs)
    return AVDataset(str(root / csv), str(root / "audio"), str(root / "frames"), CLASSES, **defaults)


def picked_frames(frames: torch.Tensor) -> list[int]:
    """The frame numbers k of a [3, T, H, W] sample of the gray fixture."""
    return [round(float(frames[:, t].double().mean()) / GRAY_STEP) for t in range(frames.shape[1])]


def window_center_time(audio: torch.Tensor) -> float:
    """Centre time of a (possibly volume-scaled) ramp window: fit a line, undo the unknown scale."""
    wave = audio[0].double().numpy()
    offsets = np.arange(len(wave)) - len(wave) // 2
    slope, intercept = np.polyfit(offsets, wave, 1)
    return intercept / (slope * RATE) - RAMP_START / RAMP_SLOPE


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path, CLASSES, per_class=2, num_frames=40)


def test_eval_item_shapes_ranges_and_labels(root):
    ds = make_dataset(root, num_frames=3, stride_frames=2)
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["frames"].shape == (3, 3, 32, 32) and item["frames"].dtype == torch.uint8
        assert item["audio"].shape == (1, 4096)
        assert -1.0 <= item["audio"].min() and item["audio"].max() <= 1.0
        cls = item["info"].split("/")[0]
        assert item["label"].item() == CLASSES.index(cls)
        assert item["index"].item() == i


def test_eval_picks_middle_frames_and_centres_audio_on_them(root):
    ds = make_dataset(root, num_frames=3, stride_frames=2)
    item = ds[0]
    assert picked_frames(item["frames"]) == [18, 20, 22]  # middle of 40 frames, stride 2
    center_time = window_center_time(item["audio"])
    assert center_time == pytest.approx(frame_time(20, FPS), abs=1.5 / RATE)
    mid = item["audio"][0, 4096 // 2].item()
    assert ramp_time(np.array(mid)) == pytest.approx(frame_time(20, FPS), abs=1e-3)


def test_train_centres_are_random_inside_the_margins_and_audio_follows(root):
    ds = make_dataset(root, train=True, num_frames=3, stride_frames=2, aud_len=2 * RATE)
    audio_margin = 8  # ceil(2 s / 2 * 8 fps)
    centers = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            ks = picked_frames(item["frames"])
            assert ks[1] - ks[0] == 2 and ks[2] - ks[1] == 2
            center = ks[1]
            assert 1 + audio_margin <= center <= 40 - audio_margin
            assert window_center_time(item["audio"]) == pytest.approx(frame_time(center, FPS), abs=2e-3)
            centers.append(center)
    assert len(set(centers)) > 5


def test_train_randomness_is_reproducible_and_independent_of_workers(root):
    ds = make_dataset(root, train=True, seed=7)
    ds.set_epoch(3)
    first = [ds[i]["audio"] for i in range(len(ds))]
    again = [ds[i]["audio"] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ds.set_epoch(4)
    other_epoch = [ds[i]["audio"] for i in range(len(ds))]
    assert not all(torch.equal(a, b) for a, b in zip(first, other_epoch))
    ds.set_epoch(3)
    serial = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    parallel = next(iter(DataLoader(ds, batch_size=6, num_workers=2)))
    assert torch.equal(serial["frames"], parallel["frames"])
    assert torch.equal(serial["audio"], parallel["audio"])


def test_train_volume_and_crop_flip_shared_by_all_frames(tmp_path):
    rng = np.random.default_rng(0)
    frame_dir = tmp_path / "frames" / "cat_a" / "v0.mp4"
    frame_dir.mkdir(parents=True)
    from PIL import Image
    picture = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for k in range(1, 11):
        Image.fromarray(picture).save(frame_dir / f"{k:06d}.png")
        (frame_dir / f"{k:06d}.png").rename(frame_dir / f"{k:06d}.jpg")  # PIL decodes by content
    (tmp_path / "audio" / "cat_a").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "cat_a" / "v0.wav", np.full(RATE, 0.5, np.float32), RATE, subtype="FLOAT")
    write_index(tmp_path, "train.csv", ["/cat_a/v0.wav,/cat_a/v0.mp4,10"])
    ds = make_dataset(tmp_path, train=True, num_frames=3, stride_frames=3, img_size=40)
    volumes, crops = set(), set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        f = item["frames"]
        assert torch.equal(f[:, 0], f[:, 1]) and torch.equal(f[:, 1], f[:, 2])
        crops.add(f[:, 0].sum().item())
        volume = item["audio"][0, 0].item() / 0.5
        assert 0.5 <= volume <= 1.5
        assert torch.allclose(item["audio"], torch.full_like(item["audio"], item["audio"][0, 0].item()))
        volumes.add(round(volume, 6))
    assert len(volumes) == 12 and len(crops) > 6


def test_short_audio_is_tiled(tmp_path):
    row = write_clip(tmp_path, "cat_a", "short", num_frames=8, audio_seconds=0.25)  # 2756 samples < 4096
    write_index(tmp_path, "test.csv", [row])
    wave = make_dataset(tmp_path, csv="test.csv")[0]["audio"][0].numpy()
    period = int(round(0.25 * RATE))
    np.testing.assert_allclose(wave[:4096 - period], wave[period:], atol=1e-6)
    mid = wave[4096 // 2]  # the centre frame's time, wrapped around the 0.25 s clip
    assert ramp_time(np.array(mid)) == pytest.approx(frame_time(4, FPS) % 0.25, abs=1e-3)


def test_stereo_is_downmixed(tmp_path):
    write_index(tmp_path, "test.csv", [write_clip(tmp_path, "cat_b", "st", num_frames=40, channels=2)])
    wave = make_dataset(tmp_path, csv="test.csv")[0]["audio"][0].numpy()
    t = frame_time(20, FPS) + (np.arange(4096) - 2048) / RATE
    np.testing.assert_allclose(wave, RAMP_START + RAMP_SLOPE * t, atol=1e-5)


def test_other_sample_rates_are_resampled_in_time_and_frequency(tmp_path):
    src_rate = 22050
    t = np.arange(5 * src_rate) / src_rate
    (tmp_path / "audio" / "cat_a").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "cat_a" / "sine.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
             src_rate, subtype="FLOAT")
    write_clip(tmp_path, "cat_a", "sine_frames", num_frames=40)
    (tmp_path / "frames" / "cat_a" / "sine_frames.mp4").rename(tmp_path / "frames" / "cat_a" / "sine.mp4")
    write_index(tmp_path, "test.csv", ["/cat_a/sine.wav,/cat_a/sine.mp4,40"])
    wave = make_dataset(tmp_path, csv="test.csv", aud_len=8192)[0]["audio"][0].numpy()
    expected = 0.5 * np.sin(2 * np.pi * 440 * (frame_time(20, FPS) + (np.arange(8192) - 4096) / RATE))
    np.testing.assert_allclose(wave[100:-100], expected[100:-100], atol=0.02)


@pytest.mark.parametrize("content, message", [
    ("/cat_a/v0.wav,/cat_a/v0.mp4", "expected 3 fields"),
    ("/cat_a/v0.wav,/cat_a/v0.mp4,forty", "not an integer"),
    ("/dog/v0.wav,/dog/v0.mp4,40", "class 'dog' is not in --categories"),
    ("/cat_a/v0.wav,/cat_b/v0.mp4,40", "differs from frame class"),
    ("cat_a.wav,/cat_a/v0.mp4,40", "expected '/<class>/<file>'"),
])
def test_malformed_rows_name_file_and_line(root, content, message):
    path = write_index(root, "bad.csv", ["/cat_a/v0.wav,/cat_a/v0.mp4,40", "", content])
    with pytest.raises(DataError) as err:
        read_index(path, CLASSES)
    assert str(path) in str(err.value) and "line 3" in str(err.value) and message in str(err.value)


def test_clip_too_short_for_the_frame_window_is_rejected(root):
    path = write_index(root, "short.csv", ["/cat_a/v0.wav,/cat_a/v0.mp4,4"])
    with pytest.raises(DataError, match="line 1: 4 frames, but the clip needs at least 17"):
        make_dataset(root, csv="short.csv", num_frames=3, stride_frames=8)
    assert path.exists()


def test_missing_frame_raises_with_file_and_line(root):
    (root / "frames" / "cat_b" / "v1.mp4" / "000020.jpg").unlink()
    ds = make_dataset(root, csv="test.csv")
    with pytest.raises(DataError) as err:
        ds[3]
    assert "test.csv line 4" in str(err.value) and "000020.jpg" in str(err.value)


def test_frame_count_past_disk_raises_at_load(root):
    write_index(root, "test.csv", ["/cat_a/v0.wav,/cat_a/v0.mp4,100"])
    with pytest.raises(DataError, match=r"000050\.jpg: file not found \(the index says 100 frames\)"):
        make_dataset(root, csv="test.csv")[0]


def test_corrupt_frame_and_wav_raise(root):
    frame = root / "frames" / "cat_a" / "v0.mp4" / "000020.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    wav = root / "audio" / "cat_c" / "v0.wav"
    wav.write_bytes(b"RIFF not really a wav file")
    ds = make_dataset(root, csv="test.csv")
    with pytest.raises(DataError, match=r"test.csv line 1: frame .*000020.jpg: cannot decode"):
        ds[0]
    with pytest.raises(DataError, match=r"test.csv line 5: audio .*v0.wav: cannot open"):
        ds[4]
    (root / "audio" / "cat_c" / "v1.wav").unlink()
    with pytest.raises(DataError, match=r"test.csv line 6: audio .*v1.wav"):
        ds[5]


def test_no_sample_is_replaced_by_zeros_in_a_loader(root):
    (root / "audio" / "cat_b" / "v0.wav").unlink()
    loader = DataLoader(make_dataset(root, csv="test.csv"), batch_size=2, num_workers=1)
    with pytest.raises(DataError, match="line 3"):
        for _ in loader:
            pass


def test_skip_bad_drops_and_lists_bad_rows(root, capsys):
    frame = root / "frames" / "cat_a" / "v1.mp4" / "000007.jpg"
    frame.write_bytes(frame.read_bytes()[:-50])
    (root / "audio" / "cat_c" / "v0.wav").unlink()
    rows = (root / "test.csv").read_text().splitlines()
    rows[2] = rows[2].replace(",40", ",45")  # cat_b/v0 claims more frames than on disk
    write_index(root, "test.csv", rows)
    ds = make_dataset(root, csv="test.csv", skip_bad=True)
    assert [r.info for r in ds.rows] == ["cat_a/v0", "cat_b/v1", "cat_c/v1"]
    out = capsys.readouterr().out
    assert "dropped 3 of 6 rows" in out
    assert "line 2: frame" in out and "000007.jpg: not a complete JPEG" in out
    assert "line 3: frames" in out and "45 frames, 40 on disk" in out
    assert "line 5: audio" in out
    assert all(ds[i]["frames"].shape[0] == 3 for i in range(len(ds)))


def test_skip_bad_keeps_a_clean_index_whole(root, capsys):
    ds = make_dataset(root, csv="test.csv", skip_bad=True)
    assert len(ds) == 6 and "dropped" not in capsys.readouterr().out


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_the_audio_window_equals_the_same_samples_of_the_whole_file(tmp_path, channels, subtype):
    """Only the window is read (one open, a seek); it holds exactly the samples of a whole-file read, also when
    it wraps around either end of the clip."""
    path = tmp_path / "a.wav"
    wave = np.random.default_rng(channels).uniform(-0.9, 0.9, (3 * RATE, channels)).astype(np.float32)
    sf.write(path, wave, RATE, subtype=subtype)
    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    for center_time in (1.5, 0.05, 2.97):  # inside, past the start, past the end
        start = round(center_time * RATE) - 4096 // 2
        expected = whole[np.arange(start, start + 4096) % len(whole)].mean(axis=1)
        window = load_audio_window(str(path), center_time, 4096, RATE)
        assert window.dtype == np.float32 and np.array_equal(window, expected)
