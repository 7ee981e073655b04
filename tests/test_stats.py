"""Wilson intervals against published values, the exact McNemar test against hand-counted binomial tails and
scipy's binomial test, and the printed form of a proportion."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from evaluation.stats import McNemarResult, format_accuracy, format_fraction, mcnemar_exact, wilson_interval

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857-872,
# Table II, method 3 (Wilson score interval without continuity correction), 95%.
NEWCOMBE_WILSON_95 = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("successes", "n", "low", "high"), NEWCOMBE_WILSON_95)
def test_wilson_matches_newcombes_published_intervals(successes: int, n: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=5e-5) and got_high == pytest.approx(high, abs=5e-5)


def test_wilson_at_zero_and_all_successes() -> None:
    z = norm.ppf(0.975)
    for n in (1, 7, 100):
        # at 0/n the score test's boundary solves n·p = z·sqrt(n·p(1-p)): p = z² / (n + z²)
        assert wilson_interval(0, n) == (0.0, pytest.approx(z * z / (n + z * z)))
        assert wilson_interval(n, n) == (pytest.approx(n / (n + z * z)), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_is_symmetric_and_widens_with_confidence() -> None:
    low, high = wilson_interval(15, 148)
    flipped_low, flipped_high = wilson_interval(148 - 15, 148)
    assert flipped_low == pytest.approx(1 - high) and flipped_high == pytest.approx(1 - low)
    wide_low, wide_high = wilson_interval(15, 148, confidence=0.99)
    assert wide_low < low < 15 / 148 < high < wide_high
    narrow_low, narrow_high = wilson_interval(150, 1480)
    assert low < narrow_low and narrow_high < high


@pytest.mark.parametrize(("successes", "n", "confidence", "error"), [
    (5, 4, 0.95, ValueError),
    (-1, 4, 0.95, ValueError),
    (1, 4, 1.0, ValueError),
    (1, 4, 0.0, ValueError),
    (1.5, 4, 0.95, TypeError),
])
def test_wilson_refuses_impossible_counts(successes, n, confidence, error) -> None:
    with pytest.raises(error):
        wilson_interval(successes, n, confidence)


def test_mcnemar_exact_p_value_of_one_against_nine() -> None:
    # A right and B wrong on 1 sample, the reverse on 9, both right on 5, both wrong on 3
    correct_a = [True] * 1 + [False] * 9 + [True] * 5 + [False] * 3
    correct_b = [False] * 1 + [True] * 9 + [True] * 5 + [False] * 3
    result = mcnemar_exact(correct_a, correct_b)
    assert (result.b, result.c, result.n) == (1, 9, 18)
    assert result.p_value == pytest.approx(2 * (comb(10, 0) + comb(10, 1)) / 2**10)  # 0.021484375
    assert result.significant() and not result.significant(alpha=0.01)


@pytest.mark.parametrize(("only_a", "only_b"), [(0, 5), (3, 3), (4, 7), (12, 30), (2, 1)])
def test_mcnemar_agrees_with_scipys_binomial_test_and_is_symmetric(only_a: int, only_b: int) -> None:
    correct_a = np.array([1] * only_a + [0] * only_b + [1, 0])
    correct_b = np.array([0] * only_a + [1] * only_b + [1, 0])
    result = mcnemar_exact(correct_a, correct_b)
    reference = binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p_value == pytest.approx(reference, rel=1e-12)
    swapped = mcnemar_exact(correct_b, correct_a)
    assert (swapped.b, swapped.c) == (only_b, only_a) and swapped.p_value == pytest.approx(result.p_value)


def test_mcnemar_without_discordant_pairs_and_on_tensors() -> None:
    same = torch.tensor([True, False, True])
    assert mcnemar_exact(same, same) == McNemarResult(b=0, c=0, n=3, p_value=1.0)
    assert mcnemar_exact([], []) == McNemarResult(b=0, c=0, n=0, p_value=1.0)
    assert not mcnemar_exact(same, same).significant()


def test_mcnemar_refuses_mismatched_or_non_boolean_outcomes() -> None:
    with pytest.raises(ValueError, match="same samples"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="booleans"):
        mcnemar_exact([0.3, 1.0], [1, 0])
    with pytest.raises(ValueError, match="1-D"):
        mcnemar_exact([[True]], [[False]])
    with pytest.raises(ValueError, match="alpha"):
        mcnemar_exact([True], [False]).significant(alpha=1.5)


def test_printed_proportions_carry_the_wilson_interval() -> None:
    # 81/263 = 0.30798..., interval 0.2553-0.3662 (Newcombe 1998)
    assert format_accuracy(81, 263) == "30.80 [25.5, 36.6]"
    assert format_fraction(81, 263) == "0.308 [0.255, 0.366]"
    assert format_accuracy(0, 20) == "0.00 [0.0, 16.1]"
    with pytest.raises(ValueError, match="no samples"):
        format_accuracy(0, 0)
