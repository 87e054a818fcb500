"""The `reference` mode: TF-IDF (word 1-2 grams) and logistic regression, a yardstick for the neural modes.

It trains on the same subsets and, by default, reads the same text the LSTM reads: the first `max_len` tokens
of the backbone's tokenizer, decoded from the very token ids the neural modes use (`reference_text: full`
reads the whole review instead). It reports the neural modes' metrics under the same names, and logs its
model as a models-from-code pyfunc whose state is JSON and safetensors, never a pickle.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from bertpooled import data
from bertpooled.config import Config
from bertpooled.contract import PARAMS_BACKBONE, PARAMS_HEAD, PARAMS_HEAD_TRAINABLE, THROUGHPUT_TRAIN
from bertpooled.data import tokens
from bertpooled.model import backbone
from bertpooled.run import cost
from bertpooled.run.measure import Phases, Trained, evaluate
from bertpooled.run.shared import Shared

SERVING_CODE = Path(__file__).resolve().parents[1] / "serving" / "reference.py"
# min_df=2 drops n-grams seen in one review only: they cannot generalise, and they would
# multiply the stored vocabulary several times over. sublinear_tf damps repeated words.
VECTORIZER: dict[str, Any] = {
    "ngram_range": [1, 2],
    "min_df": 2,
    "sublinear_tf": True,
    "lowercase": True,
    "token_pattern": r"(?u)\b\w\w+\b",
    "norm": "l2",
    "use_idf": True,
    "smooth_idf": True,
}
# C=4 won 5-fold cross-validation on the default protocol's training subset among 1, 4 and 16 (first 128
# tokens: 0.810, 0.812, 0.809; full text: 0.880, 0.885, 0.886, where 16 costs twice the time).
CLASSIFIER: dict[str, Any] = {"C": 4.0, "solver": "liblinear", "max_iter": 1000}


@dataclass
class Fitted:
    """A fitted reference model and what it needs to read raw text the way it was trained."""

    vectorizer: TfidfVectorizer
    classifier: LogisticRegression
    config: Config
    tokenizer: Any = None


def describe(config: Config) -> str:
    """The run's description (its MLflow note)."""
    text = (
        f"the first {config.max_len} {config.model} tokens" if config.reference_text == "tokens" else "the full review"
    )
    return (
        f"IMDB sentiment, reference mode: TF-IDF (word 1-2 grams) + logistic regression on {text}, seed {config.seed}"
    )


def decode(tokenizer, rows: list[list[int]] | list[np.ndarray]) -> list[str]:
    """Token ids back to text without [CLS]/[SEP]/[PAD]: what the LSTM saw, as words (serving/reference.py does the
    same)."""
    rows = [r.tolist() if isinstance(r, np.ndarray) else list(r) for r in rows]
    return tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def texts(
    config: Config,
    info: backbone.BackboneInfo,
    imdb: data.Imdb,
    train_split: data.Split,
    test_split: data.Split,
    phases: Phases,
    shared: Shared,
    progress: bool | None = None,
) -> tuple[list[str], list[str], object, bool]:
    """(train texts, test texts, tokenizer or None, tokens reused) as `reference_text` says; timed as `tokenize`."""
    with phases.timed("tokenize"):
        if config.reference_text == "full":
            return train_split.texts, test_split.texts, None, False
        tokenizer, _ = shared.tokenizer(info)
        ids, hit = shared.token_ids(info, imdb, {"train": train_split, "test": test_split}, config.max_len, progress)
        out = []
        for name in ("train", "test"):
            toks = ids[name]

            def decoded_rows(toks: tokens.Tokens = toks) -> list[str]:
                return decode(tokenizer, [r[:n] for r, n in zip(toks.ids, toks.lengths, strict=True)])

            # `toks` lives in the memo as long as this entry does, so its id names it uniquely.
            decoded, _ = shared.get(("decoded", id(toks)), decoded_rows)
            out.append(decoded)
        return out[0], out[1], tokenizer, hit


def fit_and_evaluate(
    config: Config,
    info: backbone.BackboneInfo,
    imdb: data.Imdb,
    train_split: data.Split,
    test_split: data.Split,
    phases: Phases,
    shared: Shared | None = None,
    progress: bool | None = None,
) -> Trained:
    """Fit TF-IDF (`features`) and logistic regression (`train`), evaluate (`eval`); the contract's metrics."""
    shared = shared or Shared()
    cost.reset_peak_memory(torch.device("cpu"))  # as the neural modes do before building their model
    train_texts, test_texts, tokenizer, hit = texts(
        config, info, imdb, train_split, test_split, phases, shared, progress
    )
    with phases.timed("features"):
        vectorizer = _vectorizer()
        x_train = vectorizer.fit_transform(train_texts)
    with phases.timed("train"):
        # liblinear is deterministic given random_state (it shuffles with it), so a seed is a full recipe.
        classifier = LogisticRegression(**CLASSIFIER, random_state=config.seed)
        classifier.fit(x_train, train_split.labels)
    with phases.timed("eval"):
        probs = _positive(classifier, vectorizer.transform(test_texts))
        metrics = evaluate(test_split.labels, probs)
    fitted = Fitted(vectorizer, classifier, config, tokenizer)
    # The serving path on raw reviews, timed as the neural modes' is (run/cost.py); FLOPs do not apply here.
    metrics.update(
        cost.time_text_classifier(
            lambda batch: predict(fitted, batch), test_split.texts, config.latency_texts, config.throughput_batches
        )
    )
    metrics.update(cost.peak_memory_metrics(torch.device("cpu")))
    n_params = int(classifier.coef_.size + classifier.intercept_.size)
    metrics.update(
        {
            PARAMS_HEAD: n_params,
            PARAMS_HEAD_TRAINABLE: n_params,
            PARAMS_BACKBONE: 0,
            THROUGHPUT_TRAIN: len(train_split) / max(phases.seconds["train"], 1e-9),
            "data/train_examples": len(train_split),
            "data/test_examples": len(test_split),
            "tokens/cache_hit": float(hit),
        }
    )
    return Trained(metrics, probs, fitted)


def predict(fitted: Fitted, raw_texts: list[str]) -> np.ndarray:
    """P(positive) of raw reviews as the logged model computes it (serving/reference.py): the first `max_len`
    tokens decoded when the model reads tokens, then TF-IDF and logistic regression."""
    if fitted.tokenizer is not None:
        ids = fitted.tokenizer(raw_texts, truncation=True, max_length=fitted.config.max_len)["input_ids"]
        raw_texts = fitted.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return _positive(fitted.classifier, fitted.vectorizer.transform(raw_texts))


def _vectorizer(vocabulary: list[str] | None = None) -> TfidfVectorizer:
    settings = {**VECTORIZER, "ngram_range": tuple(VECTORIZER["ngram_range"])}
    return TfidfVectorizer(**settings, vocabulary=vocabulary, dtype=np.float64)


def _positive(classifier: LogisticRegression, x) -> np.ndarray:
    column = list(classifier.classes_).index(1)
    return classifier.predict_proba(x)[:, column].astype(np.float64)


def log_model(fitted: Fitted) -> str:
    """Log the fitted model as a models-from-code pyfunc (serving/reference.py), and its settings as
    `reference/<name>` params; returns the model URI.

    State: the vocabulary (JSON, in column order), idf and coefficients (safetensors), the settings (JSON)
    and, for `reference_text: tokens`, the tokenizer's files; the loader rebuilds the same vectorizer.
    """
    from safetensors.numpy import save_file

    from bertpooled.tracking.models import log_pyfunc, pinned_requirements
    from bertpooled.tracking.runs import log_params

    cfg = fitted.config
    settings: dict[str, Any] = {
        "vectorizer": VECTORIZER,
        "classifier": CLASSIFIER,
        "reference_text": cfg.reference_text,
        "max_len": cfg.max_len,
        "backbone": cfg.model,
    }
    log_params({f"reference/{k}": v for part in ("vectorizer", "classifier") for k, v in settings[part].items()})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocabulary = fitted.vectorizer.get_feature_names_out().tolist()
        (folder / "vocabulary.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        save_file(
            {
                "idf": np.ascontiguousarray(fitted.vectorizer.idf_, dtype=np.float64),
                "coef": np.ascontiguousarray(fitted.classifier.coef_, dtype=np.float64),
                "intercept": np.ascontiguousarray(fitted.classifier.intercept_, dtype=np.float64),
                "classes": np.ascontiguousarray(fitted.classifier.classes_, dtype=np.int64),
            },
            str(folder / "weights.safetensors"),
        )
        (folder / "model_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
        artifacts = {
            name: str(folder / f)
            for name, f in (
                ("vocabulary", "vocabulary.json"),
                ("weights", "weights.safetensors"),
                ("model_config", "model_config.json"),
            )
        }
        if fitted.tokenizer is not None:
            fitted.tokenizer.save_pretrained(str(folder / "tokenizer"))
            artifacts["tokenizer"] = str(folder / "tokenizer")
        dists = ["scikit-learn", "scipy", "safetensors", "numpy", "pandas", "mlflow"]
        if fitted.tokenizer is not None:
            dists += ["transformers", "tokenizers"]
        return log_pyfunc(SERVING_CODE, artifacts, pinned_requirements(*dists))


class ReferencePipeline:
    """The reference yardstick as a `bertpooled.run.pipeline.Pipeline`."""

    def describe(self, config: Config) -> str:
        return describe(config)

    def tags(self, config: Config) -> dict[str, str]:
        return {}

    def warm(self, inputs, progress: bool | None = None) -> None:
        texts(
            inputs.config, inputs.info, inputs.imdb, inputs.train, inputs.test, inputs.phases, inputs.shared, progress
        )

    def fit_and_evaluate(self, inputs, on_epoch=None, checkpoints=None, progress: bool | None = None):
        return fit_and_evaluate(
            inputs.config,
            inputs.info,
            inputs.imdb,
            inputs.train,
            inputs.test,
            inputs.phases,
            shared=inputs.shared,
            progress=progress,
        )

    def log_model(self, config: Config, trained) -> str:
        return log_model(trained.model)
