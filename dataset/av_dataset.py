"""The SoP-layout audio-visual dataset: frames around a centre frame and the waveform centred on its time."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.device_decode import JpegClip
from dataset.geometry import crop_geometry, resize_target
from dataset.index import DataError, IndexRow, drop_bad_rows, frames_needed, read_index, stratified_subset
from dataset.layout import frame_name, frame_time
from dataset.media import decode_frame, load_audio_window, read_jpeg
from dataset.transforms import cut_window, frames_tensor, transform_audio


class AVDataset(Dataset):
    """Samples of one index CSV, for a DataLoader.

    Each item: ``frames`` **uint8** [3, T, H, W] (levels 0-255; ``dataset.loaders.to_device`` makes them the
    float [0, 1] pixels the models take, on the device), ``audio`` float [1, audLen] in [-1, 1],
    ``label``, ``index`` and ``info`` ("<class>/<id>"). With ``defer_decode`` an item carries ``jpeg``, the
    clip's encoded frames and crop (:class:`dataset.device_decode.JpegClip`), instead of ``frames``, for
    decoding on the device in ``to_device``.

    The random choices of a training item (centre frame, crop, flip, volume) come from a generator seeded by
    (seed, epoch, index), so they do not depend on the number of loader workers. The epoch lives in shared
    memory: :meth:`set_epoch` reaches loader workers that were started before it (persistent workers) as well
    as new ones; call it once per epoch, before iterating.

    Frames are decoded by Pillow (libjpeg-turbo); one stored at least twice as large as the resize target
    (shorter side) is decoded at a reduced JPEG scale (:func:`dataset.media.decode_frame`). Only the crop window
    is resampled (:func:`dataset.transforms.cut_window`), and only the audio window is read from the wav.

    A bad row raises DataError naming the CSV line and the file when the item is loaded — a missing or
    undecodable frame, a wav that cannot be read or is shorter than its header says, a frame count above
    the frames on disk (the row's last listed frame must exist). ``skip_bad`` checks every row once at
    start-up instead and drops and lists the bad ones. ``max_samples`` keeps a class-stratified subset
    (:func:`dataset.index.stratified_subset`).
    """

    def __init__(self, index_csv: str, audio_path: str, frame_path: str, categories: list[str], *,
                 num_frames: int = 1, stride_frames: int = 8, frame_rate: float = 8, img_size: int = 224,
                 aud_len: int = 65535, aud_rate: int = 11025, train: bool = False, seed: int = 0,
                 skip_bad: bool = False, check_workers: int = 8, max_samples: int | None = None,
                 defer_decode: bool = False) -> None:
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
        self.defer_decode = defer_decode
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
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

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

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
        paths = [os.path.join(frame_dir, frame_name(center - before + i * self.stride_frames))
                 for i in range(self.num_frames)]
        try:
            if self.defer_decode:
                visual = {"jpeg": self._read_clip(paths, row, rng)}
            else:
                visual = {"frames": self._decode_clip(paths, row, rng)}
            # a count above the frames on disk would shift the centre frame and the audio window silently
            self._check_exists(os.path.join(frame_dir, frame_name(row.num_frames)), row)
            wave = self._read_audio(wav, frame_time(center, self.frame_rate))
            audio = transform_audio(wave, self.train, rng)
        except DataError as err:
            raise DataError(f"{row.where}: {err}") from None
        return {**visual, "audio": audio, "label": torch.tensor(row.label, dtype=torch.long),
                "index": torch.tensor(index, dtype=torch.long), "info": row.info}

    @staticmethod
    def _check_exists(path: str, row: IndexRow) -> None:
        if not os.path.exists(path):
            raise DataError(f"frame {path}: file not found (the index says {row.num_frames} frames)")

    def _read_audio(self, path: str, center_time: float) -> np.ndarray:
        """The sample's mono waveform window, before the audio transform."""
        return load_audio_window(path, center_time, self.aud_len, self.aud_rate)

    def _decode_clip(self, paths: list[str], row: IndexRow, rng: np.random.Generator | None) -> torch.Tensor:
        """The clip's frames decoded and cut: uint8 [3, T, H, W]."""
        shorter = resize_target(self.img_size, self.train)
        windows, geometry = [], None
        for path in paths:
            self._check_exists(path, row)
            img, full_size, reduced_box = decode_frame(path, shorter)
            if geometry is None:
                geometry = crop_geometry(full_size, self.img_size, self.train, rng)
            windows.append(cut_window(img, full_size, geometry, reduced_box))
        return frames_tensor(windows)

    def _read_clip(self, paths: list[str], row: IndexRow, rng: np.random.Generator | None) -> JpegClip:
        """The clip's frames still encoded, with the crop the CPU path would draw."""
        data, sizes = [], []
        for path in paths:
            self._check_exists(path, row)
            encoded, size = read_jpeg(path)
            data.append(encoded)
            sizes.append(size)
        return JpegClip(data, sizes, crop_geometry(sizes[0], self.img_size, self.train, rng), paths, row.where)
