"""A real PostgreSQL and a real `mlflow server` on 127.0.0.1: training logs through it, compare-runs reads from it,
and a run survives the server being stopped and restarted in its middle."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port, invoke_tiny, wait_for_http, write_imdb_archive, write_imdb_tree
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PG_BIN, reason="PostgreSQL is not installed (.ci/run installs Debian's postgresql)"),
]


def as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database `mlflow`; yields its URI."""
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (in the dev extras)")
    # Not under pytest's tmp folder: that one is private to root, and the server runs as user postgres.
    folder = Path(tempfile.mkdtemp(prefix="bertpooled-pg-"))
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    bin_dir = Path(PG_BIN[-1])
    subprocess.run(
        as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(data / "log"),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {data}",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], check=True
        )
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


class Server:
    """`mlflow server` on PostgreSQL with served artifacts, on loopback; can be stopped and started again."""

    def __init__(self, db_uri: str, artifacts: Path) -> None:
        self.db_uri, self.artifacts, self.port, self.proc = db_uri, artifacts, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                self.db_uri,
                "--artifacts-destination",
                str(self.artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.artifacts.parent / "server.log", "ab"),  # noqa: SIM115 - the server's log for its lifetime
            start_new_session=True,
        )
        log = self.artifacts.parent / "server.log"
        wait_for_http(f"{self.uri}/health", self.proc, 90, lambda: log.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    srv = Server(postgres, tmp_path_factory.mktemp("artifacts"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture()
def via_server(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"server-{tmp_path.name}")
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    return server


def test_training_logs_through_the_server_and_compare_runs_reads_it_back(via_server, tiny_bert, tiny_imdb):
    for mode in ("basic", "pool"):
        result = invoke_tiny("train", tiny_bert, tiny_imdb, "--mode", mode)
        assert result.exit_code == 0, result.output
        assert via_server.uri in result.output  # the UI links point at the server
    client = MlflowClient(via_server.uri)
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["config/mode"] for r in runs) == ["basic", "pool"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert client.list_artifacts(runs[0].info.run_id, "predictions")  # served artifacts

    report = CliRunner().invoke(
        app,
        ["compare-runs", "--experiment", exp.name, "--tracking-uri", via_server.uri, "--format", "json", "--no-log"],
    )
    assert report.exit_code == 0, report.output
    assert '"pool"' in report.output and '"basic"' in report.output


def test_a_run_survives_the_server_restarting_in_its_middle(via_server, tiny_bert, tmp_path):
    data = write_imdb_archive(write_imdb_tree(tmp_path / "imdb", per_label=100), tmp_path / "aclImdb_v1.tar.gz")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertpooled",
            "train",
            "--config",
            str(ROOT / "experiments" / "smoke.yaml"),
            "--model",
            str(tiny_bert),
            "--data",
            str(data),
            "--max-len",
            "16",
            "--epochs",
            "12",
            "--max-train-examples",
            "0",
        ],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(via_server.uri)
    exp_name = os.environ["MLFLOW_EXPERIMENT_NAME"]
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(exp_name)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and int(runs[0].data.tags.get("checkpoint/epoch", "0")) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the server could be restarted"
    via_server.stop()
    time.sleep(3)  # the client retries with backoff meanwhile (MLflow's bounded HTTP retries)
    via_server.start()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name(exp_name).experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 13))
    assert "test/accuracy" in run.data.metrics and run.data.tags["checkpoint/epoch"] == "12"
