"""Named wrappers around scipy.stats for the comparisons a report makes.

Every statistic here is computed by scipy; this module only names the question
each one answers, fixes the edge cases a report meets (one seed, no discordant
pairs, identical differences) and returns small frozen records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

__all__ = [
    "McNemarResult",
    "MeanCI",
    "PairedDifference",
    "mcnemar_exact",
    "mean_ci",
    "paired_difference",
]


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with a two-sided t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def to_dict(self) -> dict:
        """The fields as a plain dict (NaN kept as float NaN)."""
        return asdict(self)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired binary outcomes.

    ``b`` counts examples A got right and B got wrong, ``c`` the reverse;
    ``n`` is the number of paired examples.
    """

    b: int
    c: int
    n: int
    p_value: float

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over pairs, its t confidence interval and paired t-test p-value.

    ``reason`` says why the interval or p-value is NaN (``None`` when both are finite).
    """

    mean: float
    low: float
    high: float
    p_value: float
    n: int
    confidence: float
    reason: str | None = None

    def to_dict(self) -> dict:
        """The fields as a plain dict (NaN kept as float NaN)."""
        return asdict(self)


def _as_float_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; drop missing values before calling")
    return array


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` with a two-sided Student-t interval at ``confidence``.

    The interval is scipy's one-sample t-test interval (mean ± t * standard error,
    n - 1 degrees of freedom). With n = 1 there is no spread to estimate, so the
    bounds are NaN; with n = 0 the mean is NaN too. Identical values give a
    zero-width interval.
    """
    array = _as_float_array(values, "values")
    n = int(array.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(np.mean(array))
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, confidence)
    with warnings.catch_warnings():
        # scipy warns about precision loss on (nearly) identical values; the
        # zero-width interval it still returns is the right answer here.
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = _sps.ttest_1samp(array, popmean=0.0).confidence_interval(confidence)
    return MeanCI(mean, float(interval.low), float(interval.high), n, confidence)


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemarResult:
    """Exact McNemar test: do classifiers A and B err on the same examples equally often?

    ``correct_a[i]`` and ``correct_b[i]`` say whether each got example ``i`` right.
    Only the discordant pairs carry information: ``b`` (A right, B wrong) and
    ``c`` (A wrong, B right). Under the null each discordant pair is a fair coin,
    so the p-value is scipy's two-sided exact binomial test of ``b`` successes in
    ``b + c`` trials with p = 0.5. With no discordant pairs the p-value is 1.0.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b_arr = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b_arr.shape:
        raise ValueError(f"correct_a has {a.size} examples and correct_b {b_arr.size}; pair them first")
    b = int(np.sum(a & ~b_arr))
    c = int(np.sum(~a & b_arr))
    if b + c == 0:
        return McNemarResult(b, c, int(a.size), 1.0)
    p_value = float(_sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(b, c, int(a.size), p_value)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> PairedDifference:
    """Mean of ``a - b`` over paired observations (e.g. seeds), with a t CI and paired t-test.

    Uses scipy's ``ttest_rel`` for both the two-sided p-value and the interval.
    With fewer than 2 pairs the interval and p-value are NaN and ``reason`` says
    so; when every difference is the same, the t statistic is undefined (0/0)
    or infinite, and ``reason`` says that too.
    """
    a_arr = _as_float_array(a, "a")
    b_arr = _as_float_array(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a has {a_arr.size} values and b {b_arr.size}; pass paired values")
    n = int(a_arr.size)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0, confidence, "no pairs to compare")
    mean = float(np.mean(a_arr - b_arr))
    if n < 2:
        return PairedDifference(
            mean,
            math.nan,
            math.nan,
            math.nan,
            n,
            confidence,
            "a confidence interval and t-test need at least 2 pairs",
        )
    with warnings.catch_warnings():
        # Identical differences make scipy warn about precision loss; the NaN or
        # infinite statistic it returns is handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _sps.ttest_rel(a_arr, b_arr)
        interval = result.confidence_interval(confidence)
    p_value = float(result.pvalue)
    reason = None
    if not np.isfinite(result.statistic):
        reason = "every pair differs by the same amount, so the t-test is degenerate"
    return PairedDifference(mean, float(interval.low), float(interval.high), p_value, n, confidence, reason)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for several comparisons (NaN stays NaN and does not count).

    The k-th smallest of m p-values is multiplied by (m - k + 1), made non-decreasing, capped at 1:
    comparing each adjusted p with alpha keeps the chance of any false positive at or below alpha.
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if np.isfinite(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted
