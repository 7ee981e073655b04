from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from dataset import preprocess
from dataset.layout import count_frames_on_disk, frame_name
from dataset.preprocess import FAILURES_FILE, extract_video, find_videos, output_paths, preprocess_tree
from tests.helpers_video import SINE_AMPLITUDE, SINE_FREQS, VideoSpec, frame_index_from_image

REPO = Path(__file__).resolve().parents[1]
FPS = 8
AUDIO_RATE = 11025


def expected_num_frames(spec: VideoSpec) -> int:
    return math.floor(Fraction(spec.num_source_frames, spec.fps) * FPS)


def expected_source_index(k: int, spec: VideoSpec) -> int:
    """Index of the last source picture at or before (k - 0.5) / FPS."""
    return min(math.floor(Fraction(2 * k - 1, 2 * FPS) * spec.fps), spec.num_source_frames - 1)


def extracted_indices(frame_dir: Path) -> list[int]:
    count = count_frames_on_disk(frame_dir)
    return [frame_index_from_image(np.asarray(Image.open(frame_dir / frame_name(k)))) for k in range(1, count + 1)]


def sine_amplitude(wave: np.ndarray, rate: int, freq: float) -> float:
    """Least-squares amplitude of a ``freq`` Hz sine in ``wave`` (edges trimmed: codec ramps)."""
    wave = wave[rate // 10 : -rate // 10]
    t = np.arange(len(wave)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, wave, rcond=None)[0]
    return float(np.hypot(*coef))


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, cwd="/", timeout=120)


@pytest.fixture(scope="module")
def processed(video_tree, tmp_path_factory):
    """The session video tree preprocessed once (serially) into a fresh root."""
    videos, specs = video_tree
    out = tmp_path_factory.mktemp("sop")
    results = {r.name: r for r in preprocess_tree(videos, out, FPS, AUDIO_RATE, workers=1)}
    return out, specs, results


def test_find_videos_lists_only_videos(video_tree):
    videos, specs = video_tree
    found = find_videos(videos)
    assert [(cls, vid) for cls, vid, _ in found] == sorted(tuple(name.split("/")) for name in specs)
    assert all(path.is_file() for _, _, path in found)


def test_find_videos_missing_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_videos(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["music/fast", "music/slow", "speech/pcm", "speech/opus", "speech/silent"])
def test_frames_follow_the_time_rule(processed, name):
    out, specs, results = processed
    spec = specs[name]
    frame_dir, _ = output_paths(out, spec.cls, spec.vid)
    n = expected_num_frames(spec)
    assert results[name].num_frames == n
    assert count_frames_on_disk(frame_dir) == n
    assert sorted(os.listdir(frame_dir)) == [frame_name(k) for k in range(1, n + 1)]
    assert extracted_indices(frame_dir) == [expected_source_index(k, spec) for k in range(1, n + 1)]
    assert Image.open(frame_dir / frame_name(1)).size == spec.size


def test_slow_source_repeats_frames(processed):
    out, specs, _ = processed
    indices = extracted_indices(output_paths(out, "music", "slow")[0])
    assert len(indices) > specs["music/slow"].num_source_frames
    assert len(set(indices)) == specs["music/slow"].num_source_frames


@pytest.mark.parametrize("name", ["music/fast", "music/slow", "speech/pcm", "speech/opus"])
def test_audio_is_mono_pcm16_at_the_audio_rate(processed, name):
    out, specs, results = processed
    spec = specs[name]
    wav = output_paths(out, spec.cls, spec.vid)[1]
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (AUDIO_RATE, 1, "PCM_16")
    assert results[name].status == "done"
    # AAC adds up to one 1024-sample frame of padding at the source rate
    assert abs(info.duration - spec.seconds) < 0.05
    assert results[name].audio_seconds == pytest.approx(info.duration)
    wave, _ = sf.read(str(wav))
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak = np.fft.rfftfreq(len(wave), 1 / AUDIO_RATE)[np.argmax(spectrum)]
    expected = SINE_FREQS[: spec.channels]  # a downmixed stereo peak may be either channel's sine
    assert any(peak == pytest.approx(freq, abs=5) for freq in expected)


def test_stereo_is_downmixed_to_the_channel_mean(processed):
    out, _, _ = processed
    lossless, _ = sf.read(str(output_paths(out, "speech", "pcm")[1]))  # PCM source: exact levels
    for freq in SINE_FREQS:
        assert sine_amplitude(lossless, AUDIO_RATE, freq) == pytest.approx(SINE_AMPLITUDE / 2, rel=0.05)
    aac, _ = sf.read(str(output_paths(out, "music", "slow")[1]))
    amplitudes = [sine_amplitude(aac, AUDIO_RATE, freq) for freq in SINE_FREQS]
    assert amplitudes == pytest.approx([SINE_AMPLITUDE / 2] * 2, rel=0.15)


def test_mono_source_keeps_its_level(processed):
    out, _, _ = processed
    wave, _ = sf.read(str(output_paths(out, "music", "fast")[1]))
    assert sine_amplitude(wave, AUDIO_RATE, SINE_FREQS[0]) == pytest.approx(SINE_AMPLITUDE, rel=0.1)
    assert sine_amplitude(wave, AUDIO_RATE, SINE_FREQS[1]) < 0.01


def test_video_without_audio_is_reported_and_keeps_frames(processed):
    out, specs, results = processed
    result = results["speech/silent"]
    frame_dir, wav = output_paths(out, "speech", "silent")
    assert (result.status, result.message) == ("no_audio", "no audio track")
    assert frame_dir.is_dir() and not wav.exists()
    assert (out / FAILURES_FILE).read_text() == "speech/silent\tno_audio\tno audio track\n"
    assert {r.status for name, r in results.items() if name != "speech/silent"} == {"done"}
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*"))


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_rerun_skips_finished_videos(processed, video_tree, tmp_path):
    out = tmp_path / "sop"
    shutil.copytree(processed[0], out)
    before = snapshot(out)
    results = {r.name: r for r in preprocess_tree(video_tree[0], out, FPS, AUDIO_RATE, workers=1)}
    assert {name: r.status for name, r in results.items()} == {
        name: "no_audio" if name == "speech/silent" else "skipped" for name in video_tree[1]
    }
    assert results["music/fast"].num_frames == processed[2]["music/fast"].num_frames
    after = snapshot(out)
    del before[FAILURES_FILE], after[FAILURES_FILE]
    assert after == before


def test_leftover_partial_and_missing_wav_are_redone(processed, video_tree, tmp_path):
    videos, specs = video_tree
    out = tmp_path / "sop"
    shutil.copytree(processed[0], out)
    # fast: killed mid-extraction (stale partial folder, no final folder); slow: wav lost
    fast_dir, _ = output_paths(out, "music", "fast")
    shutil.rmtree(fast_dir)
    partial = fast_dir.with_name(fast_dir.name + ".partial")
    partial.mkdir()
    for k in (1, 2, 99):
        (partial / frame_name(k)).write_bytes(b"stale")
    slow_dir, slow_wav = output_paths(out, "music", "slow")
    slow_wav.unlink()
    slow_frames_mtime = (slow_dir / frame_name(1)).stat().st_mtime_ns

    results = {r.name: r for r in preprocess_tree(videos, out, FPS, AUDIO_RATE, workers=2)}
    assert results["music/fast"].status == "done" and results["music/slow"].status == "done"
    assert results["speech/pcm"].status == "skipped"
    assert not partial.exists()
    n = expected_num_frames(specs["music/fast"])
    assert extracted_indices(fast_dir) == [expected_source_index(k, specs["music/fast"]) for k in range(1, n + 1)]
    assert sf.info(str(slow_wav)).samplerate == AUDIO_RATE
    assert (slow_dir / frame_name(1)).stat().st_mtime_ns == slow_frames_mtime  # frames were kept
    assert results["music/slow"].num_frames == expected_num_frames(specs["music/slow"])


def test_interrupted_extraction_leaves_no_finished_folder(video_tree, tmp_path, monkeypatch):
    videos, specs = video_tree
    spec = specs["music/fast"]
    real_add = preprocess._FrameWriter.add

    def add_then_die(self, time, picture):
        if self.written >= 3:
            raise KeyboardInterrupt  # like Ctrl-C / a kill: not caught as a per-video failure
        real_add(self, time, picture)

    monkeypatch.setattr(preprocess._FrameWriter, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_video(spec.path(videos), tmp_path, spec.cls, spec.vid, FPS, AUDIO_RATE)
    frame_dir, wav = output_paths(tmp_path, spec.cls, spec.vid)
    assert not frame_dir.exists() and not wav.exists()
    assert count_frames_on_disk(frame_dir.with_name(frame_dir.name + ".partial")) == 3

    monkeypatch.setattr(preprocess._FrameWriter, "add", real_add)
    result = extract_video(spec.path(videos), tmp_path, spec.cls, spec.vid, FPS, AUDIO_RATE)
    assert result.status == "done" and result.num_frames == expected_num_frames(spec)
    assert not frame_dir.with_name(frame_dir.name + ".partial").exists()


def test_decode_error_cleans_up_and_reports(video_tree, tmp_path, monkeypatch):
    videos, specs = video_tree
    spec = specs["music/fast"]

    def broken(self, time, picture):
        raise ValueError("decoder exploded")

    monkeypatch.setattr(preprocess._FrameWriter, "add", broken)
    result = extract_video(spec.path(videos), tmp_path, spec.cls, spec.vid, FPS, AUDIO_RATE)
    assert (result.status, result.message) == ("failed", "ValueError: decoder exploded")
    assert not (tmp_path / "frames" / "music").exists() or not any((tmp_path / "frames" / "music").iterdir())
    assert not output_paths(tmp_path, spec.cls, spec.vid)[1].exists()


def test_video_shorter_than_one_frame_fails(tmp_path):
    spec = VideoSpec("c", "blink", ".mp4", seconds=0.08, fps=25, size=(32, 32), audio_rate=None)
    result = extract_video(spec.write(tmp_path / "videos"), tmp_path / "out", "c", "blink", FPS, AUDIO_RATE)
    assert result.status == "failed" and "less than one frame" in result.message
    assert not (tmp_path / "out" / "frames" / "c" / "blink.mp4").exists()


def test_cli_reports_corrupt_video_and_finishes_the_rest(video_tree, tmp_path):
    videos, specs = video_tree
    tree = tmp_path / "videos"
    for name in ("music/fast", "speech/opus"):
        dest = specs[name].path(tree)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(specs[name].path(videos), dest)
    (tree / "music" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "sop"

    proc = run_cli("preprocess.py", "--videos", str(tree), "--out", str(out), "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    assert "music/broken" in proc.stdout and "InvalidDataError" in proc.stdout
    assert "processed: 2" in proc.stdout and "failed: 1" in proc.stdout
    for name in ("music/fast", "speech/opus"):
        frame_dir, wav = output_paths(out, specs[name].cls, specs[name].vid)
        assert count_frames_on_disk(frame_dir) == expected_num_frames(specs[name]) and wav.is_file()
    assert not output_paths(out, "music", "broken")[0].exists()
    failures = (out / FAILURES_FILE).read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith("music/broken\tfailed\t")

    (tree / "music" / "broken.mp4").unlink()
    proc = run_cli("preprocess.py", "--videos", str(tree), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "processed: 0, skipped (already done): 2, failed: 0" in proc.stdout
    assert (out / FAILURES_FILE).read_text() == ""


def test_cli_missing_videos_dir_is_a_clear_error(tmp_path):
    proc = run_cli("preprocess.py", "--videos", str(tmp_path / "absent"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "--videos" in proc.stderr and str(tmp_path / "absent") in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("size", "frame_size", "stored"), [
    ((64, 48), 24, (32, 24)),  # landscape: the height becomes S
    ((32, 48), 16, (16, 24)),  # portrait: the width becomes S
    ((64, 48), 96, (128, 96)),  # S above the video's size: upscaled to S as asked
    ((64, 48), 48, (64, 48)),  # already S: stored as decoded
])
def test_frame_size_sets_the_shorter_side_and_keeps_the_aspect(tmp_path, size, frame_size, stored):
    spec = VideoSpec("c", "clip", ".mp4", seconds=0.5, fps=16, size=size, audio_rate=None)
    result = extract_video(spec.write(tmp_path / "videos"), tmp_path / "out", "c", "clip", FPS, AUDIO_RATE,
                           frame_size=frame_size)
    frame_dir, _ = output_paths(tmp_path / "out", "c", "clip")
    assert result.status == "no_audio" and result.num_frames == expected_num_frames(spec)
    assert {Image.open(frame_dir / frame_name(k)).size for k in range(1, result.num_frames + 1)} == {stored}
    assert extracted_indices(frame_dir) == [expected_source_index(k, spec) for k in range(1, result.num_frames + 1)]


def test_cli_frame_size_reaches_the_frames_and_is_validated(video_tree, tmp_path):
    videos, specs = video_tree
    spec = specs["music/fast"]
    tree = tmp_path / "videos"
    spec.path(tree).parent.mkdir(parents=True)
    shutil.copy(spec.path(videos), spec.path(tree))
    proc = run_cli("preprocess.py", "--videos", str(tree), "--out", str(tmp_path / "sop"), "--frame_size", "24",
                   "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(output_paths(tmp_path / "sop", "music", "fast")[0] / frame_name(1)).size == (32, 24)
    proc = run_cli("preprocess.py", "--videos", str(tree), "--out", str(tmp_path / "o"), "--frame_size", "0")
    assert proc.returncode == 2 and "--frame_size must be a positive number of pixels, got 0" in proc.stderr
