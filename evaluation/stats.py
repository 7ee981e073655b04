"""Intervals and tests for the project's tables: the Wilson score interval of a proportion, the exact McNemar
test of two models on the same samples, and one printed form for a proportion with its interval.

* Wilson (1927): the interval of the proportions p whose score test at level 1 - confidence accepts k
  successes out of n, i.e. (p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n). Unlike the normal
  ("Wald") interval it stays inside [0, 1] and is not empty at 0/n or n/n.
* Exact McNemar: only the discordant samples (one model right, the other wrong) carry information; under
  the null hypothesis of equal accuracy each is a fair coin, so with b and c the two discordant counts
  p = min(1, 2·P(X <= min(b, c))), X ~ Binomial(b + c, 1/2), and p = 1 when b + c = 0.
"""
from __future__ import annotations

import operator
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05


def _count(value: object, name: str) -> int:
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a whole number, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of the proportion ``successes / n``, as fractions in [0, 1].

    ``n = 0`` carries no information and gives the whole range ``(0.0, 1.0)``.
    """
    successes, n = _count(successes, "successes"), _count(n, "n")
    if successes > n:
        raise ValueError(f"successes ({successes}) exceed the number of samples ({n})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    scale = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * (p * (1.0 - p) / n + z * z / (4 * n * n)) ** 0.5
    # the bounds are exactly 0 and 1 at 0/n and n/n; rounding must not move them off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


class McNemarResult(NamedTuple):
    """The exact McNemar test of models A and B on the same ``n`` samples."""

    b: int  # samples A got right and B wrong
    c: int  # samples A got wrong and B right
    n: int  # paired samples
    p_value: float  # two-sided

    def significant(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """Whether the two accuracies differ at level ``alpha`` (p < alpha)."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        return self.p_value < alpha


def _per_sample_outcomes(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one outcome per sample (1-D), got shape {array.shape}")
    if array.dtype != bool:
        if array.size and not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
            raise ValueError(f"{name} must hold booleans (or 0/1), got dtype {array.dtype}")
        array = array.astype(bool)
    return array


def mcnemar_exact(correct_a: object, correct_b: object) -> McNemarResult:
    """Exact two-sided McNemar test of two models' per-sample correctness (booleans or 0/1, sample ``i`` of
    both sequences being the same sample)."""
    a = _per_sample_outcomes(correct_a, "correct_a")
    b_ = _per_sample_outcomes(correct_b, "correct_b")
    if a.shape != b_.shape:
        raise ValueError(f"correct_a and correct_b must cover the same samples: {a.size} vs {b_.size} outcomes")
    only_a = int((a & ~b_).sum())
    only_b = int((~a & b_).sum())
    discordant = only_a + only_b
    if discordant == 0:
        p_value = 1.0
    else:
        from scipy.stats import binom  # imported here: scipy.stats takes ~1 s to import

        p_value = min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), discordant, 0.5)))
    return McNemarResult(b=only_a, c=only_b, n=int(a.size), p_value=p_value)


def _format_proportion(successes: int, n: int, scale: float, digits: int, interval_digits: int,
                       confidence: float) -> str:
    if _count(n, "n") == 0:
        raise ValueError("no samples: a proportion of 0 samples has no value to print")
    low, high = wilson_interval(successes, n, confidence)
    return (f"{scale * successes / n:.{digits}f} "
            f"[{scale * low:.{interval_digits}f}, {scale * high:.{interval_digits}f}]")


def format_accuracy(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> str:
    """A proportion in percent with its Wilson interval, e.g. ``"64.58 [54.6, 73.4]"`` for 62/96."""
    return _format_proportion(successes, n, 100.0, 2, 1, confidence)


def format_fraction(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> str:
    """A proportion as a fraction with its Wilson interval, e.g. ``"0.646 [0.546, 0.734]"`` for 62/96."""
    return _format_proportion(successes, n, 1.0, 3, 3, confidence)
