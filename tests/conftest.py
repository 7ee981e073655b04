from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers_video import VideoSpec

# Containers, codecs and frame rates on both sides of 8 fps (16 fps puts source pictures exactly on
# the output times); stereo AAC and lossless stereo PCM.
TEST_VIDEO_SPECS = (
    VideoSpec("music", "fast", ".mp4", seconds=2.2, fps=25, size=(64, 48), audio_rate=22050),
    VideoSpec("music", "slow", ".mkv", seconds=2.2, fps=5, size=(64, 48), audio_rate=44100, channels=2),
    VideoSpec("speech", "pcm", ".avi", seconds=1.6, fps=25, size=(48, 32), audio_rate=16000, channels=2),
    VideoSpec("speech", "opus", ".webm", seconds=1.3, fps=10, size=(64, 48), audio_rate=48000),
    VideoSpec("speech", "silent", ".mp4", seconds=1.5, fps=16, size=(64, 48), audio_rate=None),
)


@pytest.fixture(scope="session")
def video_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, VideoSpec]]:
    """A read-only ``<root>/<class>/<id>.<ext>`` tree of tiny videos plus files that are not videos.

    Returns (root, {"<class>/<id>": spec}). Copy it before changing anything in it.
    """
    root = tmp_path_factory.mktemp("videos")
    for spec in TEST_VIDEO_SPECS:
        spec.write(root)
    (root / "speech" / "notes.txt").write_text("not a video")
    (root / "speech" / ".hidden.mp4").write_bytes(b"not a video either")
    (root / "README.md").write_text("top-level files are not classes")
    return root, {f"{spec.cls}/{spec.vid}": spec for spec in TEST_VIDEO_SPECS}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: on a busy 2-core machine two threads of tiny convolutions
    run many times slower, and one thread gives the same arithmetic in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
