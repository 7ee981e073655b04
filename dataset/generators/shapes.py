"""A second generated audio-visual dataset, built unlike the embedded one (dataset/generators/synthetic.py).

It stands in for "a small real dataset this project was not designed for": objects are drawn as
rotated PIL polygons with a radial shading and an outline over fractal-noise backgrounds with sensor
noise, and sounds are short synthesised events (FM bells, chirps, noise bands, click trains, ...)
at -12...20 dB SNR over coloured noise, instead of the embedded set's textured masks, gradient
backgrounds and repeated harmonic notes.

Every class is a silhouette and a hue (jittered per clip) plus a sound type (its pitch jittered per
clip). A clip holds one static object at a random position; with probability ``centre_bias`` its
centre is drawn near the frame centre instead (a Gaussian of 0.1 x size around it). Its side is a
uniform fraction ``object_scale`` of the frame side (0.31-0.62: 35-70 px of 112 px).

Output of :func:`generate_shapes` (the same layout and boxes.json schema as the embedded set, so
scripts/preprocess.py, create_index.py and the localization evaluation take it as is)::

    DIR/videos/<class>/<id>.mp4   h264 (yuv420p) + mono AAC
    DIR/categories.txt            class names in label order
    DIR/boxes.json                the object's box per clip (in pixels of the generated frame)

All randomness of clip ``v`` of class ``c`` comes from ``SeedSequence([seed, c, v])``.
"""
from __future__ import annotations

import colorsys
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.signal import butter, lfilter, sosfilt

from dataset.generators.synthetic import BOX_FORMAT, check_clip_fields, encode_mp4
from dataset.generators.synthetic import ConfigError as ShapesConfigError  # the same error: a bad field, named
from utils.fileio import atomic_path, write_json_atomic, write_text_atomic

SILHOUETTES = ("triangle", "square", "pentagon", "hexagon", "star5", "star4", "ellipse", "arrow", "plus",
               "lshape", "heart", "octagon")
SOUNDS = ("bell", "chirp_up", "chirp_down", "hiss", "tremolo", "buzz", "siren", "vibrato", "thump", "square",
          "whistle", "rattle")
MAX_CLASSES = len(SILHOUETTES)
PEAK = 0.9
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of one generated dataset; invalid values raise :class:`ShapesConfigError`."""

    num_classes: int = 10
    per_class: int = 60
    seed: int = 0
    size: int = 112
    duration: float = 3.0
    fps: int = 8
    audio_rate: int = 22050
    object_scale: tuple[float, float] = (0.31, 0.62)
    centre_bias: float = 0.0
    snr_db: tuple[float, float] = (-12.0, 20.0)

    def __post_init__(self) -> None:
        check = check_clip_fields(self, MAX_CLASSES)
        lo, hi = self.object_scale
        check("object_scale", 0.05 <= lo <= hi <= 0.95, "must be LO HI with 0.05 <= LO <= HI <= 0.95")
        check("centre_bias", 0.0 <= self.centre_bias <= 1.0, "must be a probability in [0, 1]")
        check("snr_db", self.snr_db[0] <= self.snr_db[1], "must be LO HI with LO <= HI")

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.audio_rate)


def class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes, in label order."""
    return [f"{SILHOUETTES[i]}_{SOUNDS[i]}" for i in range(num_classes)]


def class_hue(label: int, num_classes: int) -> float:
    """Hue in [0, 1) of a class; neighbours in hue are far apart in label."""
    return (label * 5 % num_classes) / num_classes


def clip_rngs(seed: int, class_index: int, video_index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for the layout, the pictures and the sound of one clip."""
    seq = np.random.SeedSequence([seed, class_index, video_index])
    return tuple(np.random.default_rng(child) for child in seq.spawn(3))


# ----------------------------------------------------------------------------------------- pictures


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return list(zip(radii * np.sin(angles), -radii * np.cos(angles)))


def _regular(sides: int) -> list[tuple[float, float]]:
    angles = np.arange(sides) * 2 * np.pi / sides
    return list(zip(np.sin(angles), -np.cos(angles)))


def silhouette_outline(name: str) -> list[tuple[float, float]]:
    """The outline of a silhouette in unit coordinates (x right, y down, inside [-1, 1])."""
    regular = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
    if name in regular:
        return _regular(regular[name])
    if name == "star5":
        return _star(5, 0.45)
    if name == "star4":
        return _star(4, 0.35)
    if name == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return list(zip(np.cos(t), 0.5 * np.sin(t)))
    if name == "arrow":
        return [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)]
    if name == "plus":
        a = 0.33
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a),
                (-a, -a)]
    if name == "lshape":
        return [(-1, -1), (-0.25, -1), (-0.25, 0.3), (1, 0.3), (1, 1), (-1, 1)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return list(zip(x / 17, (y + 2.5) / 17))
    raise ValueError(f"unknown silhouette {name!r}")


def object_layers(label: int, num_classes: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased ``alpha`` [side, side] and colour [side, side, 3] (0-255 floats) of a class's object:
    the silhouette rotated at random, filled with a radial shading of the (jittered) class hue, outlined."""
    k = side * SUPERSAMPLE
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = np.asarray(silhouette_outline(SILHOUETTES[label]), np.float64) @ rot.T
    points = points / np.abs(points).max()  # fill the square whatever the rotation
    pixels = [tuple(p) for p in (points * 0.95 + 1) / 2 * k]
    mask_img = Image.new("L", (k, k), 0)
    ImageDraw.Draw(mask_img).polygon(pixels, fill=255)
    edge_img = Image.new("L", (k, k), 0)
    ImageDraw.Draw(edge_img).line(pixels + [pixels[0]], fill=255, width=max(1, k // 24), joint="curve")
    inside = np.asarray(mask_img, np.float32) / 255
    edge = np.asarray(edge_img, np.float32) / 255 * inside

    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))

    hue = (class_hue(label, num_classes) + rng.uniform(-0.03, 0.03)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.75, 1.0)), np.float32) * 255
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    u, v = np.meshgrid(coords, coords)
    light = rng.uniform(-0.5, 0.5, 2)
    shade = np.clip(1.0 - 0.45 * np.hypot(u - light[0], v - light[1]), 0.35, 1.0)[..., None]
    colour = base * shade * (1 - 0.7 * down(edge)[..., None])
    return down(inside), colour


def tight_box(alpha: np.ndarray, x: int, y: int) -> tuple[int, int, int, int]:
    """The box (BOX_FORMAT) of the pixels more than half covered by an object drawn at (x, y)."""
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    return (x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)


def fractal_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured value noise summed over octaves, [size, size, 3] float32 0-255, muted colours."""
    img = np.zeros((size, size, 3), np.float32)
    amplitude = 1.0
    for cells in (3, 6, 12, 24):
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((size, size), Image.BILINEAR))
                          for c in range(3)], axis=-1)
        img += amplitude * layer
        amplitude *= 0.55
    grey = rng.uniform(70, 180)
    tint = rng.uniform(-20, 20, 3).astype(np.float32)
    return np.clip(grey + tint + img / 1.8 * rng.uniform(25, 60), 0, 255)


def place_object(config: ShapesConfig, rng: np.random.Generator) -> tuple[int, int, int]:
    """(x, y, side) of the object's square: side from ``object_scale``, position uniform or, with
    probability ``centre_bias``, around the frame centre."""
    size = config.size
    side = int(round(rng.uniform(*config.object_scale) * size))
    room = size - side
    if rng.random() < config.centre_bias:
        centre = size / 2 + rng.normal(0, 0.1 * size, 2)
        x, y = np.clip(np.rint(centre - side / 2), 0, room).astype(int)
    else:
        x, y = rng.integers(0, room + 1, 2)
    return int(x), int(y), side


def render_frames(config: ShapesConfig, label: int, square: tuple[int, int, int],
                  rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The clip's pictures, uint8 [T, H, W, 3], and the object's box: a static scene with a slow global
    brightness drift and per-frame sensor noise."""
    x, y, side = square
    scene = fractal_background(config.size, rng)
    alpha, colour = object_layers(label, config.num_classes, side, rng)
    region = scene[y:y + side, x:x + side]
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
    times = np.arange(config.num_frames, dtype=np.float32) / config.fps
    gain = 1 + rng.uniform(0.03, 0.1) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * times + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0, rng.uniform(2, 6), (config.num_frames, config.size, config.size, 3)).astype(np.float32)
    frames = scene[None] * gain[:, None, None, None] + noise
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), tight_box(alpha, x, y)


# -------------------------------------------------------------------------------------------- sound


def sound_event(kind: str, count: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One event of ``count`` samples of a class's sound type, pitch jittered by up to +-12 %."""
    t = np.arange(count) / rate
    length = count / rate
    jitter = rng.uniform(0.88, 1.12)
    fade = np.minimum(1.0, np.minimum(t / 0.005, (length - t) / 0.01)).clip(0, 1)
    if kind == "bell":  # FM, inharmonic ratio, decaying index
        fc = 700 * jitter
        index = 4 * np.exp(-t / 0.15)
        wave = np.sin(2 * np.pi * fc * t + index * np.sin(2 * np.pi * 1.41 * fc * t)) * np.exp(-t / 0.25)
    elif kind in ("chirp_up", "chirp_down"):
        f0, f1 = (400 * jitter, 2400 * jitter) if kind == "chirp_up" else (2400 * jitter, 400 * jitter)
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * length)))
    elif kind == "hiss":  # a noise band around 3 kHz
        sos = butter(4, [2500 * jitter, 3500 * jitter], btype="band", fs=rate, output="sos")
        wave = sosfilt(sos, rng.standard_normal(count))
    elif kind == "tremolo":
        wave = np.sin(2 * np.pi * 520 * jitter * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 14 * t))
    elif kind == "buzz":  # a click train through a resonance
        clicks = (np.mod(t * 90 * jitter, 1.0) < 90 * jitter / rate).astype(np.float64)
        wave = lfilter([1.0], [1, -1.6 * np.cos(2 * np.pi * 900 / rate), 0.81], clicks)
    elif kind == "siren":  # two tones alternating 6 times a second
        f = np.where(np.mod(t * 6, 1.0) < 0.5, 950, 650) * jitter
        wave = np.sin(2 * np.pi * np.cumsum(f) / rate)
    elif kind == "vibrato":
        f = 330 * jitter * (1 + 0.06 * np.sin(2 * np.pi * 6 * t))
        phase = 2 * np.pi * np.cumsum(f) / rate
        wave = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.3 * np.sin(3 * phase)
    elif kind == "thump":
        wave = np.sin(2 * np.pi * 110 * jitter * t) * np.exp(-t / 0.12) + 0.3 * rng.standard_normal(count) * \
            np.exp(-t / 0.02)
    elif kind == "square":
        phase = 2 * np.pi * 260 * jitter * t
        wave = sum(np.sin(n * phase) / n for n in range(1, 16, 2) if n * 260 * jitter < 0.45 * rate)
    elif kind == "whistle":
        wave = np.sin(2 * np.pi * 1800 * jitter * t + 3 * np.sin(2 * np.pi * 3 * t))
    elif kind == "rattle":  # bursts of noise 20 times a second
        wave = rng.standard_normal(count) * (np.mod(t * 20 * jitter, 1.0) < 0.3)
    else:
        raise ValueError(f"unknown sound {kind!r}")
    return wave * fade


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-12))


def render_audio(config: ShapesConfig, label: int, rng: np.random.Generator) -> np.ndarray:
    """The clip's sound, float32 [num_samples] peak PEAK: 1-3 short events of the class's sound at an SNR
    drawn from ``snr_db`` (over the events' samples) in coloured noise."""
    rate, n = config.audio_rate, config.num_samples
    events = np.zeros(n)
    active = np.zeros(n, bool)
    for _ in range(rng.integers(1, 4)):
        count = min(n, int(rng.uniform(0.25, 0.7) * rate))
        start = int(rng.integers(0, n - count + 1))
        events[start:start + count] += sound_event(SOUNDS[label], count, rate, rng)
        active[start:start + count] = True
    pole = rng.uniform(0.0, 0.98)
    noise = lfilter([1 - pole], [1, -pole], rng.standard_normal(n))
    snr = rng.uniform(*config.snr_db)
    mix = events / _rms(events[active]) * 10 ** (snr / 20) + noise / _rms(noise)
    return (mix * (PEAK / np.abs(mix).max())).astype(np.float32)


# ------------------------------------------------------------------------------------------ writing


def render_clip(config: ShapesConfig, class_index: int, video_index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames uint8 [T, H, W, 3], audio float32 [num_samples] and the boxes.json entry of one clip."""
    layout_rng, video_rng, audio_rng = clip_rngs(config.seed, class_index, video_index)
    square = place_object(config, layout_rng)
    frames, box = render_frames(config, class_index, square, video_rng)
    audio = render_audio(config, class_index, audio_rng)
    meta = {"label": class_index, "box": list(box), "distractor": None, "occluded": False, "noise_burst": False,
            "audio_distractor": None}
    return frames, audio, meta


def video_key(config: ShapesConfig, class_index: int, video_index: int) -> str:
    return f"{class_names(config.num_classes)[class_index]}/vid{video_index:04d}"


def _build_clip(task: tuple[ShapesConfig, str, int, int]) -> tuple[str, dict[str, Any]]:
    config, out_dir, class_index, video_index = task
    frames, audio, meta = render_clip(config, class_index, video_index)
    key = video_key(config, class_index, video_index)
    with atomic_path(Path(out_dir) / "videos" / f"{key}.mp4", suffix=".mp4") as tmp:
        encode_mp4(tmp, frames, audio, config.fps, config.audio_rate)
    return key, meta


def generate_shapes(out_dir: str | os.PathLike, num_classes: int = 10, per_class: int = 60, seed: int = 0,
                    size: int = 112, duration: float = 3.0, fps: int = 8, audio_rate: int = 22050,
                    object_scale: tuple[float, float] = (0.31, 0.62), centre_bias: float = 0.0,
                    snr_db: tuple[float, float] = (-12.0, 20.0), workers: int | None = None) -> dict[str, Any]:
    """Write the dataset into ``out_dir`` and return the content of its boxes.json.

    ``workers`` processes encode in parallel (default: all cores); the files do not depend on it.
    """
    config = ShapesConfig(num_classes, per_class, seed, size, duration, fps, audio_rate,
                          tuple(object_scale), centre_bias, tuple(snr_db))
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ShapesConfigError("workers", f"must be >= 1, got {workers}")
    out = Path(out_dir)
    tasks = [(config, str(out), c, v) for c in range(num_classes) for v in range(per_class)]
    pool = multiprocessing.Pool(min(workers, len(tasks))) if workers > 1 else None
    try:
        videos = dict(pool.imap_unordered(_build_clip, tasks) if pool else map(_build_clip, tasks))
    finally:
        if pool is not None:
            pool.terminate()
    boxes = {
        "size": [size, size],
        "fps": fps,
        "audio_rate": audio_rate,
        "duration": duration,
        "seed": seed,
        "generator": "shapes",
        "object_scale": list(config.object_scale),
        "centre_bias": centre_bias,
        "box_format": BOX_FORMAT,
        "classes": class_names(num_classes),
        "videos": dict(sorted(videos.items())),
    }
    write_text_atomic(out / "categories.txt", "".join(f"{name}\n" for name in boxes["classes"]))
    write_json_atomic(out / "boxes.json", boxes)
    return boxes
