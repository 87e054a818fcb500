"""Small number helpers and the cell formats shared by the builder, the verdicts and the renderers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

#: What a cell shows for a value that is missing or not finite.
MISSING = "—"


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (numpy's included); ``None``, NaN and text are not."""
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def median(values: Iterable[float]) -> float:
    """The median of the finite values; NaN when there is none."""
    kept = [value for value in values if finite(value)]
    return float(np.median(kept)) if kept else math.nan


def mean(values: Iterable[float]) -> float:
    """The mean of the finite values; NaN when there is none."""
    kept = [value for value in values if finite(value)]
    return float(np.mean(kept)) if kept else math.nan


def seed_order(seed: str) -> tuple[int, float, str]:
    """Sort key for seed values: numbers numerically first, then any other text."""
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def fmt_fraction(value: float) -> str:
    return f"{value:.4f}" if finite(value) else MISSING


def fmt_signed(value: float) -> str:
    return f"{value:+.2f}" if finite(value) else MISSING


def fmt_interval(low: float, high: float, digits: int, signed: bool = False) -> str:
    if not (finite(low) and finite(high)):
        return MISSING
    sign = "+" if signed else ""
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


#: A phase shorter than this on either side is timer noise, not a cost: 0.327 s against 3.96 us is no ratio.
MIN_RATIO_SECONDS = 0.01


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}×" if finite(value) else MISSING


def fmt_number(value: float) -> str:
    if not finite(value):
        return MISSING
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:.1f}" if not float(value).is_integer() else f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    # Three significant digits written out (0.00000175, not 1.75e-06): a table column reads as one kind of number.
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


def fmt_p(value: float, prefix: bool = False) -> str:
    if not finite(value):
        return MISSING
    if value < 0.001:
        return "p<0.001" if prefix else "<0.001"
    text = f"{value:.2f}" if value >= 0.01 else f"{value:.3f}"
    return f"p={text}" if prefix else text
