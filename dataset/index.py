"""Index CSVs of the SoP layout: parsing, validation and the optional start-up check of the files.

A row is ``/<class>/<id>.wav,/<class>/<id>.mp4,<num_frames>``. Everything that can be wrong with a
row is reported as a :class:`DataError` naming the CSV file and line, never papered over.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from dataset.layout import count_frames_on_disk, frame_name, split_relpath
from dataset.wav_header import wav_truncation


class DataError(ValueError):
    """A sample, file or index row that cannot be used; the message names where it came from.

    The message is one line. A DataLoader worker hands its exception to the main process as text and
    PyTorch re-raises it there as ``DataError("Caught DataError in DataLoader worker process 0.\\n
    Original Traceback ...")`` (``torch._utils.ExceptionWrapper.reraise``); the constructor recognises
    that form and keeps only the original message, so ``str(err)`` reads the same with or without workers.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_message_from_worker(type(self), message))


def _message_from_worker(cls: type, message: str) -> str:
    """The original message inside a worker re-raise of ``cls``; any other message unchanged."""
    if not (isinstance(message, str) and message.startswith(f"Caught {cls.__name__} ")
            and "\nOriginal Traceback" in message):
        return message
    # traceback.format_exception ends with "<module>.<qualname>: <message>" ("<qualname>: ..." for
    # builtins and __main__); the worker's message is what follows the last such line's prefix.
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    lines = message.rstrip("\n").split("\n")
    for i in range(len(lines) - 1, 0, -1):
        for prefix in prefixes:
            if lines[i].startswith(prefix):
                return "\n".join([lines[i][len(prefix):], *lines[i + 1:]])
    return message


@dataclass(frozen=True)
class IndexRow:
    audio_rel: str
    frames_rel: str
    num_frames: int
    cls: str
    vid: str
    label: int
    csv_path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.csv_path} line {self.line}"

    @property
    def info(self) -> str:
        return f"{self.cls}/{self.vid}"


def frames_needed(num_frames: int, stride_frames: int) -> int:
    """Frames a clip must have so that ``num_frames`` frames ``stride_frames`` apart fit in it."""
    return (num_frames - 1) * stride_frames + 1


def read_index(csv_path: str | os.PathLike, categories: list[str], min_frames: int = 1) -> list[IndexRow]:
    """Parse and validate an index CSV; raises DataError naming the first bad line."""
    csv_path = str(csv_path)
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: index file not found (build it with scripts/create_index.py)")
    label_of = {name: i for i, name in enumerate(categories)}
    rows: list[IndexRow] = []
    with open(csv_path, newline="") as f:
        for line_no, fields in enumerate(csv.reader(f), start=1):
            if not fields or all(not x.strip() for x in fields):
                continue
            rows.append(_parse_row(fields, label_of, csv_path, line_no, min_frames))
    if not rows:
        raise DataError(f"{csv_path}: no samples in the index")
    return rows


def _parse_row(fields: list[str], label_of: dict[str, int], csv_path: str, line_no: int,
               min_frames: int) -> IndexRow:
    where = f"{csv_path} line {line_no}"
    if len(fields) != 3:
        raise DataError(f"{where}: expected 3 fields '/<class>/<id>.wav,/<class>/<id>.mp4,<num_frames>', "
                        f"got {len(fields)}: {','.join(fields)!r}")
    audio_rel, frames_rel, count = (x.strip() for x in fields)
    try:
        a_cls, a_file = split_relpath(audio_rel)
        f_cls, f_file = split_relpath(frames_rel)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    if not a_file.endswith(".wav"):
        raise DataError(f"{where}: audio path {audio_rel!r} is not a .wav file")
    if a_cls != f_cls:
        raise DataError(f"{where}: audio class {a_cls!r} differs from frame class {f_cls!r}")
    try:
        num_frames = int(count)
    except ValueError:
        raise DataError(f"{where}: frame count {count!r} is not an integer") from None
    if num_frames < min_frames:
        raise DataError(f"{where}: {num_frames} frames, but the clip needs at least {min_frames} "
                        "(num_frames and stride_frames ask for that many)")
    if a_cls not in label_of:
        raise DataError(f"{where}: class {a_cls!r} is not in --categories ({len(label_of)} classes: "
                        f"{', '.join(label_of)})")
    return IndexRow(audio_rel, frames_rel, num_frames, a_cls, Path(a_file).stem, label_of[a_cls],
                    csv_path, line_no)


def stratified_subset(rows: list[IndexRow], count: int) -> list[IndexRow]:
    """``count`` rows spread over the classes, for quick runs (``--max_samples``).

    Classes take turns in label order, each taking its next row in CSV order, until ``count`` rows are
    taken: every class gets ``count // classes`` rows, the first ``count % classes`` classes one more,
    and a class with too few rows gives its share to the others. Deterministic; the result keeps the
    CSV order. An index of at most ``count`` rows is returned whole.
    """
    if count >= len(rows):
        return list(rows)
    by_label: dict[int, list[IndexRow]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    queues = [by_label[label] for label in sorted(by_label)]
    taken: list[IndexRow] = []
    depth = 0
    while len(taken) < count:
        for queue in queues:
            if depth < len(queue) and len(taken) < count:
                taken.append(queue[depth])
        depth += 1
    return sorted(taken, key=lambda row: row.line)


def _is_complete_jpeg(path: str) -> bool:
    """JPEG start-of-image marker at the start and end-of-image marker at the end (a cheap truncation test)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-2, os.SEEK_END)
            tail = f.read(2)
    except OSError:
        return False
    return head == b"\xff\xd8" and tail == b"\xff\xd9"


def row_problem(row: IndexRow, audio_path: str, frame_path: str) -> str | None:
    """What is wrong with a row's files on disk, or None when the wav and every listed frame look usable."""
    wav = os.path.join(audio_path, row.audio_rel.lstrip("/"))
    try:
        info = sf.info(wav)
    except Exception as err:  # soundfile raises several types for missing and corrupt files
        return f"audio {wav}: {err}"
    if info.frames <= 0:
        return f"audio {wav}: no samples"
    truncation = wav_truncation(wav)
    if truncation is not None:
        return f"audio {wav}: {truncation}"
    frame_dir = os.path.join(frame_path, row.frames_rel.lstrip("/"))
    if not os.path.isdir(frame_dir):
        return f"frames {frame_dir}: folder not found"
    on_disk = count_frames_on_disk(frame_dir)
    if on_disk < row.num_frames:
        return f"frames {frame_dir}: index says {row.num_frames} frames, {on_disk} on disk"
    for k in range(1, row.num_frames + 1):
        path = os.path.join(frame_dir, frame_name(k))
        if not _is_complete_jpeg(path):
            return f"frame {path}: not a complete JPEG"
    return None


def drop_bad_rows(rows: list[IndexRow], audio_path: str, frame_path: str,
                  workers: int = 8) -> tuple[list[IndexRow], list[tuple[IndexRow, str]]]:
    """Check every row's files once (threads, progress bar); return the good rows and the dropped ones."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = list(tqdm(pool.map(lambda r: row_problem(r, audio_path, frame_path), rows),
                             total=len(rows), desc="checking index", leave=False))
    good = [r for r, p in zip(rows, problems) if p is None]
    bad = [(r, p) for r, p in zip(rows, problems) if p is not None]
    return good, bad
