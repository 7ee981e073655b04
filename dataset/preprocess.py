"""Turn a tree of videos ``VIDEOS/<class>/<id>.<ext>`` into the SoP layout (see ``dataset.layout``).

    ROOT/frames/<class>/<id>.mp4/000001.jpg ...   frames at ``fps``; frame k shows time (k - 0.5) / fps
    ROOT/audio/<class>/<id>.wav                   mono PCM_16 at ``audio_rate``

Frames keep the video's own size unless ``frame_size`` asks for a shorter side of S pixels (aspect kept,
bicubic), e.g. 256 for Kinetics: a 1280 x 720 video's frames then hold an eighth of the pixels (less disk,
faster decoding in training), but a later ``--imgSize`` above S / 1.1 would have to upscale them (extract again
for larger crops).

Times are measured from the first decoded picture of the video stream and the waveform starts at
the first decoded audio sample, as ``ffmpeg -i v.mp4 -r 8 %06d.jpg`` and ``ffmpeg -i v.mp4 a.wav``
would do. Work is resumable: frames go to ``<id>.mp4.partial/`` and the folder is renamed when
complete; the wav is written atomically. A video whose frame folder and wav both exist is skipped.
"""
from __future__ import annotations

import io
import math
import multiprocessing
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from dataset.geometry import resized_size
from dataset.layout import FRAME_DIR_SUFFIX, VIDEO_EXTENSIONS, count_frames_on_disk, frame_name
from utils.fileio import atomic_path, write_text_atomic

PARTIAL_SUFFIX = ".partial"
FAILURES_FILE = "preprocess_failures.txt"
STATUSES = ("done", "skipped", "failed", "no_audio")


@dataclass
class VideoResult:
    """Outcome for one video. ``status`` is one of ``STATUSES``; ``message`` explains failures."""

    cls: str
    vid: str
    status: str
    num_frames: int = 0
    audio_seconds: float = 0.0
    message: str = ""

    @property
    def name(self) -> str:
        return f"{self.cls}/{self.vid}"


def find_videos(videos_dir: str | Path) -> list[tuple[str, str, Path]]:
    """``(class, id, path)`` for every ``videos_dir/<class>/<id>.<video ext>``, sorted.

    Dotfiles, hidden class folders and files with other extensions are ignored.
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos directory not found: {videos_dir}")
    found = []
    for class_dir in sorted(videos_dir.iterdir()):
        if class_dir.name.startswith(".") or not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
                continue
            found.append((class_dir.name, path.stem, path))
    return found


def output_paths(out_root: str | Path, cls: str, vid: str) -> tuple[Path, Path]:
    """(frame folder, wav path) of one video under ``out_root``."""
    out_root = Path(out_root)
    return out_root / "frames" / cls / f"{vid}{FRAME_DIR_SUFFIX}", out_root / "audio" / cls / f"{vid}.wav"


class _FrameWriter:
    """Writes output frame k as the last source picture whose time is <= (k - 0.5) / fps.

    Pictures are fed in presentation order. A picture is converted to JPEG only when some output
    frame shows it, and only once when several do (source slower than ``fps``); with ``frame_size`` it is
    first resized so that its shorter side is ``frame_size``.
    """

    def __init__(self, out_dir: Path, fps: Fraction, jpeg_quality: int, frame_size: int | None = None) -> None:
        self.out_dir = out_dir
        self.fps = fps
        self.jpeg_quality = jpeg_quality
        self.frame_size = frame_size
        self.written = 0
        self._held: av.VideoFrame | None = None
        self._held_jpeg: bytes | None = None

    def _next_time(self) -> Fraction:
        return Fraction(2 * self.written + 1, 2) / self.fps

    def _write_held(self) -> None:
        if self._held_jpeg is None:
            buffer = io.BytesIO()
            image = self._held.to_image()
            if self.frame_size is not None:
                size = resized_size(image.size, self.frame_size)
                image = image if size == image.size else image.resize(size, Image.BICUBIC)
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
            self._held_jpeg = buffer.getvalue()
        self.written += 1
        (self.out_dir / frame_name(self.written)).write_bytes(self._held_jpeg)

    def add(self, time: Fraction, picture: av.VideoFrame) -> None:
        if self._held is not None:
            while self._next_time() < time:
                self._write_held()
        self._held, self._held_jpeg = picture, None

    def finish(self, num_frames: int) -> None:
        """Pad with the last picture up to ``num_frames`` and drop any frame written beyond it."""
        while self.written < num_frames:
            self._write_held()
        for k in range(num_frames + 1, self.written + 1):
            (self.out_dir / frame_name(k)).unlink()
        self.written = num_frames


class _FrameClock:
    """Presentation time of each decoded picture relative to the first one, and the stream's end."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.time_base = Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        self.nominal_step = 1 / Fraction(rate) if rate else Fraction(0)
        self.first_pts: int | None = None
        self.last_time: Fraction | None = None
        self.last_step = self.nominal_step

    def time_of(self, picture: av.VideoFrame) -> Fraction:
        if picture.pts is None:  # some AVI/raw streams: continue from the previous picture
            time = Fraction(0) if self.last_time is None else self.last_time + self.nominal_step
        else:
            if self.first_pts is None:
                self.first_pts = picture.pts
            time = (picture.pts - self.first_pts) * self.time_base
        self.last_time = time
        self.last_step = picture.duration * self.time_base if picture.duration else self.nominal_step
        return time

    def duration(self) -> Fraction:
        return Fraction(0) if self.last_time is None else self.last_time + self.last_step


def _decode(
    path: Path, frames_partial: Path | None, need_audio: bool, fps: Fraction, audio_rate: int, jpeg_quality: int,
    frame_size: int | None = None,
) -> tuple[int | None, np.ndarray | None, str]:
    """Decode ``path`` once, writing frames into ``frames_partial`` when given and collecting audio.

    Returns (number of frames written or None, mono int16 waveform or None, no-audio reason).
    """
    with av.open(str(path)) as container:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        if frames_partial is not None and vstream is None:
            raise ValueError("no video stream")
        streams = []
        if frames_partial is not None:
            streams.append(vstream)
            writer = _FrameWriter(frames_partial, fps, jpeg_quality, frame_size)
            clock = _FrameClock(vstream)
        if need_audio and astream is not None:
            streams.append(astream)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=audio_rate)
            chunks: list[np.ndarray] = []
        if not streams:
            return None, None, "no audio track"

        for packet in container.demux(*streams):
            for decoded in packet.decode():
                if packet.stream is vstream:
                    writer.add(clock.time_of(decoded), decoded)
                else:
                    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(decoded))

        num_frames = None
        if frames_partial is not None:
            if clock.last_time is None:
                raise ValueError("no video frames decoded")
            num_frames = math.floor(clock.duration() * fps)
            if num_frames < 1:
                raise ValueError(f"video lasts {float(clock.duration()):.3f} s, less than one frame at {fps} fps")
            writer.finish(num_frames)

        if not (need_audio and astream is not None):
            return num_frames, None, "no audio track" if astream is None else ""
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        if sum(chunk.size for chunk in chunks) == 0:
            return num_frames, None, "audio track decodes to no samples"
        return num_frames, np.concatenate(chunks), ""


def extract_video(
    path: str | Path,
    out_root: str | Path,
    cls: str,
    vid: str,
    fps: float = 8,
    audio_rate: int = 11025,
    jpeg_quality: int = 95,
    frame_size: int | None = None,
) -> VideoResult:
    """Extract frames and audio of one video into ``out_root``; never raises for a bad video.

    Only the missing parts are produced: a complete frame folder is kept when the wav is missing,
    and vice versa (whatever ``frame_size`` it was written with). A video without an audio track keeps its
    frames and gets status 'no_audio'. ``frame_size``: shorter side of the stored frames (None: the video's).
    """
    frame_dir, wav_path = output_paths(out_root, cls, vid)
    need_frames = not frame_dir.is_dir()
    need_audio = not wav_path.is_file()
    partial = frame_dir.with_name(frame_dir.name + PARTIAL_SUFFIX)
    try:
        if not need_frames and not need_audio:
            return VideoResult(cls, vid, "skipped", count_frames_on_disk(frame_dir), sf.info(str(wav_path)).duration)
        if need_frames:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        num_frames, waveform, no_audio = _decode(
            Path(path), partial if need_frames else None, need_audio, Fraction(str(fps)), audio_rate, jpeg_quality,
            frame_size,
        )
        if need_frames:
            partial.rename(frame_dir)
        else:
            num_frames = count_frames_on_disk(frame_dir)
        if waveform is None and need_audio:
            return VideoResult(cls, vid, "no_audio", num_frames, 0.0, no_audio)
        if waveform is not None:
            with atomic_path(wav_path, suffix=".wav") as tmp:
                sf.write(str(tmp), waveform, audio_rate, subtype="PCM_16")
        audio_seconds = sf.info(str(wav_path)).duration
        return VideoResult(cls, vid, "done", num_frames, audio_seconds)
    except Exception as error:  # a broken video must not stop the others; report why instead
        if need_frames:
            shutil.rmtree(partial, ignore_errors=True)
        message = str(error).strip() or type(error).__name__
        return VideoResult(cls, vid, "failed", message=f"{type(error).__name__}: {message}")


def _extract_job(job: tuple) -> VideoResult:
    return extract_video(*job)


def preprocess_tree(
    videos_dir: str | Path,
    out_root: str | Path,
    fps: float = 8,
    audio_rate: int = 11025,
    workers: int = 1,
    jpeg_quality: int = 95,
    frame_size: int | None = None,
) -> list[VideoResult]:
    """Extract every video under ``videos_dir`` into ``out_root`` with ``workers`` processes.

    Writes ``out_root/preprocess_failures.txt`` (failed and no-audio videos, one per line) and
    returns the results sorted by class and id.
    """
    out_root = Path(out_root)
    results: list[VideoResult] = []
    jobs = []
    sources: dict[tuple[str, str], Path] = {}
    for cls, vid, path in find_videos(videos_dir):
        if (cls, vid) in sources:  # e.g. x.mp4 and x.mkv would both become frames/<cls>/x.mp4
            message = f"duplicate id: {path.name} and {sources[cls, vid].name} map to the same outputs"
            results.append(VideoResult(cls, vid, "failed", message=message))
            continue
        sources[cls, vid] = path
        jobs.append((path, out_root, cls, vid, fps, audio_rate, jpeg_quality, frame_size))

    out_root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), unit="video", desc="preprocess") as progress:
        for result in _run_jobs(jobs, workers):
            if result.status == "failed":
                progress.write(f"FAILED {result.name}: {result.message}")
            results.append(result)
            progress.update()

    results.sort(key=lambda r: (r.cls, r.vid))
    write_text_atomic(out_root / FAILURES_FILE, format_failures(results))
    return results


def _run_jobs(jobs: list[tuple], workers: int) -> Iterable[VideoResult]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_extract_job, jobs)
        return
    with multiprocessing.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_extract_job, jobs)


def format_failures(results: Iterable[VideoResult]) -> str:
    """Lines ``<class>/<id>\\t<status>\\t<message>`` for failed and no-audio videos."""
    return "".join(f"{r.name}\t{r.status}\t{r.message}\n" for r in results if r.status in ("failed", "no_audio"))


def format_summary(results: list[VideoResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    lines = [
        f"processed: {counts['done']}, skipped (already done): {counts['skipped']}, "
        f"failed: {counts['failed']}, no audio track: {counts['no_audio']}"
    ]
    lines += [f"  failed   {r.name}: {r.message}" for r in results if r.status == "failed"]
    lines += [f"  no audio {r.name}: {r.message} (frames kept, left out of the index)"
              for r in results if r.status == "no_audio"]
    return "\n".join(lines)
