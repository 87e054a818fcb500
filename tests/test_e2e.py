"""End to end through `mlflow run . --env-manager local` with a tiny BERT and tiny IMDB, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import invoke_tiny, mlflow_run, wait_for_http
from mlflow.tracking import MlflowClient

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
    "cost/backbone_flops_per_example",
    "cost/head_flops_per_example",
    "latency/p50_ms",
    "latency/p95_ms",
    "throughput/infer_examples_per_s",
    "memory/peak_mb",
}
# LSTM(16) + Dense(1) on the tiny BERT's 32-wide embeddings (basic) or 16-wide after 2x2 pooling (pool).
# One gate bias vector per LSTM, as Keras (lstm_bias=keras, the default).
HEAD_PARAMS = {"basic": 4 * ((32 + 16) * 16 + 16) + 17, "pool": 4 * ((16 + 16) * 16 + 16) + 17}


@pytest.fixture()
def experiment(store, tmp_path):
    mlflow.set_tracking_uri(store)
    MlflowClient().create_experiment("bertpooled", artifact_location=(tmp_path / "mlruns").as_uri())
    yield "bertpooled"
    mlflow.set_tracking_uri(None)


def _only_run(client: MlflowClient):
    runs = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    assert len(runs) == 1, [r.info.status for r in runs]
    return runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["basic", "pool", "basic_lstm"])
def test_mlflow_run_trains_and_logs_the_whole_contract(mode, store, experiment, tiny_bert, tiny_imdb):
    proc = mlflow_run(
        {
            "config": "experiments/smoke.yaml",
            "mode": mode,
            "model": str(tiny_bert),
            "data": str(tiny_imdb),
            "max_len": "16",
        },
        store,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and "workflowType=machine_learning" in proc.stdout
    client = MlflowClient()
    run = _only_run(client)
    resolved = "basic" if mode == "basic_lstm" else mode
    assert run.info.status == "FINISHED"
    # The name says the protocol differs from the default (the smoke protocol: fewer epochs and reviews).
    assert run.info.run_name.startswith(f"{resolved}-{tiny_bert.name}-s0-e")
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags

    # `mlflow run` logged the raw -P value; the resolved one sits beside it.
    assert params["mode"] == mode and params["config/mode"] == resolved
    # Only the -P values given are logged raw: no '' rows for parameters left at their default.
    assert {k for k in params if "/" not in k} == {"config", "mode", "model", "data", "max_len"}
    assert "--set" not in proc.stderr and "''" not in proc.stderr
    assert params["config/pool"] == ("avg:2x2" if resolved == "pool" else "none")
    assert params["config/max_len"] == "16" and params["config/epochs"] == "2"
    assert params["data/digest"] and len(params["data/digest"]) == 64 and "git/commit" in params
    assert tags["mode"] == resolved and tags["backbone"] == str(tiny_bert) and tags["bertpooled.kind"] == "train"
    assert tags.get("mlflow.note.content")

    assert set(metrics) >= CONTRACT_METRICS
    assert metrics["params/head"] == metrics["params/head_trainable"] == HEAD_PARAMS[resolved]
    assert 0 <= metrics["test/accuracy"] <= 1
    assert metrics["data/train_examples"] == 36  # 3/4 of 24 per label and metrics["data/test_examples"] == 32
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]

    contexts = sorted(
        next(t.value for t in inp.tags if t.key == "mlflow.data.context") for inp in run.inputs.dataset_inputs
    )
    assert contexts == ["testing", "training"]

    local = client.download_artifacts(run.info.run_id, "predictions/test.csv")
    preds = pd.read_csv(local)
    assert list(preds.columns) == ["id", "label", "probability"] and len(preds) == 32
    assert preds["id"].str.startswith("test/").all()
    config_yaml = Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text()
    assert f"mode: {resolved}" in config_yaml

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    labels = model.predict(["a wonderful film", "dull and far too long"])
    probs = model.predict(["a wonderful film", "dull and far too long"], params={"predict_method": "predict_proba"})
    assert probs.shape == (2, 2) and ((probs >= 0) & (probs <= 1)).all()
    assert labels.tolist() == (probs[:, 1] >= 0.5).astype(int).tolist()


def test_the_logged_model_stores_no_pickle(store, experiment, tiny_bert, tiny_imdb, recwarn):

    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "1")
    assert result.exit_code == 0, result.output
    run = _only_run(MlflowClient())
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    names = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "weights.safetensors" in names and "lstm.py" in names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin"))]
    mlmodel = (folder / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model.pkl" not in names
    # No texts, no rows (not an IndexError from the tokenizer).
    empty = pd.DataFrame({"text": pd.Series([], dtype=str)})
    assert mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
        empty, params={"predict_method": "predict_proba"}
    ).shape == (0, 2)
    # The data read is recorded, not the unset field; MLflow's integer-column hint has no cause left.
    assert (
        f"data: {tiny_imdb}"
        in Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/config.yaml")).read_text()
    )
    assert not [w for w in recwarn if "Inferred schema contains integer" in str(w.message)]
    # MLflow 3's model page: the final metrics belong to the logged model, test/* tied to the test dataset.
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    metrics = {m.key: m for m in logged.metrics}
    assert metrics["test/accuracy"].value == run.data.metrics["test/accuracy"]
    assert metrics["test/accuracy"].dataset_name == "imdb-test" and "time/total_s" in metrics
    plots = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/precision_recall.png"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_over_http(store, experiment, tiny_bert, tiny_imdb, tmp_path):

    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "1", "--mode", "pool")
    assert result.exit_code == 0, result.output
    run = _only_run(MlflowClient())
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"runs:/{run.info.run_id}/model",
            "--env-manager",
            "local",
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, 120)
        body = json.dumps({"inputs": ["a wonderful film", "dull and far too long"]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert len(answer["predictions"]) == 2 and set(answer["predictions"]) <= {0, 1}
        # An empty batch, in the form MLflow's one-column signature takes it (it refuses `{"inputs": []}`).
        body = b'{"dataframe_split": {"columns": ["text"], "data": []}}'
        empty = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        assert json.loads(urllib.request.urlopen(empty, timeout=30).read())["predictions"] == []
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_system_metrics_are_one_setting_away(store, experiment, tiny_bert, tiny_imdb, monkeypatch):

    pytest.importorskip("psutil")
    # Five samples a second, each logged at once: MLflow's monitor logs only after its first interval, and on a
    # quiet machine the tiny run can end within a second.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "1", "--set", "system_metrics=true")
    assert result.exit_code == 0, result.output
    run = _only_run(MlflowClient())
    assert run.data.params["config/system_metrics"] == "True"
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
