"""The logged model's code (MLflow "models from code"): texts in, labels or class probabilities out.

MLflow stores this file with the model and runs it on load; the weights come from safetensors and the
tokenizer from its JSON files, so loading never unpickles an object.

It follows the convention of MLflow's scikit-learn models: `predict` returns one column of labels (0 =
negative, 1 = positive), which is what `mlflow.models.evaluate(..., model_type="classifier")` reads, and
`params={"predict_method": "predict_proba"}` returns the (n, 2) class probabilities [P(0), P(1)]. The input is
texts with no input schema (and no type hint), so every scoring payload works: `inputs`, `instances`,
`dataframe_split`, `dataframe_records` and CSV, with the column named anything, and an empty batch too.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

# Imported when MLflow loads the model, not at the first prediction: the copy of bertpooled stored with the model
# is read from a temporary folder that may be gone by then.
from bertpooled.model.inference import predict_texts, serving_precision
from bertpooled.serving.classifier import output, texts_of


class SentimentModel(PythonModel):
    """Sentiment of raw text: tokenize -> word embeddings or encoder (pooled as trained) -> LSTM head."""

    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        from bertpooled.model.spec_checks import DamagedModel, load_checked

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise DamagedModel(f"the tokenizer files do not load ({first}): log the model again") from None
        # The same spec and builder training used (models logged before a field existed get its old default),
        # every field and the weights' shapes checked first: the files are input, anyone may have edited them.
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.config, spec, self.model = load_checked(
            context.artifacts["model_config"], context.artifacts["weights"], limit if isinstance(limit, int) else None
        )
        # An encoder predicts in bf16 where its run asked for it (or for `auto`) and this machine has it natively.
        self.precision = serving_precision(spec.precision, spec.features == "encoder")

    # The hint is MLflow's "no inference from the hint" type: what MLflow parsed comes as it is (texts_of).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        texts = texts_of(model_input)
        # No texts, no predictions (the tokenizer fails on an empty batch).
        probs = (
            predict_texts(self.model, self.tokenizer, texts, self.config["max_len"], precision=self.precision)
            if texts
            else np.zeros(0)
        )
        return output(probs, params)


mlflow.models.set_model(SentimentModel())
