# The serving code of every LSTM model logged before issue 24 (bertpooled/serving/lstm.py at 67ad4c6), kept as it
# was: models stored with it must keep loading and serving (tests/test_serving.py). Not imported by the tests.
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

        from bertpooled.model.build import ModelSpec, from_state

        with open(context.artifacts["model_config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        # The same spec and builder training used (models logged before a field existed get its old default).
        self.model = from_state(ModelSpec.from_json(self.config), load_file(context.artifacts["weights"]))

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


mlflow.models.set_model(SentimentModel())
