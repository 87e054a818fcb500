"""The logged reference model's code (MLflow "models from code"): texts in, labels or class probabilities out.

MLflow stores this file with the model and runs it on load. The TF-IDF vocabulary is JSON, idf and
coefficients are safetensors, the tokenizer is its JSON files: loading never unpickles an object. The
file imports nothing from bertpooled, so the model serves wherever scikit-learn does; its `texts_of` and
`output` are copies of bertpooled/serving/classifier.py's (MLflow's classifier convention: labels from
`predict`, the (n, 2) class probabilities with `params={"predict_method": "predict_proba"}`).
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

#: bertpooled.contract.THRESHOLD, copied (this file imports nothing from bertpooled); tests/test_serving.py
#: checks that the two agree.
THRESHOLD = 0.5


class ReferenceModel(PythonModel):
    """P(positive review) from raw text: (first max_len tokens, decoded) -> TF-IDF -> logistic regression."""

    def load_context(self, context) -> None:
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        with open(context.artifacts["model_config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        with open(context.artifacts["vocabulary"], encoding="utf-8") as fh:
            vocabulary = json.load(fh)
        state = load_file(context.artifacts["weights"])
        settings = {**self.config["vectorizer"], "ngram_range": tuple(self.config["vectorizer"]["ngram_range"])}
        # A fixed vocabulary plus the stored idf is the fitted vectorizer: nothing is re-fitted here.
        self.vectorizer = TfidfVectorizer(**settings, vocabulary=vocabulary, dtype=np.float64)
        self.vectorizer.idf_ = state["idf"]
        self.classifier = LogisticRegression()
        self.classifier.coef_ = state["coef"]
        self.classifier.intercept_ = state["intercept"]
        self.classifier.classes_ = state["classes"]
        self.tokenizer = None
        if self.config["reference_text"] == "tokens":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])

    # The hint is MLflow's "no inference from the hint" type: the logged signature governs the input.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        texts = texts_of(model_input)
        if not texts:
            return output(np.zeros(0), params)
        if self.tokenizer is not None:
            # The same text the model was trained on: the first max_len tokens, decoded
            # (bertpooled.run.reference.decode).
            ids = self.tokenizer(texts, truncation=True, max_length=self.config["max_len"])["input_ids"]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        column = list(self.classifier.classes_).index(1)
        probs = self.classifier.predict_proba(self.vectorizer.transform(texts))[:, column].astype(np.float64)
        return output(probs, params)


def texts_of(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0] if model_input.shape[1] else []
    texts = list(model_input)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            from mlflow.exceptions import MlflowException

            # MLflow's scoring server answers this with a 400 carrying the line, for every content type.
            shown = repr(text)[:40]
            raise MlflowException.invalid_parameter_value(
                f"text {position} is {type(text).__name__} {shown}, not a string: send every text as a string"
            )
    return texts


def output(probs: np.ndarray, params: dict | None):
    from mlflow.exceptions import MlflowException

    method = (params or {}).get("predict_method") or "predict"
    if method == "predict":
        return (probs >= THRESHOLD).astype(np.int64)
    if method == "predict_proba":
        return np.column_stack([1.0 - probs, probs]).reshape(len(probs), 2)
    raise MlflowException.invalid_parameter_value(
        f"predict_method {method!r} is not one of predict, predict_proba: pass "
        f'"params": {{"predict_method": "predict_proba"}} for probabilities, or leave it out for labels'
    )


mlflow.models.set_model(ReferenceModel())
