"""The SoP-layout audio-visual dataset: frames around a centre frame and the waveform centred on its time."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.index import DataError, IndexRow, drop_bad_rows, frames_needed, read_index, stratified_subset
from dataset.layout import frame_name, frame_time
from dataset.media import load_audio_window, load_frame
from dataset.transforms import transform_audio, transform_frames


class AVDataset(Dataset):
    """Samples of one index CSV as the Batch of DESIGN.md.

    Each item: ``frames`` float [3, T, H, W] in [0, 1], ``audio`` float [1, audLen] in [-1, 1],
    ``label``, ``index`` and ``info`` ("<class>/<id>"). The random choices of a training item
    (centre frame, crop, flip, volume) come from a generator seeded by (seed, epoch, index), so they do
    not depend on the number of loader workers; call :meth:`set_epoch` once per epoch.

    A bad row raises DataError naming the CSV line and the file when the item is loaded — a missing or
    undecodable frame, a wav that cannot be read or is shorter than its header says, a frame count above
    the frames on disk (the row's last listed frame must exist). ``skip_bad`` checks every row once at
    start-up instead and drops and lists the bad ones. ``max_samples`` keeps a class-stratified subset
    (:func:`dataset.index.stratified_subset`).
    """

    def __init__(self, index_csv: str, audio_path: str, frame_path: str, categories: list[str], *,
                 num_frames: int = 1, stride_frames: int = 8, frame_rate: float = 8, img_size: int = 224,
                 aud_len: int = 65535, aud_rate: int = 11025, train: bool = False, seed: int = 0,
                 skip_bad: bool = False, check_workers: int = 8, max_samples: int | None = None) -> None:
        self.audio_path = str(audio_path)
        self.frame_path = str(frame_path)
        self.categories = list(categories)
        self.num_frames = num_frames
        self.stride_frames = stride_frames
        self.frame_rate = frame_rate
        self.img_size = img_size
        self.aud_len = aud_len
        self.aud_rate = aud_rate
        self.train = train
        self.seed = seed
        self.epoch = 0
        rows = read_index(index_csv, self.categories, frames_needed(num_frames, stride_frames))
        if max_samples is not None:
            rows = stratified_subset(rows, max_samples)
        if skip_bad:
            rows, bad = drop_bad_rows(rows, self.audio_path, self.frame_path, check_workers)
            if bad:
                print(f"--skip_bad: dropped {len(bad)} of {len(rows) + len(bad)} rows of {index_csv}:")
                for row, problem in bad:
                    print(f"  line {row.line}: {problem}")
            if not rows:
                raise DataError(f"{index_csv}: every row was dropped by --skip_bad")
        self.rows: list[IndexRow] = rows

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        return [row.label for row in self.rows]

    def _frame_offsets(self) -> tuple[int, int]:
        """Frames needed before and after the centre frame."""
        before = (self.num_frames // 2) * self.stride_frames
        after = (self.num_frames - 1 - self.num_frames // 2) * self.stride_frames
        return before, after

    def center_frame(self, row: IndexRow, rng: np.random.Generator | None) -> int:
        """1-based centre frame: random in train, kept away from the ends so the audio window fits
        when the clip is long enough; the middle of the clip in eval."""
        before, after = self._frame_offsets()
        lo, hi = 1 + before, row.num_frames - after
        if self.train and rng is not None:
            audio_margin = math.ceil(self.aud_len / self.aud_rate / 2 * self.frame_rate)
            lo_audio = 1 + max(before, audio_margin)
            hi_audio = row.num_frames - max(after, audio_margin)
            if lo_audio <= hi_audio:
                lo, hi = lo_audio, hi_audio
            return int(rng.integers(lo, hi + 1))
        return lo + (hi - lo) // 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        center = self.center_frame(row, rng)
        frame_dir = os.path.join(self.frame_path, row.frames_rel.lstrip("/"))
        wav = os.path.join(self.audio_path, row.audio_rel.lstrip("/"))
        before, _ = self._frame_offsets()
        try:
            imgs = []
            for i in range(self.num_frames):
                k = center - before + i * self.stride_frames
                path = os.path.join(frame_dir, frame_name(k))
                if not os.path.exists(path):
                    raise DataError(f"frame {path}: file not found (the index says {row.num_frames} frames)")
                imgs.append(load_frame(path))
            # a count above the frames on disk would shift the centre frame and the audio window silently
            last = os.path.join(frame_dir, frame_name(row.num_frames))
            if not os.path.exists(last):
                raise DataError(f"frame {last}: file not found (the index says {row.num_frames} frames)")
            wave = load_audio_window(wav, frame_time(center, self.frame_rate), self.aud_len, self.aud_rate)
            frames = transform_frames(imgs, self.img_size, self.train, rng)
            audio = transform_audio(wave, self.train, rng)
        except DataError as err:
            raise DataError(f"{row.where}: {err}") from None
        return {"frames": frames, "audio": audio, "label": torch.tensor(row.label, dtype=torch.long),
                "index": torch.tensor(index, dtype=torch.long), "info": row.info}
