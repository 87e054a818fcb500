"""The adapted backbone's code (MLflow "models from code"; `bertpooled adapt`): texts in, one embedding per text out.

The model is the backbone with its pooling inside (the pooling it was adapted to, from `adaptation.json`), its
weights and tokenizer saved with `save_pretrained` (safetensors and JSON: loading never unpickles). `predict`
returns the mean of the last hidden states over each text's real positions, a list of floats per text: a
sentence embedding, so the model serves and evaluates like any embedding model. Later runs take the model as
their backbone (`model: models:/<name>@<alias>`), which is what it is for.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from bertpooled.serving.classifier import texts_of


class PooledBackbone(PythonModel):
    """A BERT backbone with pooling between its layers: texts -> mean-pooled last hidden states."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from bertpooled.model.encoder import PoolingEncoder
        from bertpooled.model.pooling import PoolPosition, PoolSpec

        with open(context.artifacts["adaptation"], encoding="utf-8") as f:
            self.adaptation = json.load(f)
        folder = context.artifacts["backbone"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, use_safetensors=True)
        self.encoder = PoolingEncoder(
            model,
            PoolPosition.parse(self.adaptation["pool_at"]),
            PoolSpec.parse(self.adaptation["pool"]),
            separate_cls=bool(self.adaptation.get("separate_cls", False)),
        ).eval()
        self.torch = torch

    def predict(self, context, model_input: pd.DataFrame, params=None):
        texts = texts_of(model_input)
        if not texts:
            return np.zeros((0, self.encoder.model.config.hidden_size), dtype=np.float32).tolist()
        torch = self.torch
        batch = self.tokenizer(
            texts, truncation=True, max_length=int(self.adaptation["max_len"]), padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            hidden, mask = self.encoder(batch["input_ids"], batch["attention_mask"].bool())
            weights = mask.unsqueeze(-1).float()
            means = (hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return means.numpy().tolist()


mlflow.models.set_model(PooledBackbone())
