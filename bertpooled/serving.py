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
    """P(positive review) from raw text: tokenize -> frozen word embeddings -> pooling -> LSTM head."""

    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from bertpooled.modeling import PooledLSTMClassifier
        from bertpooled.pooling import PoolSpec

        with open(context.artifacts["model_config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        state = load_file(context.artifacts["weights"])
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        # The stored table is already hidden-pooled; rebuilding with hidden window 1 keeps it as it is.
        spec = PoolSpec.parse(self.config["pool"])
        stored = PoolSpec(spec.kind, spec.seq, 1)
        self.model = PooledLSTMClassifier(
            state["embeddings"], stored, units=self.config["lstm_units"], padding=self.config["padding"]
        )
        self.model.load_state_dict(state)
        self.model.eval()
        self.torch = torch

    def predict(self, context, model_input: list[str], params=None) -> pd.DataFrame:
        texts = _texts(model_input)
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.config["max_len"], padding="max_length", return_tensors="pt"
        )
        lengths = enc["attention_mask"].sum(1)
        with self.torch.no_grad():
            probs = self.torch.sigmoid(self.model(enc["input_ids"], lengths)).numpy().astype(np.float64)
        labels = (probs >= 0.5).astype(np.int64)
        return pd.DataFrame(
            {"probability": probs, "label": labels, "sentiment": np.where(labels == 1, "positive", "negative")}
        )


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].astype(str).tolist()
    if isinstance(model_input, (pd.Series, np.ndarray)):
        return [str(t) for t in np.asarray(model_input).ravel()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


mlflow.models.set_model(SentimentModel())
