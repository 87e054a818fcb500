import math

import numpy as np
import pytest

from bertpooled.report.stats import mcnemar_exact, mean_ci, paired_difference


def _outcomes(b: int, c: int, both_right: int = 0, both_wrong: int = 0):
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return a, bb


def test_mcnemar_matches_the_exact_binomial_answer():
    a, b = _outcomes(10, 2, both_right=50, both_wrong=7)
    result = mcnemar_exact(a, b)
    assert (result.b, result.c, result.n) == (10, 2, 69)
    # 2 * P(X <= 2; n=12, p=0.5) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert result.p_value == pytest.approx(0.0386, abs=1e-4)


def test_mcnemar_is_symmetric_in_direction():
    a, b = _outcomes(2, 10)
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (2, 10)
    assert result.p_value == pytest.approx(2 * 79 / 4096)


def test_mcnemar_without_discordant_pairs_has_p_one():
    a, b = _outcomes(0, 0, both_right=30, both_wrong=5)
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (0, 0)
    assert result.p_value == 1.0


def test_mcnemar_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="pair them"):
        mcnemar_exact([True, False], [True])


def test_mean_ci_known_values():
    result = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302653
    half_width = 4.302652729911275 / math.sqrt(3)
    assert result.mean == pytest.approx(2.0)
    assert result.low == pytest.approx(2.0 - half_width)
    assert result.high == pytest.approx(2.0 + half_width)
    assert result.n == 3


def test_mean_ci_single_value_has_nan_bounds():
    result = mean_ci([0.8])
    assert result.mean == 0.8
    assert math.isnan(result.low) and math.isnan(result.high)


def test_mean_ci_identical_values_give_zero_width():
    result = mean_ci([0.5, 0.5, 0.5])
    assert result.low == pytest.approx(0.5) and result.high == pytest.approx(0.5)


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(20240611)
    true_mean = 3.0
    samples = rng.normal(loc=true_mean, scale=2.0, size=(2000, 5))
    covered = 0
    for sample in samples:
        interval = mean_ci(sample, confidence=0.95)
        covered += interval.low <= true_mean <= interval.high
    assert 0.93 <= covered / len(samples) <= 0.97


def test_paired_difference_known_values():
    a = [1.0, 2.0, 3.5]
    b = [0.5, 1.7, 3.0]
    result = paired_difference(a, b)
    # differences 0.5, 0.3, 0.5: mean 13/30, sd 0.11547, t = 6.5 on 2 df
    assert result.mean == pytest.approx(13 / 30)
    assert result.p_value == pytest.approx(0.0228602, abs=1e-6)
    half_width = 4.302652729911275 * (0.2 / math.sqrt(3)) / math.sqrt(3)
    assert result.low == pytest.approx(13 / 30 - half_width)
    assert result.high == pytest.approx(13 / 30 + half_width)
    assert result.n == 3 and result.reason is None


def test_paired_difference_needs_two_pairs():
    result = paired_difference([0.8], [0.7])
    assert result.mean == pytest.approx(0.1)
    assert math.isnan(result.p_value) and math.isnan(result.low)
    assert "at least 2" in result.reason


def test_paired_difference_identical_differences_are_flagged():
    result = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert result.mean == 0.0
    assert math.isnan(result.p_value)
    assert result.reason is not None


def test_paired_difference_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0, 2.0], [1.0])
