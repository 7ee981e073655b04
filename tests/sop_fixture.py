"""A tiny SoP-layout dataset written directly (JPEG frames + wav), with content that encodes time.

Frame k of every clip is a uniform gray image of level ``GRAY_STEP * k``; the audio is a linear ramp
``RAMP_START + RAMP_SLOPE * t`` (t in seconds), so a test can tell which frame was picked and which
moment the audio window is centred on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

GRAY_STEP = 6
RAMP_START = -0.6
RAMP_SLOPE = 0.08  # per second: x1.5 volume keeps a 5 s clip inside [-1, 1]


def write_clip(root: Path, cls: str, vid: str, num_frames: int, fps: float = 8, audio_rate: int = 11025,
               audio_seconds: float | None = None, size: tuple[int, int] = (40, 48),
               channels: int = 1) -> str:
    """Write one clip; returns its index CSV row."""
    frame_dir = root / "frames" / cls / f"{vid}.mp4"
    frame_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, num_frames + 1):
        level = min(255, GRAY_STEP * k)
        Image.fromarray(np.full((size[0], size[1], 3), level, np.uint8)).save(frame_dir / f"{k:06d}.jpg",
                                                                              quality=95)
    seconds = num_frames / fps if audio_seconds is None else audio_seconds
    t = np.arange(int(round(seconds * audio_rate))) / audio_rate
    wave = (RAMP_START + RAMP_SLOPE * t).astype(np.float32)
    if channels == 2:
        wave = np.stack([wave + 0.1, wave - 0.1], axis=1)
    (root / "audio" / cls).mkdir(parents=True, exist_ok=True)
    sf.write(root / "audio" / cls / f"{vid}.wav", wave, audio_rate, subtype="FLOAT")
    return f"/{cls}/{vid}.wav,/{cls}/{vid}.mp4,{num_frames}"


def write_index(root: Path, name: str, rows: list[str]) -> Path:
    path = root / name
    path.write_text("\n".join(rows) + "\n")
    return path


def make_root(root: Path, classes=("cat_a", "cat_b", "cat_c"), per_class: int = 2, num_frames: int = 40,
              **clip_kwargs) -> Path:
    """Write a dataset and a train.csv/val.csv/test.csv that all list every clip."""
    rows = [write_clip(root, cls, f"v{i}", num_frames, **clip_kwargs) for cls in classes for i in range(per_class)]
    for name in ("train.csv", "val.csv", "test.csv"):
        write_index(root, name, rows)
    (root / "categories.txt").write_text("\n".join(classes) + "\n")
    return root


def ramp_time(wave: np.ndarray) -> np.ndarray:
    """Invert the ramp: the time in seconds each sample of an unscaled window stands for."""
    return (wave - RAMP_START) / RAMP_SLOPE


def write_rendered_clip(root: Path, config, seed: int, class_index: int, video_index: int,
                        class_name: str) -> tuple[str, str, dict]:
    """Render one clip of the embedded synthetic generator straight into the SoP layout (no video file);
    returns its index CSV row, its id ``<class>/<id>`` and its boxes.json entry."""
    from dataset.generators.synthetic import clip_rngs, make_spec, render_audio, render_video, spec_metadata

    spec_rng, video_rng, audio_rng = clip_rngs(seed, class_index, video_index)
    spec = make_spec(config, class_index, video_index, spec_rng)
    vid = spec.key.split("/")[1]
    frame_dir = root / "frames" / class_name / f"{vid}.mp4"
    frame_dir.mkdir(parents=True)
    pictures = render_video(spec, video_rng)
    for k, picture in enumerate(pictures, start=1):
        Image.fromarray(picture).save(frame_dir / f"{k:06d}.jpg", quality=95)
    (root / "audio" / class_name).mkdir(parents=True, exist_ok=True)
    sf.write(root / "audio" / class_name / f"{vid}.wav", render_audio(spec, audio_rng), config.audio_rate,
             subtype="FLOAT")
    return f"/{class_name}/{vid}.wav,/{class_name}/{vid}.mp4,{len(pictures)}", f"{class_name}/{vid}", \
        spec_metadata(spec)
