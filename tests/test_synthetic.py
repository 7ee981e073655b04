"""The embedded synthetic dataset: determinism, file format, metadata, content and the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import av
import numpy as np
import pytest

from dataset.generators import synthetic as syn

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_classes=3, per_class=4, seed=0, size=64, duration=2.0, fps=16, audio_rate=22050,
             p_distractor=0.5, p_occlusion=0.5, p_noise_burst=0.5, p_audio_distractor=0.5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio, rate


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "parallel"
    boxes = syn.generate(out, workers=2, progress=False, **SMALL)
    return out, boxes


def _spec(config: syn.SynthConfig, class_index: int, video_index: int) -> tuple[syn.VideoSpec, tuple]:
    spec_rng, video_rng, audio_rng = syn.clip_rngs(config.seed, class_index, video_index)
    return syn.make_spec(config, class_index, video_index, spec_rng), (video_rng, audio_rng)


def test_serial_run_writes_the_same_bytes_as_a_parallel_one(small_set, tmp_path):
    out, boxes = small_set
    again = syn.generate(tmp_path / "serial", workers=1, progress=False, **SMALL)
    assert again == boxes
    first, second = _files(out), _files(tmp_path / "serial")
    assert len(first) == 3 * 4 + 2
    assert first == second


def test_different_seeds_give_different_clips():
    specs, frames, audio = [], [], []
    for seed in (0, 1):
        config = syn.SynthConfig(seed=seed, size=64, duration=1.0)
        spec, (video_rng, audio_rng) = _spec(config, 0, 0)
        specs.append(spec.target.box)
        frames.append(syn.render_video(spec, video_rng))
        audio.append(syn.render_audio(spec, audio_rng))
    assert specs[0] != specs[1]
    assert not np.array_equal(frames[0], frames[1])
    assert not np.array_equal(audio[0], audio[1])


def test_videos_decode_with_the_requested_format(small_set):
    out, boxes = small_set
    for key in boxes["videos"]:
        frames, audio, rate = _decode(out / "videos" / f"{key}.mp4")
        assert frames.shape == (round(SMALL["duration"] * SMALL["fps"]), SMALL["size"], SMALL["size"], 3)
        assert rate == SMALL["audio_rate"]
        assert audio.shape[0] == 1
        # AAC pads the last frame: at most one frame (1024 samples) more than asked for
        assert 0 <= audio.shape[1] - SMALL["duration"] * SMALL["audio_rate"] <= 1024
        assert np.abs(audio).max() <= 1.0
        assert np.abs(audio).max() > 0.5


def test_metadata_lists_every_video_with_its_label(small_set):
    out, boxes = small_set
    names = (out / "categories.txt").read_text().splitlines()
    assert names == boxes["classes"] == syn.class_names(SMALL["num_classes"])
    assert json.loads((out / "boxes.json").read_text()) == boxes
    assert boxes["size"] == [SMALL["size"], SMALL["size"]]
    assert (boxes["fps"], boxes["audio_rate"], boxes["duration"]) == (16, 22050, 2.0)
    assert len(boxes["videos"]) == SMALL["num_classes"] * SMALL["per_class"]
    videos_on_disk = {str(p.relative_to(out / "videos"))[:-4] for p in (out / "videos").rglob("*.mp4")}
    assert videos_on_disk == set(boxes["videos"])
    for key, meta in boxes["videos"].items():
        cls, vid = key.split("/")
        assert names[meta["label"]] == cls
        assert re.fullmatch(r"vid\d{4}", vid)
        if meta["distractor"] is not None:
            assert meta["distractor"]["class"] in names and meta["distractor"]["class"] != cls
        assert meta["audio_distractor"] in [None, *names] and meta["audio_distractor"] != cls
    flags = [(m["distractor"] is not None, m["occluded"], m["noise_burst"], m["audio_distractor"] is not None)
             for m in boxes["videos"].values()]
    assert all(any(column) and not all(column) for column in zip(*flags)), "p=0.5 should mix both cases"


def _close_to(picture: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.linalg.norm(picture.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1) < 60


def test_box_holds_the_class_colour_in_the_decoded_video(small_set):
    out, boxes = small_set
    config = syn.SynthConfig(**SMALL)
    size = SMALL["size"]
    checked = {"clear": 0, "occluded": 0}
    for key, meta in boxes["videos"].items():
        frames = _decode(out / "videos" / f"{key}.mp4")[0]
        picture = frames[len(frames) // 2]
        style = syn.CLASS_STYLES[meta["label"]]
        spec, _ = _spec(config, meta["label"], int(key.split("/vid")[1]))
        assert list(spec.target.box) == meta["box"]
        x0, y0, x1, y1 = meta["box"]
        # the pixels the drawing paints in the class's main colour all lie in the box
        x, y, side = spec.target.square
        alpha, colour = syn.object_layers(style, side)
        painted = np.zeros((size, size), bool)
        painted[y:y + side, x:x + side] = (alpha > 0.9) & _close_to(colour, style.rgb)
        assert painted.any() and not painted[:y0].any() and not painted[y1:].any()
        assert not painted[:, :x0].any() and not painted[:, x1:].any()
        mean = picture[painted].mean(axis=0)
        distances = {name: np.linalg.norm(mean - np.asarray(rgb)) for name, rgb in syn.COLOURS.items()}
        if meta["occluded"]:  # over half the object is hidden under a muted patch
            assert distances[style.colour] > 55
            checked["occluded"] += 1
        else:  # h264 with 4:2:0 chroma blurs small textures a little
            assert distances[style.colour] < 50 and min(distances, key=distances.get) == style.colour
            checked["clear"] += 1
        # the class colour shows nowhere but on the objects
        elsewhere = _close_to(picture, style.rgb)
        elsewhere[y0:y1, x0:x1] = False
        if meta["distractor"] is not None:
            dx0, dy0, dx1, dy1 = meta["distractor"]["box"]
            elsewhere[dy0:dy1, dx0:dx1] = False
        assert elsewhere.mean() < 0.01
    assert min(checked.values()) > 0


@pytest.mark.parametrize("size", [32, 112])
def test_layout_keeps_boxes_in_frame_and_apart(size):
    config = syn.SynthConfig(num_classes=6, size=size, p_distractor=0.7, p_occlusion=0.7)
    seen_distractor = seen_occluder = False
    for class_index in range(6):
        for video_index in range(25):
            spec, _ = _spec(config, class_index, video_index)
            x0, y0, x1, y1 = spec.target.box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert 0.18 * size <= max(x1 - x0, y1 - y0) <= 0.5 * size
            if spec.distractor is not None:
                seen_distractor = True
                dx0, dy0, dx1, dy1 = spec.distractor.box
                assert 0 <= dx0 < dx1 <= size and 0 <= dy0 < dy1 <= size
                assert dx1 <= x0 or x1 <= dx0 or dy1 <= y0 or y1 <= dy0, "boxes overlap"
                assert spec.distractor.label != class_index
                if spec.occluder is not None:
                    ox0, oy0, ox1, oy1 = spec.occluder
                    assert dx1 <= ox0 or ox1 <= dx0 or dy1 <= oy0 or oy1 <= dy0, "occluder hides the distractor"
            if spec.occluder is not None:
                seen_occluder = True
                ox, oy, side = spec.target.square
                alpha, _ = syn.object_layers(syn.CLASS_STYLES[class_index], side)
                covered = np.zeros((size, size))
                covered[spec.occluder[1]:spec.occluder[3], spec.occluder[0]:spec.occluder[2]] = 1
                hidden = (alpha * covered[oy:oy + side, ox:ox + side]).sum() / alpha.sum()
                slack = 0.1 if size < 64 else 0.05  # the patch edge moves by whole pixels
                assert 0.5 - slack <= hidden <= 0.7 + slack
    assert seen_distractor and seen_occluder


def _harmonic_levels(audio: np.ndarray, rate: int, f0: float, count: int) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return np.array([spectrum[np.abs(freqs - n * f0) < 0.02 * f0].max() for n in range(1, count + 1)])


def test_classes_differ_in_harmonic_profile():
    clean = syn.SynthConfig(num_classes=6, p_noise_burst=0.0, p_audio_distractor=0.0)
    ratios = {}
    for profile in ("odd", "saw"):
        class_index = next(i for i, s in enumerate(syn.CLASS_STYLES[:6]) if s.harmonics == profile)
        values = []
        for video_index in range(3):  # three pitches
            spec, (_, audio_rng) = _spec(clean, class_index, video_index)
            assert spec.audio_distractor is None and spec.noise_burst is None
            audio = syn.render_audio(spec, audio_rng)
            levels = _harmonic_levels(audio, clean.audio_rate, spec.f0, 4)
            values.append(levels[1] / levels[0])  # 2nd harmonic relative to the fundamental
        ratios[profile] = values
    assert max(ratios["odd"]) < 0.1
    assert min(ratios["saw"]) > 0.3


def test_noise_burst_masks_the_sound_where_the_spec_says():
    base = dict(num_classes=6, duration=2.0, p_audio_distractor=0.0)
    spec, (_, audio_rng) = _spec(syn.SynthConfig(**base, p_noise_burst=0.0), 0, 0)
    clean = syn.render_audio(spec, audio_rng).astype(np.float64)
    spec, (_, audio_rng) = _spec(syn.SynthConfig(**base, p_noise_burst=1.0), 0, 0)
    noisy = syn.render_audio(spec, audio_rng).astype(np.float64)
    for audio in (clean, noisy):
        assert np.abs(audio).max() == pytest.approx(syn.PEAK, abs=1e-6)
    start, stop = spec.noise_burst
    assert stop - start >= 0.6 * len(noisy)
    # both clips draw the same notes and background, so the difference is the (scaled) burst
    outside = np.ones(len(noisy), bool)
    outside[start:stop] = False
    scale = noisy[outside] @ clean[outside] / (clean[outside] @ clean[outside])
    residual = noisy - scale * clean
    assert np.abs(residual[outside]).max() < 1e-5
    assert np.sqrt(np.mean(residual[start:stop] ** 2)) > 1.9 * np.sqrt(np.mean((scale * clean[start:stop]) ** 2))


def test_class_table_is_unambiguous():
    styles = syn.CLASS_STYLES
    assert syn.MAX_CLASSES >= 20
    names = [s.name for s in styles]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)+", n) for n in names)
    for a, b in combinations(styles, 2):
        assert sum(x == y for x, y in zip((a.shape, a.colour, a.texture), (b.shape, b.colour, b.texture))) <= 1
        assert (a.harmonics, a.envelope) != (b.harmonics, b.envelope)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), *args],
                          capture_output=True, text=True, cwd="/", timeout=120)


@pytest.mark.parametrize("flag, value", [
    ("--num_classes", "1"),
    ("--num_classes", str(syn.MAX_CLASSES + 1)),
    ("--per_class", "0"),
    ("--p_occlusion", "1.5"),
    ("--p_audio_distractor", "-0.1"),
    ("--size", "16"),
    ("--workers", "0"),
])
def test_cli_rejects_bad_values(flag, value, tmp_path):
    result = _cli("--out", str(tmp_path / "out"), flag, value)
    assert result.returncode == 2
    assert flag in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_generates_a_dataset(tmp_path):
    result = _cli("--out", str(tmp_path), "--num_classes", "2", "--per_class", "1", "--size", "32",
                  "--duration", "1", "--workers", "1")
    assert result.returncode == 0, result.stderr
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    assert sorted(boxes["videos"]) == [f"{name}/vid0000" for name in sorted(syn.class_names(2))]


def test_rename_classes_lets_synthetic_data_stand_in_for_a_preset(tmp_path):
    from dataset.generators.synthetic import generate, rename_classes

    before = generate(tmp_path, num_classes=2, per_class=1, size=32, duration=0.5, workers=1, progress=False)
    boxes = rename_classes(tmp_path, ["flute", "tuba"])
    assert boxes["classes"] == ["flute", "tuba"]
    assert (tmp_path / "categories.txt").read_text() == "flute\ntuba\n"
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["flute", "tuba"]
    assert set(boxes["videos"]) == {"flute/vid0000", "tuba/vid0000"}
    old_first = before["classes"][0]
    assert boxes["videos"]["flute/vid0000"]["box"] == before["videos"][f"{old_first}/vid0000"]["box"]
    with pytest.raises(ValueError, match="2 distinct new names"):
        rename_classes(tmp_path, ["a", "a"])
