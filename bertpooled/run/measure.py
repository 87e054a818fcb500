"""What a run measures and hands back: time per phase, quality metrics, the digest of the data it read, and
`Trained`, the one type a run's pipeline returns."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bertpooled.contract import QUALITY_METRICS


@dataclass
class Phases:
    """Wall-clock seconds per named phase; logged as `time/<name>_s`."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Every quality metric of the contract (accuracy, F1, ROC AUC; AUC is NaN on a one-class test set)."""
    return {metric.key: metric.score(labels, probs) for metric in QUALITY_METRICS if metric.score is not None}


def data_digest_of(digest: str, ids: list[str]) -> str:
    """Digest of a subset: the full data's digest and the ids taken from it."""
    h = hashlib.sha256(digest.encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class Trained:
    """What a pipeline hands back for a run: the contract's metrics, per-example test probabilities, the trained
    model (on the CPU) with the tokenizer it reads through (None for the reference's TF-IDF pipeline, which
    carries its own), and the per-epoch history where there are epochs."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    model: Any
    tokenizer: object = None
    history: list = field(default_factory=list)
