"""Tiny synthetic videos for tests, written with PyAV (no ffmpeg binary needed).

Each picture encodes its 0-based source frame index ``i`` as two flat gray halves: the left half
has level ``16 * (i % 16) + 8`` and the right half ``16 * (i // 16) + 8``. Steps of 16 gray levels
survive lossy coding and the YUV round trip, so ``frame_index_from_image`` recovers ``i`` for up to
256 frames from any decoded or extracted picture. Audio channel ``c`` is a sine at ``freqs[c]`` Hz.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Container extension -> (video codec, audio codec). AVI carries lossless PCM; WebM's Opus needs
# audio_rate 48000. Sizes must be even (yuv420p).
_CODECS = {
    ".mp4": ("h264", "aac"),
    ".mkv": ("h264", "aac"),
    ".avi": ("mpeg4", "pcm_s16le"),
    ".webm": ("libvpx", "libopus"),
}
SINE_AMPLITUDE = 0.4
SINE_FREQS = (440.0, 1000.0)


@dataclass(frozen=True)
class VideoSpec:
    """What ``make_test_video`` was asked to write at ``<root>/<cls>/<vid><ext>``."""

    cls: str
    vid: str
    ext: str
    seconds: float
    fps: int
    size: tuple[int, int]
    audio_rate: int | None
    channels: int = 1

    @property
    def num_source_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.cls / f"{self.vid}{self.ext}"

    def write(self, root: str | Path) -> Path:
        return make_test_video(self.path(root), self.seconds, self.fps, self.size, self.audio_rate, self.channels)


def frame_picture(index: int, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 picture ``[H, W, 3]`` encoding ``index`` (see the module docstring)."""
    if not 0 <= index < 256:
        raise ValueError(f"frame index {index} does not fit the 256-frame encoding")
    width, height = size
    picture = np.empty((height, width, 3), dtype=np.uint8)
    picture[:, : width // 2] = 16 * (index % 16) + 8
    picture[:, width // 2 :] = 16 * (index // 16) + 8
    return picture


def frame_index_from_image(picture: np.ndarray) -> int:
    """Inverse of ``frame_picture``: read the two halves' levels back from their centres."""
    height, width = picture.shape[:2]
    rows = slice(height // 4, 3 * height // 4)
    low = float(picture[rows, width // 8 : 3 * width // 8].mean())
    high = float(picture[rows, 5 * width // 8 : 7 * width // 8].mean())
    return int(round((high - 8) / 16)) * 16 + int(round((low - 8) / 16))


def sine_audio(seconds: float, rate: int, channels: int, freqs: tuple[float, ...]) -> np.ndarray:
    """float32 ``[channels, samples]`` with channel ``c`` a sine at ``freqs[c]``."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([SINE_AMPLITUDE * np.sin(2 * np.pi * freqs[c] * t) for c in range(channels)]).astype(
        np.float32
    )


def make_test_video(
    path: str | Path,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    audio_rate: int | None,
    channels: int = 1,
    freqs: tuple[float, ...] = SINE_FREQS,
) -> Path:
    """Write a video of ``round(seconds * fps)`` frames of ``size`` = (width, height) at ``fps``.

    ``audio_rate=None`` writes no audio track; otherwise ``channels`` (1 or 2) sines of
    ``seconds`` length at ``audio_rate``. Codecs follow the extension (see ``_CODECS``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video_codec, audio_codec = _CODECS[path.suffix.lower()]
    num_frames = int(round(seconds * fps))
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream(video_codec, rate=Fraction(fps))
        vstream.width, vstream.height = size
        vstream.pix_fmt = "yuv420p"
        if video_codec == "h264":
            vstream.options = {"preset": "ultrafast", "crf": "12"}
        else:
            vstream.bit_rate = 2_000_000
        astream = None
        if audio_rate is not None:
            layout = {1: "mono", 2: "stereo"}[channels]
            astream = container.add_stream(audio_codec, rate=audio_rate, layout=layout)

        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_picture(i, size), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))

        if astream is not None:
            samples = sine_audio(seconds, audio_rate, channels, freqs)
            block = 1024
            for start in range(0, samples.shape[1], block):
                chunk = samples[:, start : start + block]
                if astream.format.name == "s16":
                    data = (chunk.T * 32767).astype(np.int16).reshape(1, -1)
                    frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
                else:
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path
