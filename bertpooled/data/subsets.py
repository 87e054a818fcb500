"""Row subsets of a split, seeded and label-balanced: the training and test subsets a run reads
(`balanced_subset`) and the validation rows held out of its training subset (`validation_split`)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from bertpooled.errors import BertpooledError


def balanced_subset(
    labels: np.ndarray, *, n: int | None = None, fraction: float | None = None, seed: int = 0
) -> np.ndarray:
    """Seeded, label-balanced row indices, sorted ascending (int64).

    ``fraction`` keeps floor(fraction * count) rows of each label; ``n`` keeps at most n rows in all,
    n // 2 per label with the odd one going to the higher label, each capped by what that label has
    (no top-up from the other label, so the subset stays balanced). Both: fraction first, then n.
    Smaller n with the same seed gives a subset of larger n.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise BertpooledError(f"labels must be a 1-D array, got shape {labels.shape}: pass one label per row")
    if fraction is not None and not (isinstance(fraction, numbers.Real) and 0 < fraction <= 1):
        raise BertpooledError(f"fraction must be in (0, 1], got {fraction!r}: pass e.g. 0.75")
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise BertpooledError(f"n must be a positive integer, got {n!r}: pass e.g. 1000")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    if fraction is not None:
        # the epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28
        picks = [p[: math.floor(fraction * len(p) + 1e-9)] for p in picks]
    if n is not None and len(classes):
        base, extra = divmod(int(n), len(classes))
        # the remainder goes to the highest labels (for 0/1 labels: the odd row is a 1)
        quotas = [base + (i >= len(classes) - extra) for i in range(len(classes))]
        picks = [p[:q] for p, q in zip(picks, quotas, strict=True)]
    if not picks:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picks)).astype(np.int64)


def validation_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a training subset, both sorted: floor(fraction * count) rows of each
    label held out, chosen with ``seed``.

    Its own random stream (not ``balanced_subset``'s under the same seed), so the held-out rows are not the
    first rows that subset would have kept. Every row is in exactly one of the two.
    """
    labels = np.asarray(labels)
    if not (isinstance(fraction, numbers.Real) and 0 <= fraction < 1):
        raise BertpooledError(f"validation fraction must be in [0, 1), got {fraction!r}: pass e.g. 0.2")
    rng = np.random.default_rng([seed, 1])
    held = [
        rng.permutation(np.flatnonzero(labels == c))[: math.floor(fraction * (labels == c).sum() + 1e-9)]
        for c in np.unique(labels)
    ]
    val = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val, assume_unique=True)
    return train, val
