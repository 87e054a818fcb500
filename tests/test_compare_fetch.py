import json
import socket
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bertpooled.errors import BertpooledError
from bertpooled.report.compare import compare_runs
from bertpooled.tracking.store import load_predictions, select_runs

N_TEST = 200
LABELS = np.arange(N_TEST) % 2
IDS = [f"test/{'pos' if label else 'neg'}/{i}_8" for i, label in enumerate(LABELS)]


def _predictions(n_correct: int) -> pd.DataFrame:
    correct = np.arange(N_TEST) < n_correct
    predicted = np.where(correct, LABELS, 1 - LABELS)
    return pd.DataFrame({"id": IDS, "label": LABELS, "probability": np.where(predicted == 1, 0.8, 0.2)})


def _log_training_run(
    tmp_path,
    experiment_id,
    mode,
    seed,
    n_correct,
    *,
    status="FINISHED",
    parent_run_id=None,
    with_predictions=True,
    extra_metrics=None,
):
    tags = {"mode": mode, "backbone": "minilm", "bertpooled.kind": "train"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{mode}-s{seed}", tags=tags) as run:
        mlflow.log_params(
            {
                "config/mode": mode,
                "config/model": "minilm",
                "config/seed": seed,
                "config/epochs": 2,
                "config/batch_size": 32,
                "config/max_len": 128,
                "config/lr": 1e-3,
                "config/train_fraction": 0.75,
                "config/pool": "avg:2x2" if mode == "pool" else "none",
                "git/commit": "abc123",
                "data/digest": "d1",
                "data/train_examples": 800,
                "data/test_examples": N_TEST,
            }
        )
        for epoch in (1, 2):
            mlflow.log_metrics(
                {"train/loss": 0.7 - 0.1 * epoch, "train/accuracy": 0.6 + 0.1 * epoch, "time/epoch_s": 5.0}, step=epoch
            )
        total = 30.0 if mode == "basic" else 18.0
        mlflow.log_metrics(
            {
                "test/accuracy": n_correct / N_TEST,
                "test/f1": n_correct / N_TEST,
                "test/roc_auc": 0.9,
                "time/data_s": 1.0,
                "time/tokenize_s": 1.0,
                "time/features_s": 2.0,
                "time/train_s": total - 6.0,
                "time/eval_s": 2.0,
                "time/total_s": total,
                "throughput/train_examples_per_s": 800 / (total - 6.0),
                "params/head": 50_321.0 if mode == "basic" else 25_745.0,
                "params/head_trainable": 50_321.0 if mode == "basic" else 25_745.0,
                "params/backbone": 22_000_000.0,
                **(extra_metrics or {}),
            }
        )
        if with_predictions:
            path = tmp_path / f"pred-{run.info.run_id}" / "test.csv"
            path.parent.mkdir()
            _predictions(n_correct).to_csv(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="predictions")
    if status != "FINISHED":
        MlflowClient().set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A SQLite tracking store with a sweep of 2 seeds x basic/pool, a failed run and a
    run without predictions, all children of one sweep parent.

    Module-scoped because creating the store dominates the test time; tests only
    add comparison runs, which every selection leaves out.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _sweep_store(tmp_path_factory.mktemp("tracking"), monkeypatch)


def _sweep_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("bertpooled", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment_id, run_name="sweep", tags={"bertpooled.kind": "sweep"}) as parent:
        pass
    parent_id = parent.info.run_id
    ids = {}
    for seed, (basic, pool) in enumerate([(170, 168), (172, 171)]):
        ids[f"basic{seed}"] = _log_training_run(tmp_path, experiment_id, "basic", seed, basic, parent_run_id=parent_id)
        ids[f"pool{seed}"] = _log_training_run(
            tmp_path, experiment_id, "pool", seed, pool, parent_run_id=parent_id, extra_metrics={"latency/p50_ms": 1.5}
        )
    ids["failed"] = _log_training_run(tmp_path, experiment_id, "pool", 7, 100, status="FAILED", parent_run_id=parent_id)
    ids["nopreds"] = _log_training_run(
        tmp_path, experiment_id, "basic", 9, 150, with_predictions=False, parent_run_id=parent_id
    )
    yield {"uri": uri, "experiment_id": experiment_id, "parent": parent_id, "ids": ids, "tmp": tmp_path}
    mlflow.set_tracking_uri(None)


def test_compare_runs_end_to_end(sweep_store, tmp_path):
    output = tmp_path / "report"
    report = compare_runs(tracking_uri=sweep_store["uri"], output=output)

    assert [group.label for group in report.groups] == ["basic", "pool"]
    assert [group.n_runs for group in report.groups] == [2, 2]
    (comparison,) = report.comparisons
    assert comparison.accuracy_difference_points.n == 2
    assert comparison.accuracy_difference_points.mean == pytest.approx(-0.75)
    assert len(comparison.mcnemar) == 2
    assert comparison.ratios["time/total_s"] == pytest.approx(0.6)
    assert comparison.ratios["latency/p50_ms"] != comparison.ratios["latency/p50_ms"]  # basic lacks it: NaN
    assert "latency/p50_ms" in report.cost_metrics
    assert "pool vs basic: no significant difference" in comparison.verdict
    assert report.learning_curves["basic"]["train/loss"][1]["mean"] == pytest.approx(0.5)
    notes = "\n".join(report.notes)
    assert sweep_store["ids"]["failed"] in notes and "FAILED" in notes
    assert sweep_store["ids"]["nopreds"] in notes and "no predictions/test.csv" in notes
    assert "1 sweep run(s)" in notes

    written = {path.name for path in output.iterdir()}
    assert {"report.md", "report.json", "report.csv", "accuracy_vs_time.png", "learning_curves.png"} <= written
    page = (output / "report.html").read_text()
    # One self-contained page: every section, both plots inlined, nothing fetched from elsewhere.
    assert "<h2>Verdicts</h2>" in page and "<h2>Config</h2>" in page and page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "<script" not in page
    payload = json.loads((output / "report.json").read_text())
    assert payload["settings"]["baseline"] == "basic"
    assert (output / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(sweep_store["uri"])
    logged = client.get_run(report.comparison_run_id)
    assert logged.data.tags["bertpooled.kind"] == "comparison"
    assert logged.info.run_name == "compare-4runs"
    assert logged.info.status == "FINISHED"
    assert logged.info.experiment_id != sweep_store["experiment_id"]  # the training experiment stays clean
    assert client.get_experiment(logged.info.experiment_id).name == "bertpooled-comparisons"
    assert logged.data.metrics["compare/n_runs"] == 4
    assert "vs/basic/pool/accuracy_diff_points" in logged.data.metrics
    artifacts = {item.path for item in client.list_artifacts(report.comparison_run_id)}
    assert {"report.md", "report.json", "report.html", "accuracy_vs_time.png", "learning_curves.png"} <= artifacts

    # A second comparison leaves the comparison run out of the selection.
    again = compare_runs(tracking_uri=sweep_store["uri"], no_log=True)
    assert again.comparison_run_id is None
    assert len(again.runs) == 4
    assert not any("comparison run(s)" in note for note in again.notes)  # none landed in the training experiment


def test_select_by_parent_filter_and_run_ids(sweep_store):
    runs, _ = select_runs(sweep_store["uri"], parent_run_id=sweep_store["parent"], include_unfinished=True)
    assert len(runs) == 6
    assert "params.config/mode" in runs.columns and "metrics.test/accuracy" in runs.columns

    runs, _ = select_runs(sweep_store["uri"], filter_string="params.`config/mode` = 'pool'")
    assert set(runs["params.config/mode"]) == {"pool"}

    wanted = [sweep_store["ids"]["basic0"], sweep_store["ids"]["pool0"]]
    report = compare_runs(tracking_uri=sweep_store["uri"], run_id=wanted, no_log=True, format="json")
    assert sorted(run.run_id for run in report.runs) == sorted(wanted)
    assert "needs ≥2 seeds" in report.comparisons[0].verdict


def test_load_predictions_notes_nothing_for_missing_artifacts(sweep_store):
    ids = sweep_store["ids"]
    predictions, notes = load_predictions(sweep_store["uri"], [ids["pool0"], ids["nopreds"]])
    assert list(predictions) == [ids["pool0"]]
    frame = predictions[ids["pool0"]]
    assert list(frame.columns) == ["id", "label", "probability"]
    assert pd.api.types.is_string_dtype(frame["id"]) and frame["id"].iloc[0] == IDS[0]
    assert notes == []


def test_user_errors(sweep_store):
    with pytest.raises(BertpooledError, match=r"unknown experiment 'nope'.*--experiment"):
        compare_runs(tracking_uri=sweep_store["uri"], experiment="nope", no_log=True)
    with pytest.raises(BertpooledError, match="matched no runs"):
        compare_runs(tracking_uri=sweep_store["uri"], filter="params.`config/mode` = 'hourglass'", no_log=True)
    with pytest.raises(BertpooledError, match="invalid --filter"):
        compare_runs(tracking_uri=sweep_store["uri"], filter="params.mode ===", no_log=True)
    with pytest.raises(BertpooledError, match="unknown parent run"):
        compare_runs(tracking_uri=sweep_store["uri"], parent="0" * 32, no_log=True)
    with pytest.raises(BertpooledError, match="unknown run id"):
        compare_runs(tracking_uri=sweep_store["uri"], run_id=["f" * 32], no_log=True)
    with pytest.raises(BertpooledError, match="--format"):
        compare_runs(tracking_uri=sweep_store["uri"], format="html")
    with pytest.raises(BertpooledError, match="--include-unfinished"):
        compare_runs(tracking_uri=sweep_store["uri"], run_id=[sweep_store["ids"]["failed"]], no_log=True)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast():
    start = time.monotonic()
    with pytest.raises(BertpooledError, match="cannot reach the MLflow tracking server"):
        compare_runs(tracking_uri=f"http://127.0.0.1:{_closed_port()}", no_log=True)
    assert time.monotonic() - start < 15


def test_password_in_the_tracking_uri_is_not_printed():
    with pytest.raises(BertpooledError) as raised:
        select_runs(f"http://alice:s3cret@127.0.0.1:{_closed_port()}")
    assert "s3cret" not in str(raised.value)
