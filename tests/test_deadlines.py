"""Every wait on the tracking store has a deadline, and Ctrl-C/SIGTERM is answered within seconds (issue 33): tried
against a local TCP port that accepts connections and never answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from bertpooled.tracking import deadlines


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections complete in the kernel's backlog and are never answered."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        yield silent.getsockname()[1]
    finally:
        silent.close()


def test_store_waits_get_deadlines_by_default_and_the_users_values_win(monkeypatch):
    for name in deadlines.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's
    monkeypatch.setenv("PGOPTIONS", "")  # the user's opt-out (a PgBouncer that refuses startup options)
    added = deadlines.bound_store_waits()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7" and os.environ["PGOPTIONS"] == ""
    assert set(added) == set(deadlines.DEFAULTS) - {"MLFLOW_HTTP_REQUEST_TIMEOUT", "PGOPTIONS"}
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5" and os.environ["PGCONNECT_TIMEOUT"] == "10"
    for name, value in deadlines.DEFAULTS.items():  # MLflow's own defaults wait minutes: each one is bounded
        if name.startswith("MLFLOW_HTTP"):
            from mlflow import environment_variables

            assert int(value) < int(getattr(environment_variables, name).default), name


def test_every_command_bounds_its_store_waits_before_its_first_contact(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from bertpooled.cli import app

    for name in deadlines.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    CliRunner().invoke(app, ["compare-runs", "--no-log"])
    assert all(os.environ.get(name) == value for name, value in deadlines.DEFAULTS.items())


def test_the_writes_that_end_an_interrupted_run_wait_seconds_on_a_server_that_never_answers(monkeypatch, silent_port):
    for name, value in deadlines.DEFAULTS.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(f"http://127.0.0.1:{silent_port}")
    started = time.monotonic()
    with deadlines.hurried(), pytest.raises(Exception):  # noqa: B017 - MLflow's own error for a timed-out request
        client.set_terminated("0" * 32, "KILLED")
    assert time.monotonic() - started < 15  # one try of 5 s; MLflow's defaults: 120 s, 7 retries
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20"  # and the run's own deadlines are back


_HANGS_IN_THE_DRIVER = """
import sys
from bertpooled.tracking import interrupts
import psycopg
interrupts.install()
print("connecting", flush=True)
try:
    psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), dbname="mlflow", user="mlflow", password="pw")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_sigterm_is_answered_within_seconds_while_the_store_driver_waits_on_a_silent_database(silent_port):
    """The reported case: `train` ignored SIGTERM while libpq waited on a port that accepts and never answers
    (the signal was held back for as long as a store call ran, to keep its transaction whole)."""
    pytest.importorskip("psycopg")
    env = {k: v for k, v in os.environ.items() if k not in ("PGCONNECT_TIMEOUT", "PGOPTIONS")}  # no deadline of its own
    env["MLFLOW_TRACKING_URI"] = f"postgresql://mlflow:pw@127.0.0.1:{silent_port}/mlflow"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGS_IN_THE_DRIVER, str(silent_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connecting"
        time.sleep(2.0)  # inside the driver's wait
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in out, (out, err)
    assert waited < 10, waited  # deferred at most 3 s, then taken inside the call
