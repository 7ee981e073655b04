"""Audio windows shifted against the frames, for the audio-visual misalignment attacks.

A shift of ``s`` seconds centres the audio window on the frame's time plus ``s``: the audio comes ``s``
seconds later (``s > 0``) or earlier than the frames it is shown with. The windows are read from the wav on
disk, never wrapped around: a shifted window that runs past either end of the clip is marked invalid (and
filled with NaN so that using it by mistake cannot go unnoticed). The unshifted window stays the loader's
``audio`` (tiled as usual when the clip is shorter than the window).

At the wav's own rate, shift 0 reads exactly the samples of the loader's window. A wav at another rate is
resampled whole (polyphase) before the windows are cut, so its windows may differ from the loader's
(resampled per window) by the filter's edge effects.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.av_dataset import AVDataset
from dataset.index import DataError
from dataset.layout import frame_time
from dataset.wav_header import wav_truncation


def window_start(center_time: float, length: int, rate: int) -> int:
    """First sample of the ``length``-sample window centred on ``center_time`` (the loader's rule)."""
    return round(center_time * rate) - length // 2


def _read_mono(path: str, start: int, count: int) -> np.ndarray:
    data, _ = sf.read(path, start=start, frames=count, dtype="float32", always_2d=True)
    if data.shape[0] != count:
        raise DataError(f"audio {path}: read {data.shape[0]} samples where {count} were expected "
                        "(file shorter than its header says)")
    return data.mean(axis=1)


def shifted_windows(path: str, center_time: float, shifts: Sequence[float], length: int,
                    rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``[K, length]`` float32 windows (clipped to [-1, 1]) centred on ``center_time + shifts[k]`` seconds and
    ``[K]`` bool validity: a window that does not fit in the clip is invalid and NaN-filled."""
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises RuntimeError / LibsndfileError / FileNotFoundError
        raise DataError(f"audio {path}: cannot open ({err})") from None
    truncation = wav_truncation(path)
    if truncation is not None:
        raise DataError(f"audio {path}: {truncation}")
    ratio = Fraction(rate, info.samplerate)
    total = info.frames if ratio == 1 else math.floor(info.frames * ratio)
    starts = [window_start(center_time + s, length, rate) for s in shifts]
    valid = np.array([0 <= start and start + length <= total for start in starts], dtype=bool)
    windows = np.full((len(starts), length), np.nan, dtype=np.float32)
    if not valid.any():
        return windows, valid
    first = min(s for s, ok in zip(starts, valid) if ok)
    last = max(s for s, ok in zip(starts, valid) if ok) + length
    try:
        if ratio == 1:
            span, offset = _read_mono(path, first, last - first), first
        else:
            from scipy.signal import resample_poly  # imported here: scipy.signal takes ~1 s to import

            span = resample_poly(_read_mono(path, 0, info.frames), ratio.numerator, ratio.denominator)
            offset = 0
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"audio {path}: cannot read ({err})") from None
    for k, start in enumerate(starts):
        if valid[k]:
            windows[k] = np.clip(span[start - offset:start - offset + length], -1.0, 1.0)
    if not np.all(np.isfinite(windows[valid])):
        raise DataError(f"audio {path}: contains NaN or infinite samples")
    return windows, valid


class ShiftedAudio(Dataset):
    """An evaluation ``AVDataset`` whose items also hold ``audio_shifts`` float [K, 1, audLen] (the windows
    shifted by ``shifts`` seconds), ``shift_valid`` bool [K] and ``shift_seconds`` float [K]."""

    def __init__(self, dataset: AVDataset, shifts: Sequence[float]) -> None:
        if dataset.train:
            raise ValueError("ShiftedAudio needs an evaluation dataset (train=False): a training item's centre "
                             "frame is random")
        if not shifts:
            raise ValueError("ShiftedAudio needs at least one shift")
        self.dataset = dataset
        self.shifts = [float(s) for s in shifts]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> list[int]:
        return self.dataset.labels

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        data = self.dataset
        row = data.rows[index]
        center = frame_time(data.center_frame(row, None), data.frame_rate)
        wav = os.path.join(data.audio_path, row.audio_rel.lstrip("/"))
        try:
            windows, valid = shifted_windows(wav, center, self.shifts, data.aud_len, data.aud_rate)
        except DataError as err:
            raise DataError(f"{row.where}: {err}") from None
        item["audio_shifts"] = torch.from_numpy(windows).unsqueeze(1)
        item["shift_valid"] = torch.from_numpy(valid)
        item["shift_seconds"] = torch.tensor(self.shifts, dtype=torch.float32)
        return item


def with_audio_shifts(loader: Any, shifts: Sequence[float], build_loader) -> Any:
    """``loader`` rebuilt (``build_loader(dataset)``) over its ``AVDataset`` wrapped in ``ShiftedAudio``; a
    loader that already yields shifted windows, or that is not a DataLoader over an AVDataset (a caller's own
    batches), is returned as it is."""
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, AVDataset):
        return build_loader(ShiftedAudio(loader.dataset, shifts))
    return loader
