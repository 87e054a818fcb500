"""What a run measures besides training: time per phase, quality metrics, the digest of the data it read."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


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
    """Accuracy, F1 and ROC AUC from scikit-learn; AUC is NaN when the test set has one class only."""
    preds = (probs >= 0.5).astype(int)
    metrics = {"test/accuracy": accuracy_score(labels, preds), "test/f1": f1_score(labels, preds, zero_division=0)}
    metrics["test/roc_auc"] = roc_auc_score(labels, probs) if len(np.unique(labels)) == 2 else float("nan")
    return {k: float(v) for k, v in metrics.items()}


def data_digest_of(digest: str, ids: list[str]) -> str:
    """Digest of a subset: the full data's digest and the ids taken from it."""
    h = hashlib.sha256(digest.encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()
