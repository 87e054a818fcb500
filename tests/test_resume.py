"""Interrupt and resume: real signals to a real training process, then the same run continued exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest
from conftest import killed_run_with_a_checkpoint, tiny_args
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app

EPOCHS = "20"


def train_args(tiny_bert, data) -> list[str]:
    return [
        "train",
        *tiny_args(tiny_bert, data),
        "--epochs",
        EPOCHS,
        "--max-train-examples",
        "0",
        "--max-test-examples",
        "0",
        "--seed",
        "1",
    ]


def final_metrics(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "train/", "params/"))}


def losses(client, run_id) -> list[tuple[int, float]]:
    history = client.get_metric_history(run_id, "train/loss")
    return sorted({(m.step, m.value) for m in history})


def interrupt_after_a_checkpoint(store, args, sig) -> tuple[subprocess.CompletedProcess, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertpooled", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client = MlflowClient(store)
    deadline = time.time() + 120
    run_id = None
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("bertpooled")
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
        if runs and int(runs[0].data.tags.get("checkpoint/epoch", "0")) >= 2:
            run_id = runs[0].info.run_id
            proc.send_signal(sig)
            break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert run_id, f"no checkpoint seen before the run ended: {err[-2000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run_id


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(store, tiny_bert, bigger_imdb, sig):
    args = train_args(tiny_bert, bigger_imdb)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (done,) = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])

    killed_proc, run_id = interrupt_after_a_checkpoint(store, args, sig)
    assert killed_proc.returncode != 0
    run = client.get_run(run_id)
    if sig == signal.SIGTERM:
        assert run.info.status == "KILLED", killed_proc.stderr[-3000:]
        assert f"bertpooled train --resume {run_id}" in killed_proc.stderr
        assert killed_proc.stderr.count("\n") < 60 and "Traceback" not in killed_proc.stderr
    else:
        assert run.info.status == "RUNNING"  # kill -9 leaves it so; resume takes it anyway

    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(bigger_imdb)])
    assert resumed.exit_code == 0, resumed.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_after_epoch"]) >= 2
    assert final_metrics(run) == final_metrics(done)
    assert losses(client, run_id) == losses(client, done.info.run_id)
    a = pd.read_csv(client.download_artifacts(run_id, "predictions/test.csv"))
    b = pd.read_csv(client.download_artifacts(done.info.run_id, "predictions/test.csv"))
    pd.testing.assert_frame_equal(a, b)


def test_resuming_with_another_config_is_refused(store, tiny_bert, tiny_imdb, monkeypatch):
    run_id = killed_run_with_a_checkpoint(
        store, tiny_bert, tiny_imdb, monkeypatch, "--max-train-examples", "0", "--seed", "1"
    )
    result = CliRunner().invoke(app, ["train", "--resume", run_id, "--epochs", "5"])
    assert result.exit_code == 2 and "another config" in result.output and "epochs" in result.output


def test_a_tampered_checkpoint_is_refused(store, tiny_bert, tiny_imdb, monkeypatch):
    run_id = killed_run_with_a_checkpoint(
        store, tiny_bert, tiny_imdb, monkeypatch, "--max-train-examples", "0", "--seed", "1"
    )
    run = MlflowClient(store).get_run(run_id)
    folder = Path(urlparse(run.info.artifact_uri).path) / run.data.tags["checkpoint/path"]
    meta = folder / "meta.json"
    meta.write_text(meta.read_text().replace('"epoch": 2', '"epoch": 1'))
    result = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert result.exit_code == 2 and "does not match the sha256" in result.output
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"  # left as it was


def test_resuming_what_cannot_be_resumed_is_a_one_line_error(store, tiny_bert, tiny_imdb):
    result = CliRunner().invoke(app, ["train", "--resume", "0123456789abcdef0123456789abcdef"])
    assert result.exit_code == 2 and "no run 0123456789abcdef" in result.output
    done = CliRunner().invoke(app, [*train_args(tiny_bert, tiny_imdb)[:-4], "--epochs", "1"])
    assert done.exit_code == 0, done.output
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    result = CliRunner().invoke(app, ["train", "--resume", run.info.run_id])
    assert result.exit_code == 2 and "already FINISHED" in result.output
    mlflow.set_tracking_uri(None)
