"""On-disk conventions of the Sound-of-Pixels (SoP) layout, shared by every tool that reads or writes it.

    ROOT/audio/<class>/<id>.wav             mono waveform at the audio rate (11025 Hz in the paper)
    ROOT/frames/<class>/<id>.mp4/000001.jpg frames at the frame rate (8 fps in the paper), 1-based
    ROOT/{train,val,test}.csv               rows "/<class>/<id>.wav,/<class>/<id>.mp4,<num_frames>"

Frame ``k`` (1-based) stands for the interval [(k-1)/fps, k/fps) of the video and is the picture
shown at the middle of that interval, so its timestamp is (k - 0.5) / fps. The preprocessing picks
frames by that rule and the loader centres the audio window on the same time.
"""
from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
FRAME_DIR_SUFFIX = ".mp4"  # SoP names every frame folder <id>.mp4, whatever the source container


def frame_name(k: int) -> str:
    """File name of the 1-based frame ``k``."""
    return f"{k:06d}.jpg"


def frame_time(k: int, fps: float) -> float:
    """Timestamp in seconds of the 1-based frame ``k`` extracted at ``fps``."""
    return (k - 0.5) / fps


def audio_relpath(cls: str, vid: str) -> str:
    return f"/{cls}/{vid}.wav"


def frames_relpath(cls: str, vid: str) -> str:
    return f"/{cls}/{vid}{FRAME_DIR_SUFFIX}"


def count_frames_on_disk(frame_dir: str | os.PathLike) -> int:
    """Number of consecutive frames 000001.jpg, 000002.jpg, ... present in ``frame_dir``."""
    names = {entry.name for entry in os.scandir(frame_dir)}
    count = 0
    while frame_name(count + 1) in names:
        count += 1
    return count


def split_relpath(relpath: str) -> tuple[str, str]:
    """Split '/<class>/<file>' into (class, file). Raises ValueError when it is not two components."""
    parts = Path(relpath.strip().lstrip("/")).parts
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected '/<class>/<file>', got {relpath!r}")
    return parts[0], parts[1]
