"""Warnings about a dataset that loads but may train badly, for scripts/dataset_stats.py."""
from __future__ import annotations

from dataset.index import IndexRow

# A split whose largest class has more than this many times the samples of its smallest is reported.
IMBALANCE_RATIO = 2.0
EXAMPLES_SHOWN = 3


def class_counts(rows: list[IndexRow], num_classes: int) -> list[int]:
    """Samples per label."""
    counts = [0] * num_classes
    for row in rows:
        counts[row.label] += 1
    return counts


def imbalance_warning(split: str, counts: list[int], categories: list[str]) -> str | None:
    """A warning when a split misses classes or its largest class outnumbers its smallest by more than
    IMBALANCE_RATIO, else None."""
    empty = [name for name, count in zip(categories, counts) if count == 0]
    if empty:
        return f"{split}: no samples of {len(empty)} of {len(categories)} classes: {', '.join(empty)}"
    largest = max(range(len(counts)), key=lambda i: counts[i])
    smallest = min(range(len(counts)), key=lambda i: counts[i])
    ratio = counts[largest] / counts[smallest]
    if ratio <= IMBALANCE_RATIO:
        return None
    return (f"{split}: classes are imbalanced: {categories[largest]} has {counts[largest]} samples, "
            f"{categories[smallest]} {counts[smallest]} ({ratio:.1f}x); accuracy is dominated by the large classes")


def short_audio_warning(rows: list[IndexRow], seconds: list[float], aud_len: int, aud_rate: int) -> str | None:
    """A warning naming the clips whose audio is shorter than the window the loader cuts (it tiles them),
    else None."""
    window = aud_len / aud_rate
    short = [(row, length) for row, length in zip(rows, seconds) if length < window]
    if not short:
        return None
    examples = ", ".join(f"{row.where} {row.info} ({length:.2f} s)" for row, length in short[:EXAMPLES_SHOWN])
    more = ", ..." if len(short) > EXAMPLES_SHOWN else ""
    return (f"{len(short)} of {len(rows)} clips have less audio than the {window:.2f} s window (--audLen {aud_len} "
            f"at --audRate {aud_rate}); the loader repeats their audio to fill it: {examples}{more}")
