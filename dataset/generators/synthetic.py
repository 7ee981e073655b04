"""The embedded synthetic audio-visual event dataset.

Every class is a visual identity (shape x colour x texture) and a timbre (harmonic profile x note
envelope). A clip shows the class's object, static, over a cluttered background and plays repeated
notes of its timbre at a pitch drawn per video from a range all classes share, over background noise.
Imperfections are drawn independently per modality so that neither modality alone is enough and
fusion pays off:

* visual distractor: a silent object of another class, same size range, elsewhere in the frame, so
  vision alone cannot tell which object sounds;
* occlusion: a clutter-coloured patch hides 50-70 % of the sounding object;
* noise burst: loud broadband noise over 60-100 % of the clip;
* audio distractor: an off-screen sound of another class at about the same level.

Output of :func:`generate`::

    DIR/videos/<class>/<id>.mp4   h264 (yuv420p) + mono AAC
    DIR/categories.txt            class names in label order
    DIR/boxes.json                sounding-object boxes and what was done to every clip

All randomness of clip ``v`` of class ``c`` comes from ``SeedSequence([seed, c, v])``, so a parallel
run writes the same files as a serial one.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from scipy.signal import lfilter
from tqdm import tqdm

from utils.fileio import atomic_path, write_json_atomic, write_text_atomic

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross", "star", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 200),
    "cyan": (40, 205, 215),
    "orange": (245, 135, 25),
}
TEXTURES = ("solid", "stripes", "checker", "dots")
HARMONICS = ("odd", "saw", "mid", "pure", "bright", "formant")
ENVELOPES = ("percussive", "sustained", "tremolo", "pulsed", "swell")

TEXTURE_DARKNESS = 0.3  # texture marks are the class colour times this
PEAK = 0.9  # clips are peak-normalised to this amplitude
F0_RANGE = (170.0, 340.0)  # fundamental range shared by all classes (log-uniform)
MAX_HARMONIC_HZ = 5000.0  # below the 5512 Hz Nyquist of the paper's 11025 Hz audio
BOX_FORMAT = "[x0, y0, x1, y1] in pixels, x1 and y1 exclusive"
OCCLUDER_MARGIN = 2  # pixels an occluder reaches beyond the box of the object it hides


@dataclass(frozen=True)
class ClassStyle:
    """The visual identity and the timbre of one class."""

    shape: str
    colour: str
    texture: str
    harmonics: str
    envelope: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{self.texture}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]


def _build_class_styles() -> tuple[ClassStyle, ...]:
    """A fixed class table in which two classes share at most one visual attribute and never both audio ones.

    Visual triples are taken greedily from a fixed permutation of all shape x colour x texture
    combinations (the pass finds 28); timbres follow ``i -> (i mod 6, (i + i // 6) mod 5)``, which is
    injective on 0..29.
    """
    combos = [(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES]
    order = np.random.default_rng(2021).permutation(len(combos))
    visual: list[tuple[str, str, str]] = []
    for k in order:
        cand = combos[k]
        if all(sum(a == b for a, b in zip(cand, old)) <= 1 for old in visual):
            visual.append(cand)
    count = len(HARMONICS) * len(ENVELOPES)
    styles = []
    for i, (shape, colour, texture) in enumerate(visual[:count]):
        harmonics = HARMONICS[i % len(HARMONICS)]
        envelope = ENVELOPES[(i + i // len(HARMONICS)) % len(ENVELOPES)]
        styles.append(ClassStyle(shape, colour, texture, harmonics, envelope))
    return tuple(styles)


CLASS_STYLES = _build_class_styles()
MAX_CLASSES = len(CLASS_STYLES)


def class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes, in label order."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    return [style.name for style in CLASS_STYLES[:num_classes]]


class ConfigError(ValueError):
    """A bad generator parameter; ``field`` names it (the CLI flag has the same name)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def check_clip_fields(config: Any, max_classes: int) -> Callable[[str, bool, str], None]:
    """Check the fields every generator config has (classes, clips, seed, frame size, duration, fps, audio rate)
    and return the check, ``check(field, ok, message)``, which raises :class:`ConfigError` naming the field."""
    def check(field: str, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(field, f"{message}, got {getattr(config, field)!r}")

    check("num_classes", 2 <= config.num_classes <= max_classes, f"must be in [2, {max_classes}]")
    check("per_class", config.per_class >= 1, "must be >= 1")
    check("seed", config.seed >= 0, "must be >= 0")
    check("size", config.size >= 32 and config.size % 2 == 0, "must be an even number >= 32")
    check("duration", 0.5 <= config.duration <= 600, "must be in [0.5, 600] seconds")
    check("fps", 1 <= config.fps <= 120, "must be in [1, 120]")
    check("audio_rate", 8000 <= config.audio_rate <= 96000, "must be in [8000, 96000]")
    return check


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one generated dataset; invalid values raise :class:`ConfigError`."""

    num_classes: int = 6
    per_class: int = 40
    seed: int = 0
    size: int = 112
    duration: float = 6.0
    fps: int = 16
    audio_rate: int = 22050
    p_distractor: float = 0.4
    p_occlusion: float = 0.25
    p_noise_burst: float = 0.3
    p_audio_distractor: float = 0.3

    def __post_init__(self) -> None:
        check = check_clip_fields(self, MAX_CLASSES)
        for field in ("p_distractor", "p_occlusion", "p_noise_burst", "p_audio_distractor"):
            check(field, 0.0 <= getattr(self, field) <= 1.0, "must be a probability in [0, 1]")

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.audio_rate)


@dataclass(frozen=True)
class Placement:
    """An object drawn in the frame: its label, the square its shape is drawn in, its tight box."""

    label: int
    square: tuple[int, int, int]  # x, y, side
    box: tuple[int, int, int, int]  # BOX_FORMAT


@dataclass(frozen=True)
class VideoSpec:
    """Everything about one clip that the metadata reports; the rest is drawn while rendering."""

    key: str  # "<class>/<id>"
    config: SynthConfig
    target: Placement
    distractor: Placement | None
    occluder: tuple[int, int, int, int] | None  # BOX_FORMAT
    f0: float  # fundamental of the sounding object, Hz
    audio_distractor: int | None  # label of the off-screen sound
    noise_burst: tuple[int, int] | None  # [start, stop) in samples

    @property
    def label(self) -> int:
        return self.target.label


def video_id(video_index: int) -> str:
    return f"vid{video_index:04d}"


def clip_rngs(seed: int, class_index: int, video_index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for the spec, the pictures and the sound of one clip."""
    seq = np.random.SeedSequence([seed, class_index, video_index])
    return tuple(np.random.default_rng(child) for child in seq.spawn(3))


# ----------------------------------------------------------------------------------------- pictures


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u right, v down, both in [-1, 1]) in a shape centred in its square."""
    r = np.hypot(u, v)
    au, av_ = np.abs(u), np.abs(v)
    if shape == "circle":
        return r <= 0.95
    if shape == "square":
        return np.maximum(au, av_) <= 0.8
    if shape == "triangle":
        return (v >= -0.9) & (v <= 0.8) & (au <= 0.95 * (v + 0.9) / 1.7)
    if shape == "diamond":
        return au + av_ <= 0.95
    if shape == "ring":
        return (r >= 0.55) & (r <= 0.95)
    if shape == "cross":
        return (np.maximum(au, av_) <= 0.9) & (np.minimum(au, av_) <= 0.3)
    if shape == "star":
        theta = np.arctan2(u, -v)  # 0 points up
        return r <= 0.95 * (0.7 + 0.3 * np.cos(5 * theta))
    if shape == "hexagon":
        return (av_ <= 0.95 * np.sqrt(3) / 2) & (np.sqrt(3) * au + av_ <= 0.95 * np.sqrt(3))
    raise ValueError(f"unknown shape {shape!r}")


def _texture_marks(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where a texture paints its dark marks, in the same local coordinates as the shape."""
    if texture == "solid":
        return np.zeros_like(u, dtype=bool)
    if texture == "stripes":
        return np.mod((u + v) * 2.0, 1.0) < 0.45
    if texture == "checker":
        return (np.floor((u + 1) * 2) + np.floor((v + 1) * 2)) % 2 == 1
    if texture == "dots":
        du, dv = np.mod((u + 1) * 2, 1.0) - 0.5, np.mod((v + 1) * 2, 1.0) - 0.5
        return np.hypot(du, dv) < 0.28
    raise ValueError(f"unknown texture {texture!r}")


def object_layers(style: ClassStyle, side: int, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased ``alpha`` [side, side] and colour [side, side, 3] (0-255 floats) of a class's object."""
    k = side * supersample
    coords = (np.arange(k) + 0.5) / k * 2 - 1
    u, v = np.meshgrid(coords, coords)

    def down(mask: np.ndarray) -> np.ndarray:
        return mask.reshape(side, supersample, side, supersample).mean(axis=(1, 3), dtype=np.float32)

    alpha = down(_shape_inside(style.shape, u, v))
    marks = down(_texture_marks(style.texture, u, v))[..., None]
    rgb = np.asarray(style.rgb, np.float32)
    colour = rgb * (1 - marks) + rgb * TEXTURE_DARKNESS * marks
    return alpha, colour


def _tight_box(style: ClassStyle, square: tuple[int, int, int]) -> tuple[int, int, int, int]:
    x, y, side = square
    alpha, _ = object_layers(style, side)
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    return (x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour: grey plus a small per-channel tint (class colours are saturated)."""
    grey = rng.uniform(60, 190)
    return np.clip(grey + rng.uniform(-28, 28, size=3), 0, 255).astype(np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient with muted blobs and lines, [size, size, 3] float32 0-255."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / size
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    img = c0 + (c1 - c0) * ramp[..., None]
    for _ in range(rng.integers(6, 15)):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.02, 0.07, 2) * size
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = _muted_colour(rng)
    for _ in range(rng.integers(3, 8)):
        p0, p1 = rng.uniform(0, size, (2, 2))
        width = rng.uniform(0.5, 1.2) * size / 112
        d = p1 - p0
        t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        dist = np.hypot(xx - p0[0] - t * d[0], yy - p0[1] - t * d[1])
        img[dist <= width] = _muted_colour(rng)
    return img


def render_video(spec: VideoSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip's pictures, uint8 [T, H, W, 3]: background, objects (with a slow brightness flicker), occluder."""
    cfg = spec.config
    size = cfg.size
    static = _background(size, rng)
    flicker_layers = []
    times = np.arange(cfg.num_frames, dtype=np.float32) / cfg.fps
    visible = np.ones((size, size, 1), np.float32)
    if spec.occluder is not None:
        x0, y0, x1, y1 = spec.occluder
        visible[y0:y1, x0:x1] = 0
    for obj in (spec.distractor, spec.target):
        if obj is None:
            continue
        x, y, side = obj.square
        alpha, colour = object_layers(CLASS_STYLES[obj.label], side)
        alpha = alpha[..., None]
        region = static[y:y + side, x:x + side]
        region[:] = region * (1 - alpha) + colour * alpha
        layer = np.zeros_like(static)
        layer[y:y + side, x:x + side] = colour * alpha
        depth, rate, phase = rng.uniform(0.03, 0.08), rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
        gain = depth * np.sin(2 * np.pi * rate * times + phase)
        flicker_layers.append((gain, layer * visible))
    if spec.occluder is not None:
        x0, y0, x1, y1 = spec.occluder
        static[y0:y1, x0:x1] = _muted_colour(rng)
    frames = np.broadcast_to(static, (cfg.num_frames, *static.shape)).copy()
    for gain, layer in flicker_layers:
        frames += gain[:, None, None, None] * layer[None]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------- sound


def _harmonic_amplitudes(profile: str, f0: float, n: np.ndarray) -> np.ndarray:
    """Amplitude of harmonic ``n`` (1-based) of a note at ``f0`` Hz for a harmonic profile."""
    n = n.astype(np.float64)
    if profile == "odd":  # clarinet-like: odd harmonics only
        return np.where(n % 2 == 1, 1 / n, 0.0)
    if profile == "saw":
        return 1 / n
    if profile == "mid":  # strong 2nd and 3rd harmonics over a weak fundamental
        amps = 0.6 / n**1.5
        amps[n == 1], amps[n == 2], amps[n == 3] = 0.35, 1.0, 0.9
        return amps
    if profile == "pure":  # flute-like: nearly a sine
        return np.select([n == 1, n == 2, n == 3], [1.0, 0.15, 0.05], 0.0)
    if profile == "bright":  # brassy: slowly decaying, many strong upper harmonics
        return 1 / np.sqrt(n)
    if profile == "formant":  # vowel-like: a resonance near 1.5 kHz whatever the pitch
        return 0.3 * (n == 1) + np.exp(-0.5 * ((n * f0 - 1500) / 350) ** 2) + 0.1 / n
    raise ValueError(f"unknown harmonic profile {profile!r}")


def _wavetable(profile: str, f0: float, rate: int, rng: np.random.Generator, length: int = 2048) -> np.ndarray:
    """One period of the band-limited waveform, peak 1, harmonics below MAX_HARMONIC_HZ."""
    top = max(1, int(min(MAX_HARMONIC_HZ, 0.45 * rate) // f0))
    n = np.arange(1, top + 1)
    amps = _harmonic_amplitudes(profile, f0, n)
    phases = rng.uniform(0, 2 * np.pi, top)
    k = np.arange(length) / length
    table = (amps[:, None] * np.sin(2 * np.pi * n[:, None] * k[None] + phases[:, None])).sum(axis=0)
    return table / np.abs(table).max()


def _note_timing(envelope: str, rng: np.random.Generator) -> tuple[float, float]:
    """(note length, gap after it) in seconds; every envelope sounds at least every ~1.3 s."""
    if envelope == "percussive":
        return rng.uniform(0.25, 0.5), rng.uniform(0.0, 0.1)
    if envelope in ("sustained", "tremolo"):
        return rng.uniform(0.6, 1.1), rng.uniform(0.05, 0.2)
    if envelope == "pulsed":
        return rng.uniform(0.5, 1.0), rng.uniform(0.05, 0.2)
    if envelope == "swell":
        return rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.15)
    raise ValueError(f"unknown envelope {envelope!r}")


def _envelope(envelope: str, count: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Amplitude envelope of one note of ``count`` samples."""
    t = np.arange(count) / rate
    length = count / rate

    def attack_release(attack: float, release: float) -> np.ndarray:
        return np.minimum(1.0, np.minimum(t / attack, (length - t) / release)).clip(0, 1)

    if envelope == "percussive":
        return attack_release(0.004, 0.02) * np.exp(-t / rng.uniform(0.08, 0.18))
    if envelope == "sustained":
        return attack_release(0.06, 0.08)
    if envelope == "tremolo":
        rate_hz = rng.uniform(5, 8)
        return attack_release(0.06, 0.08) * (1 - 0.8 * (0.5 + 0.5 * np.cos(2 * np.pi * rate_hz * t)))
    if envelope == "pulsed":  # a train of short blips with soft edges
        period = 1 / rng.uniform(7, 10)
        pos = np.mod(t, period)
        on = 0.4 * period
        return np.clip(np.minimum(pos, on - pos) / 0.005, 0, 1)
    if envelope == "swell":  # slow crescendo, abrupt stop
        return (t / length) ** 2 * attack_release(1e-3, 0.02)
    raise ValueError(f"unknown envelope {envelope!r}")


def _instrument(style: ClassStyle, f0: float, count: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Repeated notes of one class's timbre at ``f0`` Hz, ``count`` samples."""
    table = _wavetable(style.harmonics, f0, rate, rng)
    out = np.zeros(count, np.float64)
    t = rng.uniform(0.0, 0.25)
    while t * rate < count:
        note_len, gap = _note_timing(style.envelope, rng)
        start = int(t * rate)
        n = min(int(note_len * rate), count - start)
        pos = (f0 * np.arange(n) / rate + rng.uniform()) * len(table)
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        i0 %= len(table)
        wave = table[i0] * (1 - frac) + table[(i0 + 1) % len(table)] * frac
        out[start:start + n] += rng.uniform(0.7, 1.0) * _envelope(style.envelope, n, rate, rng) * wave
        t += note_len + gap
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) + 1e-12


def render_audio(spec: VideoSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip's mono waveform, float32 [L], peak-normalised to PEAK."""
    cfg = spec.config
    count, rate = cfg.num_samples, cfg.audio_rate
    main = _instrument(CLASS_STYLES[spec.label], spec.f0, count, rate, rng)
    main /= _rms(main)
    mix = main.copy()
    if spec.audio_distractor is not None:
        f0 = float(np.exp(rng.uniform(*np.log(F0_RANGE))))
        other = _instrument(CLASS_STYLES[spec.audio_distractor], f0, count, rate, rng)
        mix += 10 ** (rng.uniform(-3, 3) / 20) * other / _rms(other)
    # background noise with a random spectral tilt, 10-25 dB below the sounding object
    tilt = rng.uniform(0.0, 0.95)
    noise = lfilter([1 - tilt], [1, -tilt], rng.standard_normal(count))
    mix += noise / _rms(noise) * 10 ** (-rng.uniform(10, 25) / 20)
    if spec.noise_burst is not None:
        start, stop = spec.noise_burst
        fade = np.minimum(1.0, np.minimum(np.arange(stop - start), np.arange(stop - start)[::-1]) / (0.02 * rate))
        burst = rng.standard_normal(stop - start) * fade * 10 ** (rng.uniform(6, 15) / 20)
        mix[start:stop] += burst
    return (mix * (PEAK / np.abs(mix).max())).astype(np.float32)


# ------------------------------------------------------------------------------------------- layout


def _place_pair(size: int, side_a: int, side_b: int, gap: int,
                rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of two squares that are ``gap`` pixels apart along a random axis."""
    axis, a_first = rng.integers(2), rng.integers(2) == 1
    sides = (side_a, side_b) if a_first else (side_b, side_a)
    lead = rng.integers(0, size - sides[0] - gap - sides[1] + 1)
    follow = rng.integers(lead + sides[0] + gap, size - sides[1] + 1)
    free = (rng.integers(0, size - sides[0] + 1), rng.integers(0, size - sides[1] + 1))
    first = (int(lead), int(free[0])) if axis == 0 else (int(free[0]), int(lead))
    second = (int(follow), int(free[1])) if axis == 0 else (int(free[1]), int(follow))
    return (first, second) if a_first else (second, first)


def _occluder(style: ClassStyle, square: tuple[int, int, int], box: tuple[int, int, int, int], size: int,
              rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A rectangle entering the object from a random side that hides 50-70 % of its pixels.

    It reaches at most ``OCCLUDER_MARGIN`` pixels beyond the object's box.
    """
    x, y, side = square
    alpha, _ = object_layers(style, side)
    target = rng.uniform(0.5, 0.7)
    axis, from_start = rng.integers(2), rng.integers(2) == 1
    mass = alpha.sum(axis=axis)  # per column when axis == 0, per row when axis == 1
    if not from_start:
        mass = mass[::-1]
    cut = int(np.argmin(np.abs(np.cumsum(mass) / mass.sum() - target)) + 1)  # columns or rows hidden
    m = OCCLUDER_MARGIN
    x0, y0, x1, y1 = max(0, box[0] - m), max(0, box[1] - m), min(size, box[2] + m), min(size, box[3] + m)
    if axis == 0:
        x0, x1 = (x0, max(x0, x + cut)) if from_start else (min(x1, x + side - cut), x1)
    else:
        y0, y1 = (y0, max(y0, y + cut)) if from_start else (min(y1, y + side - cut), y1)
    return (int(x0), int(y0), int(x1), int(y1))


def make_spec(config: SynthConfig, class_index: int, video_index: int, rng: np.random.Generator) -> VideoSpec:
    """Draw what happens in one clip: the object layouts, the imperfections and the pitch."""
    size, k = config.size, config.num_classes
    others = [c for c in range(k) if c != class_index]
    has_distractor = rng.random() < config.p_distractor
    occluded = rng.random() < config.p_occlusion
    has_burst = rng.random() < config.p_noise_burst
    has_audio_distractor = rng.random() < config.p_audio_distractor

    gap = max(2 * OCCLUDER_MARGIN, size // 28)  # an occluder never touches the distractor
    side = int(round(rng.uniform(0.25, 0.45) * size))
    distractor = None
    if has_distractor:
        side_d = int(round(side * rng.uniform(0.85, 1.15)))
        overflow = side + side_d + gap - size
        if overflow > 0:  # only for tiny frames: shrink both to fit side by side
            side, side_d = side - (overflow + 1) // 2, side_d - (overflow + 1) // 2
        (xt, yt), (xd, yd) = _place_pair(size, side, side_d, gap, rng)
        label_d = int(rng.choice(others))
        square_d = (int(xd), int(yd), side_d)
        distractor = Placement(label_d, square_d, _tight_box(CLASS_STYLES[label_d], square_d))
    else:
        xt, yt = rng.integers(0, size - side + 1, 2)
    square = (int(xt), int(yt), side)
    style = CLASS_STYLES[class_index]
    target = Placement(class_index, square, _tight_box(style, square))
    occluder = _occluder(style, square, target.box, size, rng) if occluded else None

    f0 = float(np.exp(rng.uniform(*np.log(F0_RANGE))))
    audio_distractor = int(rng.choice(others)) if has_audio_distractor else None
    burst = None
    if has_burst:
        n = config.num_samples
        length = int(rng.uniform(0.6, 1.0) * n)
        start = int(rng.integers(0, n - length + 1))
        burst = (start, start + length)
    key = f"{CLASS_STYLES[class_index].name}/{video_id(video_index)}"
    return VideoSpec(key, config, target, distractor, occluder, f0, audio_distractor, burst)


def spec_metadata(spec: VideoSpec) -> dict[str, Any]:
    """The clip's entry in boxes.json."""
    distractor = None
    if spec.distractor is not None:
        distractor = {"class": CLASS_STYLES[spec.distractor.label].name, "box": list(spec.distractor.box)}
    audio_distractor = None if spec.audio_distractor is None else CLASS_STYLES[spec.audio_distractor].name
    return {
        "label": spec.label,
        "box": list(spec.target.box),
        "distractor": distractor,
        "occluded": spec.occluder is not None,
        "noise_burst": spec.noise_burst is not None,
        "audio_distractor": audio_distractor,
    }


# ------------------------------------------------------------------------------------------ writing


def encode_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: int, audio_rate: int) -> None:
    """Write h264 (yuv420p) + mono AAC. Single-threaded encoders, so the bytes depend on the input only."""
    with av.open(str(path), "w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.height, vstream.width = frames.shape[1:3]
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.options = {"threads": "1", "crf": "18", "preset": "fast"}
        astream = container.add_stream("aac", rate=audio_rate, layout="mono")
        astream.bit_rate = 128000  # at the default ~69 kb/s decoded peaks overshoot 1.0 on sharp attacks
        astream.codec_context.open()
        for i, picture in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        step = astream.codec_context.frame_size
        for start in range(0, len(audio), step):
            frame = av.AudioFrame.from_ndarray(audio[None, start:start + step], format="fltp", layout="mono")
            frame.sample_rate = audio_rate
            frame.pts = start
            container.mux(astream.encode(frame))
        container.mux(astream.encode())


def _build_clip(task: tuple[SynthConfig, str, int, int]) -> tuple[str, dict[str, Any]]:
    config, out_dir, class_index, video_index = task
    spec_rng, video_rng, audio_rng = clip_rngs(config.seed, class_index, video_index)
    spec = make_spec(config, class_index, video_index, spec_rng)
    frames = render_video(spec, video_rng)
    audio = render_audio(spec, audio_rng)
    with atomic_path(Path(out_dir) / "videos" / f"{spec.key}.mp4", suffix=".mp4") as tmp:
        encode_mp4(tmp, frames, audio, config.fps, config.audio_rate)
    return spec.key, spec_metadata(spec)


def generate(out_dir: str | os.PathLike, num_classes: int = 6, per_class: int = 40, seed: int = 0,
             size: int = 112, duration: float = 6.0, fps: int = 16, audio_rate: int = 22050,
             p_distractor: float = 0.4, p_occlusion: float = 0.25, p_noise_burst: float = 0.3,
             p_audio_distractor: float = 0.3, workers: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Write the dataset into ``out_dir`` and return the content of its boxes.json.

    ``workers`` processes encode in parallel (default: all cores); the files do not depend on it.
    """
    config = SynthConfig(num_classes, per_class, seed, size, duration, fps, audio_rate,
                         p_distractor, p_occlusion, p_noise_burst, p_audio_distractor)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError("workers", f"must be >= 1, got {workers}")
    out = Path(out_dir)
    names = class_names(num_classes)
    tasks = [(config, str(out), c, v) for c in range(num_classes) for v in range(per_class)]
    videos: dict[str, dict[str, Any]] = {}
    # the pool forks before tqdm starts its monitor thread
    pool = multiprocessing.Pool(min(workers, len(tasks))) if workers > 1 else None
    try:
        results = pool.imap_unordered(_build_clip, tasks) if pool else map(_build_clip, tasks)
        for key, meta in tqdm(results, total=len(tasks), desc="synthetic clips", unit="clip",
                              disable=not progress):
            videos[key] = meta
    finally:
        if pool is not None:
            pool.terminate()
    boxes = {
        "size": [size, size],
        "fps": fps,
        "audio_rate": audio_rate,
        "duration": duration,
        "seed": seed,
        "box_format": BOX_FORMAT,
        "classes": names,
        "videos": videos,
    }
    write_text_atomic(out / "categories.txt", "".join(f"{name}\n" for name in names))
    write_json_atomic(out / "boxes.json", boxes)
    return boxes


def rename_classes(out_dir: str | os.PathLike, new_names: list[str]) -> dict[str, Any]:
    """Give a generated dataset other class names (label i becomes ``new_names[i]``), e.g. a preset's
    categories, so it can stand in for MUSIC / AVE / Kinetics in that dataset's scripts."""
    out = Path(out_dir)
    boxes = json.loads((out / "boxes.json").read_text())
    old_names = boxes["classes"]
    if len(new_names) != len(old_names) or len(set(new_names)) != len(new_names):
        raise ConfigError("num_classes", f"need {len(old_names)} distinct new names, got {len(new_names)}")
    mapping = dict(zip(old_names, new_names))
    for old, new in mapping.items():
        if old != new:
            (out / "videos" / old).rename(out / "videos" / new)
    boxes["classes"] = list(new_names)
    boxes["videos"] = {f"{mapping[key.split('/')[0]]}/{key.split('/')[1]}": meta
                       for key, meta in boxes["videos"].items()}
    for meta in boxes["videos"].values():
        distractor = meta.get("distractor")
        if distractor:
            distractor["class"] = mapping.get(distractor["class"], distractor["class"])
        if meta.get("audio_distractor"):
            meta["audio_distractor"] = mapping.get(meta["audio_distractor"], meta["audio_distractor"])
    write_text_atomic(out / "categories.txt", "".join(f"{name}\n" for name in new_names))
    write_json_atomic(out / "boxes.json", boxes)
    return boxes
