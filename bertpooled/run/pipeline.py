"""The pipelines a run can be: one protocol, one result type.

`run_experiment` and the sweep talk to a `Pipeline` and never branch on the mode: the LSTM pipeline
(`LSTMPipeline`, here: frozen input features or an encoder -> LSTM head) and the reference pipeline
(bertpooled.run.reference: TF-IDF -> logistic regression) both prepare their inputs, fit and evaluate, and
log a servable model; `bertpooled.run.experiment.pipeline_for` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bertpooled import data
from bertpooled.config import Config
from bertpooled.model import backbone
from bertpooled.run import checkpoint, fit, measure, network, prepare, runtime
from bertpooled.run.measure import Phases, Trained
from bertpooled.run.shared import Shared


@dataclass
class Inputs:
    """What every pipeline starts from: the checked config, its backbone, the data subsets, the run's runtime."""

    config: Config
    info: backbone.BackboneInfo
    imdb: data.Imdb
    train: data.Split
    test: data.Split | None
    """None for a tuning trial: it never reads the test set."""
    phases: Phases
    rt: runtime.Runtime
    """Device, precision, threads and evaluation batch, resolved once when the run starts."""
    shared: Shared | None = None
    """A sweep's memo of inputs shared between its children (None for a run on its own)."""
    val: data.Split | None = None
    """The validation split carved from the training subset (`validation_fraction`); `train` excludes it."""
    sources: dict | None = None
    """The tracked models the config builds on (`init_from`, `distill_from`), fetched once before the run
    (`prepare.fetch_sources`); None: fetched when prepared."""


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
        on_epoch: Callable[[measure.EpochStats], None] | None = None,
        checkpoints: checkpoint.Checkpointer | None = None,
        progress: bool | None = None,
    ) -> Trained:
        """Prepare, fit and evaluate, each phase timed in `inputs.phases`."""

    def log_model(self, config: Config, trained: Trained) -> str:
        """Log the servable model to the active run; returns its URI."""


def source_tags(config: Config) -> dict[str, str]:
    """The chain of runs as tags (a column in the UI): `init_from` and `distill_from` as the config names them."""
    return {option: getattr(config, option) for option in ("init_from", "distill_from") if getattr(config, option)}


class LSTMPipeline:
    """Frozen input features (word table or embedding layer) or an encoder, pooled as configured, -> LSTM head."""

    def describe(self, config: Config) -> str:
        if config.feature_kind.encoder:
            return (
                f"IMDB sentiment from {config.model} encoder hidden states "
                f"({'fine-tuned' if config.finetune else 'frozen'}), {config.pool} pooling at {config.pool_at}, "
                f"LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
            )
        what = "embedding-layer outputs" if config.feature_kind.whole_layer else "word embeddings"
        return (
            f"IMDB sentiment, {config.mode} mode ({config.pool} pooling) on {config.model} {what}, "
            f"LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
        )

    def tags(self, config: Config) -> dict[str, str]:
        tags = {"features": config.features}
        if config.feature_kind.encoder:
            tags.update(
                {"pool_at": config.pool_at, "finetune": str(config.finetune).lower(), "variant": config.variant}
            )
        return tags | source_tags(config)

    def warm(self, inputs: Inputs, progress: bool | None = None) -> None:
        if inputs.shared is not None and inputs.shared.shares(inputs.config):
            self._prepare(inputs, progress)

    def _prepare(self, inputs: Inputs, progress: bool | None) -> prepare.Prepared:
        make = inputs.shared.prepare if inputs.shared is not None else prepare.prepare
        return make(
            inputs.config,
            inputs.info,
            inputs.imdb,
            inputs.train,
            inputs.test,
            inputs.phases,
            progress=progress,
            rt=inputs.rt,
            val=inputs.val,
            sources=inputs.sources,
        )

    def fit_and_evaluate(self, inputs: Inputs, on_epoch=None, checkpoints=None, progress=None) -> Trained:
        prepared = self._prepare(inputs, progress)
        return fit.train_and_evaluate(prepared, on_epoch=on_epoch, progress=progress, checkpoints=checkpoints)

    def log_model(self, config: Config, trained: Trained) -> str:
        from bertpooled.tracking.models import log_model

        model = trained.model
        return log_model(model.state_dict(), network.model_spec(config, model).to_json(), trained.tokenizer)
