"""Faults found by trying the service as an attacker would (issue 15): secrets, caches, bad input, provenance,
resume side effects, bad servers. Everything on 127.0.0.1, bounded in time, cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from conftest import wait_for_http

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")
SECRET = "s3cret-pw"


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", "--config", SMOKE, "--max-len", "16", *args])


def assert_user_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in errors[0], errors[0]


def runs_in(uri: str) -> list:
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def no_auth_env(monkeypatch):
    """MLflow's basic-auth variables start unset and are restored afterwards (the code under test sets them)."""
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a SQLite store with served artifacts, on loopback; its URI."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(folder / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, 120,
                      lambda: (folder / "server.log").read_text(errors="replace")[-2000:])
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


# --- 1. credentials ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_never_reaches_the_terminal_or_the_run(
    mlflow_server, no_auth_env, tiny_bert, tiny_imdb, tmp_path, monkeypatch
):
    with_password = mlflow_server.replace("http://", f"http://alice:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"secrets-{tmp_path.name}")
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert result.exit_code == 0, result.output
    assert "View run" in result.output  # MLflow's own line is there, without the password
    report = CliRunner().invoke(app, ["compare-runs", "--experiment", f"secrets-{tmp_path.name}", "--tracking-uri",
                                      with_password, "--format", "json"])
    assert report.exit_code in (0, 2), report.output
    for output in (result.output, report.output):
        assert SECRET not in output and "alice:" not in output
    (run, *_) = [r for r in runs_in(mlflow_server) if r.data.tags.get("bertpooled.kind") == "train"]
    logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert SECRET not in logged


def test_a_data_uri_with_credentials_is_not_echoed_in_the_error(store, tiny_bert):
    result = invoke("--model", str(tiny_bert), "--data", f"https://alice:{SECRET}@127.0.0.1:9/aclImdb_v1.tar.gz")
    assert_user_error(result, "127.0.0.1:9/aclImdb_v1.tar.gz")
    assert SECRET not in result.output and "alice" not in result.output


def test_uri_credentials_move_into_mlflows_basic_auth_variables(no_auth_env, monkeypatch):
    from bertpooled.tracking import move_uri_credentials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:p%40ss@mlflow.example.org:8443/")
    move_uri_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org:8443/"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "p@ss")
    assert move_uri_credentials("postgresql://u:p@db/mlflow") == "postgresql://u:p@db/mlflow"  # the driver needs them
