"""The LSTM pipeline: frozen input features (word table or embedding layer) or an encoder, pooled as configured,
then the LSTM head; see bertpooled.run.pipeline for the protocol it implements."""

from __future__ import annotations

from bertpooled.config import Config
from bertpooled.run import fit, prepare
from bertpooled.run.pipeline import Inputs, Trained


class LSTMPipeline:
    """Frozen input features (word table or embedding layer) or an encoder, pooled as configured, -> LSTM head."""

    def describe(self, config: Config) -> str:
        if config.features == "encoder":
            return (
                f"IMDB sentiment from {config.model} encoder hidden states "
                f"({'fine-tuned' if config.finetune else 'frozen'}), {config.pool} pooling at {config.pool_at}, "
                f"LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
            )
        what = "embedding-layer outputs" if config.features == "embedding_layer" else "word embeddings"
        return (
            f"IMDB sentiment, {config.mode} mode ({config.pool} pooling) on {config.model} {what}, "
            f"LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
        )

    def tags(self, config: Config) -> dict[str, str]:
        tags = {"features": config.features}
        if config.features == "encoder":
            tags.update(
                {"pool_at": config.pool_at, "finetune": str(config.finetune).lower(), "variant": config.variant}
            )
        return tags

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
            device=inputs.device,
            val=inputs.val,
        )

    def fit_and_evaluate(self, inputs: Inputs, on_epoch=None, checkpoints=None, progress=None) -> Trained:
        prepared = self._prepare(inputs, progress)
        result = fit.train_and_evaluate(prepared, on_epoch=on_epoch, progress=progress, checkpoints=checkpoints)
        return Trained(result.metrics, result.probabilities, (result.model, prepared.tokenizer), result.history)

    def log_model(self, config: Config, trained: Trained) -> str:
        from bertpooled.tracking.models import log_model

        model, tokenizer = trained.model
        return log_model(model.state_dict(), fit.model_spec(config, model).to_json(), tokenizer)
