"""Build the SoP index files ``ROOT/{train,val,test}.csv`` from what is on disk under ROOT.

A video is indexed when ``ROOT/audio/<class>/<id>.wav`` exists and ``ROOT/frames/<class>/<id>.mp4/``
is a complete frame folder (an unfinished ``<id>.mp4.partial/`` does not count). The split is
stratified by class and deterministic for a seed. The index format is the released one, unquoted
CSV, so a class or video name holding a comma or a line break cannot be written: it is an error.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.index import DataError
from dataset.layout import FRAME_DIR_SUFFIX, audio_relpath, count_frames_on_disk, frames_relpath
from utils.fileio import write_text_atomic

SPLITS = ("train", "val", "test")
CATEGORIES_FILE = "categories.txt"
CSV_UNSAFE = (",", "\n", "\r")  # would split the unquoted row into other fields or lines


def csv_unsafe(name: str) -> bool:
    """Whether a class or video name cannot stand in an unquoted index row."""
    return any(char in name for char in CSV_UNSAFE)


@dataclass(frozen=True, order=True)
class Entry:
    cls: str
    vid: str
    num_frames: int

    def __post_init__(self) -> None:
        if csv_unsafe(self.cls) or csv_unsafe(self.vid):
            raise ValueError(f"class {self.cls!r} / video {self.vid!r}: a comma or line break cannot stand in "
                             "an unquoted index row")

    def csv_row(self) -> str:
        return f"{audio_relpath(self.cls, self.vid)},{frames_relpath(self.cls, self.vid)},{self.num_frames}"


def scan_root(root: str | Path, min_frames: int = 1) -> list[Entry]:
    """Every complete video under ``root`` with at least ``min_frames`` frames, sorted.

    Raises DataError listing every frame folder whose class or video name holds a comma or a line
    break (the unquoted index CSV cannot hold it; rename the video and its wav).
    """
    root = Path(root)
    frames_dir, audio_dir = root / "frames", root / "audio"
    for needed in (frames_dir, audio_dir):
        if not needed.is_dir():
            raise FileNotFoundError(f"{needed} not found (expected the layout written by scripts/preprocess.py)")
    entries = []
    unsafe: list[Path] = []
    for class_dir in sorted(frames_dir.iterdir()):
        if class_dir.name.startswith(".") or not class_dir.is_dir():
            continue
        for frame_dir in sorted(class_dir.iterdir()):
            name = frame_dir.name
            if name.startswith(".") or not name.endswith(FRAME_DIR_SUFFIX) or not frame_dir.is_dir():
                continue
            vid = name[: -len(FRAME_DIR_SUFFIX)]
            if not (audio_dir / class_dir.name / f"{vid}.wav").is_file():
                continue
            if csv_unsafe(class_dir.name) or csv_unsafe(vid):
                unsafe.append(frame_dir)
                continue
            num_frames = count_frames_on_disk(frame_dir)
            if num_frames >= min_frames:
                entries.append(Entry(class_dir.name, vid, num_frames))
    if unsafe:
        listed = ", ".join(repr(str(path)) for path in unsafe)
        raise DataError(f"{listed}: a comma or line break in the class or video name cannot stand in the "
                        "unquoted index CSV; rename the frame folder and its wav")
    return entries


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def class_folders(root: str | Path) -> list[str]:
    """The class folder names under ``root/frames`` and ``root/audio`` together, sorted."""
    root = Path(root)
    return sorted({p.name for sub in ("frames", "audio") for p in _visible_dirs(root / sub)})


def empty_classes(root: str | Path, entries: Sequence[Entry], listed: Sequence[str] = ()) -> list[str]:
    """Class folders (and classes ``listed`` in categories.txt) without a single indexed video."""
    indexed = {entry.cls for entry in entries}
    return sorted((set(class_folders(root)) | set(listed)) - indexed)


def unpaired_ids(root: str | Path) -> list[str]:
    """'<class>/<id>: frames without audio' / 'audio without frames' for every video that has one of the two
    (finished extractions only; hidden and temporary files are ignored)."""
    root = Path(root)
    frames, audio = root / "frames", root / "audio"
    with_frames = {(c.name, d.name[: -len(FRAME_DIR_SUFFIX)]) for c in _visible_dirs(frames)
                   for d in _visible_dirs(c) if d.name.endswith(FRAME_DIR_SUFFIX)}
    with_audio = {(c.name, f.name[: -len(".wav")]) for c in _visible_dirs(audio) for f in sorted(c.iterdir())
                  if f.is_file() and f.name.endswith(".wav") and not f.name.startswith(".")}
    return ([f"{cls}/{vid}: frames without audio" for cls, vid in sorted(with_frames - with_audio)]
            + [f"{cls}/{vid}: audio without frames" for cls, vid in sorted(with_audio - with_frames)])


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions: three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    train, val, test = values
    return train, val, test


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Apportion ``n`` items to the splits by largest remainder, then give every split with a
    non-zero fraction at least one item when ``n`` allows it, taking from the largest split."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
                counts[i] = 1
    return counts


def stratified_split(entries: Sequence[Entry], fractions: Sequence[float], seed: int) -> dict[str, list[Entry]]:
    """Shuffle each class with one ``np.random.default_rng(seed)`` (classes in sorted order) and cut
    it by ``fractions`` (train, val, test). Each split's list is sorted."""
    fractions = check_fractions(fractions)
    by_class: dict[str, list[Entry]] = defaultdict(list)
    for entry in sorted(entries):
        by_class[entry.cls].append(entry)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Entry]] = {name: [] for name in SPLITS}
    for cls in sorted(by_class):
        items = by_class[cls]
        order = rng.permutation(len(items))
        start = 0
        for name, count in zip(SPLITS, split_counts(len(items), fractions)):
            splits[name].extend(items[i] for i in order[start : start + count])
            start += count
    return {name: sorted(items) for name, items in splits.items()}


def write_index(root: str | Path, splits: dict[str, list[Entry]]) -> None:
    """Write ``root/<split>.csv`` for each split, atomically, rows as in ``dataset.layout``."""
    for name, items in splits.items():
        write_text_atomic(Path(root) / f"{name}.csv", "".join(entry.csv_row() + "\n" for entry in items))


def write_categories(root: str | Path, classes: Sequence[str]) -> bool:
    """Write ``root/categories.txt`` (sorted class names) unless one exists; return whether written."""
    path = Path(root) / CATEGORIES_FILE
    if path.exists():
        return False
    write_text_atomic(path, "".join(f"{cls}\n" for cls in sorted(set(classes))))
    return True


def format_table(splits: dict[str, list[Entry]]) -> str:
    """Per-class counts per split, with a total row."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for name, items in splits.items():
        for entry in items:
            counts[entry.cls][name] += 1
    width = max([len("class"), len("total"), *map(len, counts)])
    header = f"{'class':<{width}} " + " ".join(f"{name:>6}" for name in SPLITS) + f" {'all':>6}"
    lines = [header, "-" * len(header)]
    for cls in sorted(counts):
        row = counts[cls]
        lines.append(f"{cls:<{width}} " + " ".join(f"{row[n]:>6}" for n in SPLITS) + f" {sum(row.values()):>6}")
    totals = {n: len(splits.get(n, [])) for n in SPLITS}
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}} " + " ".join(f"{totals[n]:>6}" for n in SPLITS) + f" {sum(totals.values()):>6}")
    return "\n".join(lines)
