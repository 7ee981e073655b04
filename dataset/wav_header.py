"""Catch WAV files cut short after their header was written.

libsndfile (behind soundfile) trusts the bytes on disk: a wav whose data chunk was cut short (an
interrupted copy or download) opens without an error as the shorter clip it now holds, and
``sf.info(path).frames`` counts the frames present, not the frames the header declares. So the
header's data-chunk size is read here and compared with the bytes that follow it.

RIFF/WAVE (also WAVE_FORMAT_EXTENSIBLE) and RF64 files are checked. Other containers, and wavs
streamed with an unknown data size (0xFFFFFFFF, as a writer to a pipe leaves it), carry no length
to compare against and are left to libsndfile.
"""
from __future__ import annotations

import os
import struct

_UNKNOWN_SIZE = 0xFFFFFFFF


def _declared_data(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(declared data bytes, bytes present after the data chunk header, block align), or None when
    the file is not a RIFF/RF64 WAVE or declares no usable size."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        rf64_data_size = None
        block_align = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = struct.unpack("<4sI", chunk)
            if chunk_id == b"data":
                if size == _UNKNOWN_SIZE:
                    if rf64_data_size is None:
                        return None
                    size = rf64_data_size
                if block_align <= 0:
                    return None
                return size, file_size - f.tell(), block_align
            body = f.read(size) if chunk_id in (b"fmt ", b"ds64") else b""
            if chunk_id == b"fmt " and len(body) >= 14:
                block_align = struct.unpack_from("<H", body, 12)[0]
            elif chunk_id == b"ds64" and len(body) >= 16:
                rf64_data_size = struct.unpack_from("<Q", body, 8)[0]
            f.seek(f.tell() + size - len(body) + (size & 1))


def wav_truncation(path: str | os.PathLike) -> str | None:
    """How a wav falls short of its header (``"header says N frames, file holds M"``), or None when it
    holds every declared frame or declares no length."""
    declared = _declared_data(path)
    if declared is None:
        return None
    size, present, block_align = declared
    declared_frames = size // block_align
    present_frames = min(size, present) // block_align
    if present_frames >= declared_frames:
        return None
    return f"header says {declared_frames} frames, file holds {present_frames} (truncated)"
