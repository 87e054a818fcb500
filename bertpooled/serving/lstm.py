"""The logged model's code (MLflow "models from code"): texts in, probability and label out.

MLflow stores this file with the model and runs it on load; the weights come from safetensors and the
tokenizer from its JSON files, so loading never unpickles an object.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd


class SentimentModel(mlflow.pyfunc.PythonModel):
    """P(positive review) from raw text: tokenize -> word embeddings or encoder (pooled as trained) -> LSTM head."""

    def load_context(self, context) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from bertpooled.model.heads import EmbeddingLayer, PooledLSTMClassifier
        from bertpooled.model.pooling import PoolSpec

        with open(context.artifacts["model_config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        state = load_file(context.artifacts["weights"])
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        spec = PoolSpec.parse(self.config["pool"])
        # Models logged before `lstm_bias` existed trained nn.LSTM's two bias vectors.
        bias = self.config.get("lstm_bias", "torch")
        features = self.config.get("features", "embeddings")
        if features == "encoder":
            self.model = _encoder_model(self.config, spec, bias)
        elif features == "embedding_layer":
            layer = EmbeddingLayer(state["layer.positions"], state["layer.token_type"], state["layer.norm_weight"],
                                   state["layer.norm_bias"], self.config["layer_norm_eps"])
            self.model = PooledLSTMClassifier(state["embeddings"], spec, units=self.config["lstm_units"],
                                              padding=self.config["padding"], layer=layer, bias=bias)
        else:
            # The stored table is already hidden-pooled; rebuilding with hidden window 1 keeps it as it is.
            stored = PoolSpec(spec.kind, spec.seq, 1)
            self.model = PooledLSTMClassifier(
                state["embeddings"], stored, units=self.config["lstm_units"], padding=self.config["padding"], bias=bias
            )
        self.model.load_state_dict(state)
        self.model.eval()

    # Returns a DataFrame (probability, label, sentiment), unannotated: MLflow infers output schemas only from
    # list[...] hints, logs "Failed to infer output type hint" for a DataFrame one and warns about Any.
    def predict(self, context, model_input: list[str], params=None):  # -> pd.DataFrame
        from bertpooled.model.inference import predict_texts

        # MLflow hands predict a list[str], as the type hint asks, whatever the caller passed.
        texts = [str(text) for text in model_input]
        # No texts, no predictions: an empty frame with the same columns (the tokenizer fails on an empty batch).
        probs = predict_texts(self.model, self.tokenizer, texts, self.config["max_len"]) if texts else np.zeros(0)
        labels = (probs >= 0.5).astype(np.int64)
        return pd.DataFrame(
            {"probability": probs, "label": labels, "sentiment": np.where(labels == 1, "positive", "negative")}
        )


def _encoder_model(config: dict, spec, bias: str):
    """The backbone rebuilt from its JSON config (no download, no original folder), wrapped as it was trained."""
    from transformers import AutoConfig, AutoModel

    from bertpooled.model.encoder import PoolingEncoder
    from bertpooled.model.heads import EncoderLSTMClassifier
    from bertpooled.model.pooling import PoolPosition, PoolSpec

    backbone_config = dict(config["backbone_config"])
    model_type = backbone_config.pop("model_type")
    backbone = AutoModel.from_config(AutoConfig.for_model(model_type, **backbone_config)).eval()
    out_pool = spec if config["pool_at"] == "output" else PoolSpec()
    encoder = PoolingEncoder(backbone, PoolPosition.parse(config["pool_at"]), spec)
    return EncoderLSTMClassifier(encoder, backbone.config.hidden_size, out_pool, units=config["lstm_units"], bias=bias)


mlflow.models.set_model(SentimentModel())
