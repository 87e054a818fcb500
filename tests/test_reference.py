"""The `reference` mode: TF-IDF + logistic regression on what the LSTM reads, logged under the same contract."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE, invoke_tiny
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled import data
from bertpooled.cli import app
from bertpooled.config import load_config
from bertpooled.model import backbone
from bertpooled.run import measure, prepare, reference, runtime
from bertpooled.run.shared import Shared

CONTRACT_METRICS = {
    "test/accuracy",
    "test/f1",
    "test/roc_auc",
    "time/data_s",
    "time/tokenize_s",
    "time/features_s",
    "time/train_s",
    "time/eval_s",
    "time/total_s",
    "throughput/train_examples_per_s",
    "params/head",
    "params/head_trainable",
    "params/backbone",
}


def _inputs(tiny_bert, tiny_imdb, **overrides):
    cfg = load_config(
        SMOKE, {"mode": "reference", "model": str(tiny_bert), "data": str(tiny_imdb), "max_len": 16, **overrides}
    )
    info = prepare.check(cfg)
    phases = measure.Phases()
    imdb, train_split, test_split = prepare.read_data(cfg, phases)
    return cfg, info, imdb, train_split, test_split, phases


def test_the_reference_reads_the_decoded_tokens_the_lstm_reads_or_the_full_review(store, tiny_bert, tiny_imdb):
    cfg, info, imdb, train_split, test_split, phases = _inputs(tiny_bert, tiny_imdb, max_len=6)
    _train_texts, test_texts, tokenizer, _ = reference.texts(cfg, info, imdb, train_split, test_split, phases, Shared())
    # max_len 6 = [CLS] + 4 words + [SEP]: every review is cut to its first four (lower-cased) words.
    assert [len(t.split()) for t in test_texts] == [min(4, len(r.split())) for r in test_split.texts]
    assert test_texts[0].split() == test_split.texts[0].lower().split()[:4]
    assert tokenizer is not None and "tokenize" in phases.seconds

    full = load_config(SMOKE, {**cfg.to_dict(), "reference_text": "full"})
    _full_train, full_test, no_tokenizer, _ = reference.texts(
        full, info, imdb, train_split, test_split, phases, Shared()
    )
    assert full_test == test_split.texts and no_tokenizer is None


def test_the_reference_is_deterministic_for_a_seed(store, tiny_bert, tiny_imdb):
    cfg, info, imdb, train_split, test_split, phases = _inputs(tiny_bert, tiny_imdb)
    first = reference.fit_and_evaluate(cfg, info, imdb, train_split, test_split, phases)
    second = reference.fit_and_evaluate(cfg, info, imdb, train_split, test_split, measure.Phases())
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    n_terms = len(first.model.vectorizer.vocabulary_)
    assert first.metrics["params/head"] == n_terms + 1 and first.metrics["params/backbone"] == 0
    assert first.metrics["test/accuracy"] > 0.8  # the tiny reviews are made of sentiment words


@pytest.mark.parametrize("text", ["tokens", "full"])
def test_a_reference_run_logs_the_contract_and_a_pickle_free_pyfunc(text, store, tiny_bert, tiny_imdb):
    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--mode", "reference", "--set", f"reference_text={text}")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and run.info.run_name.startswith(f"reference-{tiny_bert.name}-s0-")
    assert params["config/mode"] == "reference" and params["config/reference_text"] == text
    assert params["config/pool"] == "none" and tags["mode"] == "reference" and tags["bertpooled.kind"] == "train"
    assert params["reference/C"] == "4.0" and params["reference/ngram_range"] == "[1, 2]"
    assert ("first 16" in tags["mlflow.note.content"]) == (text == "tokens")
    assert set(metrics) >= CONTRACT_METRICS
    assert metrics["params/backbone"] == 0 and metrics["params/head"] == metrics["params/head_trainable"] > 1

    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions/test.csv"), dtype={"id": str})
    assert list(preds.columns) == ["id", "label", "probability"] and len(preds) == 32

    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"reference.py", "artifacts/weights.safetensors", "artifacts/vocabulary.json"} <= names
    assert any(n.startswith("artifacts/tokenizer/") for n in names) == (text == "tokens")
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin"))]
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (folder / "MLmodel").read_text()

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    out = model.predict(["a wonderful film", "dull and far too long"])
    assert out.dtype == np.int64 and set(out) <= {0, 1} and len(out) == 2
    assert model.predict(pd.DataFrame({"text": pd.Series([], dtype=str)})).shape == (0,)
    # The served model reads raw reviews exactly as training read them: same probability per test review.
    test = data.load_imdb(str(tiny_imdb)).test
    texts = dict(zip(test.ids, test.texts, strict=True))
    served = model.predict([texts[i] for i in preds["id"]], params={"predict_method": "predict_proba"})
    np.testing.assert_allclose(served[:, 1], preds["probability"].to_numpy(), rtol=1e-6)
    labels = model.predict([texts[i] for i in preds["id"]])
    assert (labels == (preds["probability"].to_numpy() >= 0.5)).all()
    assert metrics["params/head"] == model.unwrap_python_model().classifier.coef_.size + 1


def test_reference_with_a_pooling_layer_is_refused_before_any_run(store, tiny_bert, tiny_imdb):
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            SMOKE,
            "--mode",
            "reference",
            "--model",
            str(tiny_bert),
            "--data",
            str(tiny_imdb),
            "--set",
            "pool=avg:2x2",
        ],
    )
    assert result.exit_code == 2 and "pool='avg:2x2'" in result.output and "Traceback" not in result.output
    assert not MlflowClient().search_experiments(filter_string="name = 'bertpooled'")


def test_the_reference_tokenizes_through_the_same_cache_as_the_neural_modes(store, tiny_bert, tiny_imdb):
    cfg, info, imdb, train_split, test_split, phases = _inputs(tiny_bert, tiny_imdb)
    neural = load_config(SMOKE, {**cfg.to_dict(), "mode": "basic"})
    prepared = prepare.prepare(
        neural, info, imdb, train_split, test_split, measure.Phases(), rt=runtime.Runtime.resolve(neural)
    )
    _, test_texts, _tokenizer, hit = reference.texts(cfg, info, imdb, train_split, test_split, phases, Shared())
    assert hit  # prepare.prepare wrote the disk cache entry the reference read
    ids = prepared.test_tokens
    assert test_texts == reference.decode(
        backbone.load_tokenizer(info), [r[:n] for r, n in zip(ids.ids, ids.lengths, strict=True)]
    )
