"""What a run measures and hands back: each epoch's `EpochStats` (what it logs, `EpochStats.metrics`) and the
`EpochReport` that tells the run's sink of it, time per phase, quality metrics, the digest of the data it read, and
`Trained`, the one type a run's pipeline returns."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from bertpooled.contract import ACCURACY, QUALITY_METRICS, TIME_EPOCH, TRAIN_ACCURACY, TRAIN_LOSS, VAL_ACCURACY
from bertpooled.data import tokens
from bertpooled.run.runtime import autocast


@dataclass(frozen=True)
class EpochStats:
    """One seed's finished epoch: training loss and accuracy, its time, and what was evaluated after it."""

    epoch: int
    loss: float
    accuracy: float
    seconds: float
    test_accuracy: float | None = None
    val: dict[str, float] | None = None
    """The validation split's quality metrics after this epoch (`val/accuracy`, ...), when the run has one."""

    def metrics(self) -> dict[str, float]:
        """What a finished epoch logs, for every kind of run: the one place to add a per-epoch metric."""
        metrics = {TRAIN_LOSS: self.loss, TRAIN_ACCURACY: self.accuracy, TIME_EPOCH: self.seconds}
        if self.test_accuracy is not None:
            metrics[ACCURACY.key] = self.test_accuracy
        metrics.update(self.val or {})
        return metrics

    def said(self) -> str:
        """The epoch in a few words: `loss=... acc=... [test_acc=...] [val_acc=...] (N.Ns)`."""
        extra = f" test_acc={self.test_accuracy:.4f}" if self.test_accuracy is not None else ""
        extra += f" val_acc={self.val[VAL_ACCURACY]:.4f}" if self.val else ""
        return f"loss={self.loss:.4f} acc={self.accuracy:.4f}{extra} ({self.seconds:.1f}s)"


class EpochSink(Protocol):
    """Where a run's epochs are told (`tracking.sink.Sink.epoch`)."""

    def epoch(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class EpochReport:
    """What a run does after each finished epoch (the training loop's `on_epoch`): tell its sink the epoch's metrics
    at that step (`EpochStats.metrics`), then say them in one line."""

    sink: EpochSink
    epochs: int
    log: Callable[[str], None] = print

    def __call__(self, stats: EpochStats) -> None:
        self.sink.epoch(stats.epoch, stats.metrics())
        self.log(f"epoch {stats.epoch}/{self.epochs}: {stats.said()}")


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
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` to phase `name`: timed here, or done elsewhere for this run (a seed group's share)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


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


@dataclass(frozen=True)
class Trained:
    """What a pipeline hands back for a run: the contract's metrics, per-example test probabilities, the trained
    model (on the CPU) with the tokenizer it reads through (None for the reference's TF-IDF pipeline, which
    carries its own), and the per-epoch history where there are epochs."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    model: Any
    tokenizer: object = None
    history: list = field(default_factory=list)
    trained_ahead_s: float = 0.0
    """Training done for this run before the run started (a seed group's share: bertpooled.run.grouped), counted in
    its time/total_s."""


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, toks: tokens.Tokens, batch_size: int, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """P(positive) per row, in order, from token ids."""
    return predict_inputs(
        model, torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths), batch_size, device, precision
    )


@torch.no_grad()
def predict_inputs(
    net: torch.nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """P(positive) per row, in order, from what `net` reads (token ids or cached features); `precision` resolved."""
    logits = predict_logits(net, inputs, lengths, batch_size, device, precision)
    return torch.sigmoid(logits).double().numpy() if len(logits) else np.empty(0)


@torch.no_grad()
def predict_logits(
    net: torch.nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """The logit per row (float32, on the CPU), in order, from what `net` reads; `precision` resolved."""
    net.eval()
    ids = inputs.to(device)
    lengths = lengths.to(device)
    out = []
    for start in range(0, len(lengths), batch_size):
        with autocast(device, precision):
            logits = net(ids[start : start + batch_size], lengths[start : start + batch_size])
        out.append(logits.float())
    # One copy back at the end instead of a device sync per batch.
    return torch.cat(out).cpu() if out else torch.empty(0)
