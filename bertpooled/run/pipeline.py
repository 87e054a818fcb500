"""The pipelines a run can be: one protocol, one result type.

`run_experiment` and the sweep talk to a `Pipeline` and never branch on the mode: the LSTM pipeline
(bertpooled.run.lstm: frozen input features or an encoder -> LSTM head) and the reference pipeline
(bertpooled.run.reference: TF-IDF -> logistic regression) both prepare their inputs, fit and evaluate, and
log a servable model; `bertpooled.run.experiment.pipeline_for` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from bertpooled import data
from bertpooled.config import Config
from bertpooled.model import backbone
from bertpooled.run import checkpoint, fit
from bertpooled.run.measure import Phases
from bertpooled.run.shared import Shared


@dataclass
class Inputs:
    """What every pipeline starts from: the checked config, its backbone, the data subsets, the run's device."""

    config: Config
    info: backbone.BackboneInfo
    imdb: data.Imdb
    train: data.Split
    test: data.Split
    phases: Phases
    device: torch.device
    shared: Shared | None = None
    """A sweep's memo of inputs shared between its children (None for a run on its own)."""
    val: data.Split | None = None
    """The validation split carved from the training subset (`validation_fraction`); `train` excludes it."""


@dataclass
class Trained:
    """What a pipeline hands back: the contract's metrics, per-example test probabilities and what `log_model`
    logs; `history` holds per-epoch stats where there are epochs."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    model: Any
    history: list = field(default_factory=list)


class Pipeline(Protocol):
    def describe(self, config: Config) -> str:
        """The run's description (its MLflow note)."""

    def tags(self, config: Config) -> dict[str, str]:
        """Tags beyond mode, backbone and pool that tell its runs apart."""

    def warm(self, inputs: Inputs, progress: bool | None = None) -> None:
        """Fill `inputs.shared` with what this config's runs will read, before a sweep's first child."""

    def fit_and_evaluate(
        self,
        inputs: Inputs,
        on_epoch: Callable[[fit.EpochStats], None] | None = None,
        checkpoints: checkpoint.Checkpointer | None = None,
        progress: bool | None = None,
    ) -> Trained:
        """Prepare, fit and evaluate, each phase timed in `inputs.phases`."""

    def log_model(self, config: Config, trained: Trained) -> str:
        """Log the servable model to the active run; returns its URI."""
