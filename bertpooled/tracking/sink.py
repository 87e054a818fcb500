"""One run, one sink: what a run tells the tracking store, in the order it happens (start, inputs, each finished
epoch, the outcome, the end).

`run.experiment.run_scope` is the one path every kind of run takes (a training run, a tuning trial, a seed-group
child, a reference run): inputs -> pipeline -> outcome, told to a `Sink`, never to MLflow itself, as Lightning's
trainer talks to its `Logger` alone. `MlflowSink` is the one implementation: bound to one run once started, it
opens and ends that run (`TrainingStart`: FINISHED, FAILED or KILLED, with its owner tag and heartbeat, see
`runs.training_run`; `TrialStart`: as its Optuna trial ends, see `tuning.trial_run`) and logs what the scope
hands it. A `Callback` sees the run start and each epoch after it is logged, as Optuna's `MLflowCallback` sees a
trial: a trial's pruning is one (bertpooled.tune.trials), not a loop of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import mlflow
import numpy as np
import pandas as pd

from bertpooled.tracking import models, runs, tuning


class Callback(Protocol):
    """Told what the sink logs, after it is logged; an exception raised here ends the run as that exception
    says (a pruned trial: `TrialStart.pruned`)."""

    def on_start(self, run_id: str) -> None:
        """The run exists: its id."""

    def on_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Epoch `step` finished; `metrics` are what it logged."""


@dataclass(frozen=True)
class Datasets:
    """The subsets a run reads, logged as MLflow dataset inputs (schema, profile, digest; not the data)."""

    source: str
    digest: str
    train: pd.DataFrame
    test: pd.DataFrame | None = None
    """None for a tuning trial: it never reads the test set."""
    validation: pd.DataFrame | None = None
    unlabelled: pd.DataFrame | None = None
    """Reviews without labels a run also reads (a teacher's distillation set), where it reads any."""


@dataclass(frozen=True)
class TrainingStart:
    """A training run (alone, a sweep's child, a seed group's child, the reference): new, nested under a sweep's
    parent, or an interrupted run continued."""

    name: str
    tags: dict[str, str]
    description: str
    parent_run_id: str | None = None
    resume_run_id: str | None = None
    system_metrics: bool = False

    def open(self) -> AbstractContextManager[mlflow.ActiveRun]:
        return runs.training_run(
            self.name,
            self.tags,
            self.description,
            parent_run_id=self.parent_run_id,
            resume_run_id=self.resume_run_id,
            system_metrics=self.system_metrics,
        )

    def links(self, run: mlflow.ActiveRun) -> tuple[str, str]:
        return runs.ui_links(run)


@dataclass(frozen=True)
class TrialStart:
    """A tuning trial: a child run of the study's parent, ending as its Optuna trial ends (`pruned`: the
    exceptions that mean PRUNED)."""

    parent_run_id: str
    name: str
    tags: dict[str, str]
    description: str
    pruned: tuple[type[BaseException], ...] = ()

    def open(self) -> AbstractContextManager[mlflow.ActiveRun]:
        return tuning.trial_run(self.parent_run_id, self.name, self.tags, self.description, self.pruned)

    def links(self, run: mlflow.ActiveRun) -> tuple[str, str]:
        return "", ""  # a trial is read through its study's parent run, not the training view


class Sink(Protocol):
    """What a run tells the tracking store: `start` opens the run (the block is its life: how the block ends is
    how the run ends), then its inputs, each epoch (and its checkpoint), its predictions and plots, its outcome."""

    run_id: str
    experiment_id: str

    def start(self) -> AbstractContextManager[str]:
        """Open the run, yield its id; end it when the block ends."""

    def inputs(self, config: dict, params: Mapping[str, object], datasets: Datasets) -> None:
        """The resolved config (params and YAML), what else describes the run, the datasets it reads."""

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """The metrics of finished epoch `step`, then the callbacks."""

    def checkpoint(self, folder: Path, epoch: int, sha256: str) -> None:
        """The checkpoint of finished epoch `epoch` (the files in `folder`, their digest), replacing the last one
        only once it is complete."""

    def predictions(self, ids: list[str], labels: np.ndarray, probabilities: np.ndarray) -> None:
        """The per-example test predictions (what compare-runs' paired tests read)."""

    def artifacts(self, folder: Path, path: str) -> None:
        """The files in `folder` (the test plots), under `path` among the run's artifacts."""

    def outcome(self, metrics: Mapping[str, float], step: int, model_uri: str | None = None) -> None:
        """The final metrics, at the last epoch's step; tied to the logged model where there is one."""

    def links(self) -> tuple[str, str]:
        """(runs table link, run link) in MLflow's UI; empty where the run has no page of its own."""


@dataclass
class MlflowSink:
    """The one `Sink`: every kind of run logs into MLflow through it (see the module doc)."""

    how: TrainingStart | TrialStart
    callbacks: Sequence[Callback] = ()
    run_id: str = ""
    experiment_id: str = ""
    _run: mlflow.ActiveRun | None = field(default=None, repr=False)

    @contextmanager
    def start(self) -> Iterator[str]:
        with self.how.open() as run:
            self._run, self.run_id, self.experiment_id = run, run.info.run_id, run.info.experiment_id
            for callback in self.callbacks:
                callback.on_start(self.run_id)
            yield self.run_id

    def inputs(self, config: dict, params: Mapping[str, object], datasets: Datasets) -> None:
        runs.log_config(config, dict(params))
        runs.log_datasets(
            datasets.train,
            datasets.test,
            datasets.source,
            datasets.digest,
            validation=datasets.validation,
            unlabelled=datasets.unlabelled,
        )

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        runs.log_epoch(step, {k: float(v) for k, v in metrics.items()})
        for callback in self.callbacks:
            callback.on_epoch(step, metrics)

    def checkpoint(self, folder: Path, epoch: int, sha256: str) -> None:
        models.log_checkpoint(folder, epoch, sha256)

    def predictions(self, ids: list[str], labels: np.ndarray, probabilities: np.ndarray) -> None:
        runs.log_predictions(ids, labels, probabilities)

    def artifacts(self, folder: Path, path: str) -> None:
        runs.log_artifacts(folder, path)

    def outcome(self, metrics: Mapping[str, float], step: int, model_uri: str | None = None) -> None:
        runs.log_metrics(dict(metrics), step=step, model_uri=model_uri or None)

    def links(self) -> tuple[str, str]:
        assert self._run is not None, "links of a started run"
        return self.how.links(self._run)
