"""`sweep --executor ray` on a real 2-node Ray cluster made here, logging into the real PostgreSQL-backed `mlflow
server` with served artifacts (test_server's fixtures): the same results as the local executor, on both nodes,
and a sweep that loses its worker node mid-run still ends with every child FINISHED once, its numbers unchanged."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, free_port, write_imdb_archive, write_imdb_tree
from mlflow.tracking import MlflowClient
from test_server import PG_BIN, postgres, server  # noqa: F401 - postgres, server: pytest fixtures
from typer.testing import CliRunner

from bertpooled.cli import app


def on_a_cluster(test):
    """A test that starts a Ray cluster and the PostgreSQL-backed server (minutes, not seconds)."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.timeout(900),
        pytest.mark.skipif(not PG_BIN, reason="PostgreSQL is not installed (.ci/run installs Debian's postgresql)"),
        pytest.mark.skipif(
            importlib.util.find_spec("ray") is None,
            reason='Ray is not installed: pip install -e ".[ray]" (CI installs it)',
        ),
    ):
        test = mark(test)
    return test


# Ray turns 127.0.0.1 into the machine's outward address; any other loopback address it keeps as given, so the
# nodes advertise (and talk over) loopback only. (Ray's servers still listen on all interfaces: Ray 2.60 has no
# bind option; the ports are random and live only as long as the test.)
NODE_IP = "127.0.0.2"
WORKER_RESOURCE = "bertpooled_test_worker"
# Children compare equal across executors only with the same config: the Ray executor would otherwise give
# torch --cpus-per-run threads and the local one all cores.
SAME_THREADS = ("--set", "num_threads=1")


def ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def session_pids(sid: int) -> list[int]:
    """Every process in session `sid`: a node's `ray start` leader and all it spawned (workers make their own
    process groups, but stay in the session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def kill_session(proc: subprocess.Popen, sig: int) -> None:
    for pid in session_pids(proc.pid):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


class Cluster:
    """A head node and worker nodes, each its own `ray start --block` session, all on loopback."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        # Short path: Ray's unix sockets live under it, and socket paths are limited to ~100 characters.
        self.temp = tempfile.mkdtemp(prefix="ray-")
        self.port = free_port()
        self.address = f"{NODE_IP}:{self.port}"
        self.logs, self.env, self.nodes = tmp, env, []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                ray_bin(),
                "start",
                "--block",
                "--node-ip-address",
                NODE_IP,
                "--num-cpus",
                "1",
                "--object-store-memory",
                str(100 * 2**20),
                "--disable-usage-stats",
                *args,
            ],
            env=self.env,
            stdout=open(self.logs / f"{name}.log", "ab"),  # noqa: SIM115 - the node's log for its lifetime
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.nodes.append(proc)
        return proc

    def start_head(self) -> None:
        self._start(
            "head", ["--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", self.temp]
        )

    def add_worker(self) -> tuple[subprocess.Popen, str]:
        """A second node with its own resource; returns its process and its node id once it joined."""
        proc = self._start("worker", ["--address", self.address, "--resources", json.dumps({WORKER_RESOURCE: 1})])
        return proc, self._wait_for_worker(proc)

    def _wait_for_worker(self, proc: subprocess.Popen, timeout: float = 120) -> str:
        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            f"print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and {WORKER_RESOURCE!r} in "
            "n['Resources']]))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, (self.logs / "worker.log").read_text(errors="replace")[-2000:]
            found = subprocess.run(
                [sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=60
            )
            ids = (
                json.loads(found.stdout.strip().splitlines()[-1])
                if found.returncode == 0 and found.stdout.strip()
                else []
            )
            if ids:
                return ids[0]
            time.sleep(1)
        raise AssertionError("the worker node did not join the cluster")

    def stop(self, proc: subprocess.Popen) -> None:
        kill_session(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        kill_session(proc, signal.SIGKILL)  # whatever ignored SIGTERM: no node outlives its test

    def stop_all(self) -> None:
        for proc in reversed(self.nodes):
            self.stop(proc)
        import shutil

        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head node; tests add (and may kill) their own worker nodes."""
    tmp = tmp_path_factory.mktemp("ray")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "BERTPOOLED_CACHE": str(tmp / "cache"),
        # A home of its own: a local Ray started earlier on this machine (ray.init) leaves ~/.ray/auth_token, and
        # `ray start` then refuses to join a cluster without that token ("InvalidAuthToken").
        "HOME": str(tmp / "home"),
    }
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "RAY_ADDRESS",
    ):
        env.pop(var, None)  # the nodes learn the tracking server from each task, as on a real cluster
    nodes = Cluster(tmp, env)
    try:
        nodes.start_head()
        yield nodes
    finally:
        nodes.stop_all()


def sweep(server, cluster, experiment: str, *args: str, executor: str = "ray", timeout: float = 480, wait: bool = True):  # noqa: F811 - the server fixture
    cmd = [
        sys.executable,
        "-m",
        "bertpooled",
        "sweep",
        "--config",
        SMOKE,
        "--max-len",
        "16",
        "--no-progress",
        "--experiment",
        experiment,
        "--format",
        "json",
        *SAME_THREADS,
        *args,
    ]
    if executor == "ray":
        cmd += ["--executor", "ray", "--address", cluster.address]
    env = {**cluster.env, "MLFLOW_TRACKING_URI": server.uri}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def children(client: MlflowClient, experiment: str) -> tuple[object, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("bertpooled.kind") == "sweep"]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def what(run) -> dict[str, float]:
    """What a child computed (not how long it took, nor where)."""
    return {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "train/", "params/"))}


def without_ids(value):
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if not k.endswith("run_id")}
    return [without_ids(v) for v in value] if isinstance(value, list) else value


def report(stdout: str) -> dict:
    """The compare-runs report's findings: each run's scores, the accuracy differences and McNemar's tests."""
    payload = json.loads(stdout[stdout.index("{") :])
    runs = sorted((r["mode"], r["seed"], r["accuracy"], r["f1"], r["roc_auc"]) for r in payload["runs"])
    comparisons = [
        {k: without_ids(v) for k, v in c.items() if "accuracy" in k or "mcnemar" in k} for c in payload["comparisons"]
    ]
    assert comparisons and all(c for c in comparisons)
    return {"runs": runs, "comparisons": comparisons}


def test_without_ray_the_ray_executor_is_a_one_line_error(monkeypatch, tiny_bert, tiny_imdb, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = CliRunner().invoke(
        app, ["sweep", "--config", SMOKE, "--model", str(tiny_bert), "--data", str(tiny_imdb), "--executor", "ray"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        'error: --executor ray needs Ray, which is not installed: pip install -e ".[ray]" in the project\'s folder'
    ]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed: pip install -e ".[ray]"')
@pytest.mark.parametrize(
    "args, words",
    [
        (["--device", "cuda"], "device=cuda with --gpus-per-run 0"),
        (["--cpus-per-run", "0"], "--cpus-per-run 0.0 must be > 0"),
        (["--parallel", "2"], "--parallel is for --executor local"),
        (["--address", "127.0.0.2:1"], "no Ray cluster answers at 127.0.0.2:1"),
    ],
)
def test_bad_ray_sweeps_fail_in_one_line_before_joining_a_cluster(
    args, words, tiny_bert, tiny_imdb, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:1")  # nothing listens there: joining would fail, not start a Ray
    result = CliRunner().invoke(
        app,
        ["sweep", "--config", SMOKE, "--model", str(tiny_bert), "--data", str(tiny_imdb), "--executor", "ray", *args],
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and words in line, line
    assert not (tmp_path / "mlflow.db").exists()


@on_a_cluster
def test_a_sweep_on_two_nodes_computes_what_the_local_executor_does(server, cluster, tiny_bert, tiny_imdb):  # noqa: F811 - the server fixture
    worker, worker_id = cluster.add_worker()
    try:
        grid = (
            "--model",
            str(tiny_bert),
            "--data",
            str(tiny_imdb),
            "--epochs",
            "2",
            "--modes",
            "basic,pool",
            "--seeds",
            "2",
        )
        ray_run = sweep(server, cluster, "on-ray", *grid)
        assert ray_run.returncode == 0, ray_run.stderr[-4000:]
        local_run = sweep(server, cluster, "on-local", *grid, executor="local")
        assert local_run.returncode == 0, local_run.stderr[-4000:]
    finally:
        cluster.stop(worker)

    client = MlflowClient(server.uri)
    parent, on_ray = children(client, "on-ray")
    _, on_local = children(client, "on-local")
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["sweep/child"] for c in on_ray) == ["basic-s0", "basic-s1", "pool-s0", "pool-s1"]
    assert {c.info.status for c in on_ray} == {"FINISHED"}
    # Both nodes ran children: the worker node (found by its own resource) and the head.
    nodes = {c.data.tags["sweep/node"] for c in on_ray}
    assert len(nodes) == 2 and worker_id in nodes, nodes
    # Ray changes where, not what: every child's numbers, and the comparison built from them, are the local ones.
    local = {c.data.tags["sweep/child"]: what(c) for c in on_local}
    assert {c.data.tags["sweep/child"]: what(c) for c in on_ray} == local
    assert report(ray_run.stdout) == report(local_run.stdout)
    # Checkpoints and predictions went through the server: no node wrote into another's filesystem.
    assert client.list_artifacts(on_ray[0].info.run_id, "predictions")
    # One line per child start and finish, each naming its node.
    for label in ("basic-s0", "basic-s1", "pool-s0", "pool-s1"):
        for event in ("started", "finished"):
            assert ray_run.stderr.count(f"{label}: {event} on node {NODE_IP} ") == 1, ray_run.stderr[-3000:]


@on_a_cluster
def test_a_sweep_that_loses_its_worker_node_still_finishes_every_child_once(server, cluster, tiny_bert, tmp_path):  # noqa: F811 - the server fixture
    data = write_imdb_archive(write_imdb_tree(tmp_path / "imdb", per_label=100), tmp_path / "aclImdb_v1.tar.gz")
    grid = (
        "--model",
        str(tiny_bert),
        "--data",
        str(data),
        "--epochs",
        "12",
        "--max-train-examples",
        "0",
        "--modes",
        "basic,pool",
        "--seeds",
        "1",
    )
    worker, worker_id = cluster.add_worker()
    client = MlflowClient(server.uri)
    proc = sweep(server, cluster, "lose-a-node", *grid, wait=False)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and killed is None:
            exp = client.get_experiment_by_name("lose-a-node")
            for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []:
                tags = run.data.tags
                if tags.get("sweep/node") == worker_id and int(tags.get("checkpoint/epoch", "0")) >= 2:
                    killed = run
                    kill_session(worker, signal.SIGKILL)  # the whole node at once: raylet, workers, agents
                    break
            time.sleep(0.2)
        assert killed is not None, "no child reached a checkpoint on the worker node before the sweep ended"
        _out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.stop(worker)
    assert proc.returncode == 0, err[-4000:]

    parent, runs = children(client, "lose-a-node")
    assert parent.info.status == "FINISHED"
    # Every child FINISHED exactly once; the killed one continued in its own run, on the head node.
    assert sorted(c.data.tags["sweep/child"] for c in runs) == ["basic-s0", "pool-s0"], runs
    assert {c.info.status for c in runs} == {"FINISHED"}
    again = client.get_run(killed.info.run_id)
    assert again.data.tags["sweep/node"] != worker_id and int(again.data.tags["resumed_after_epoch"]) >= 2
    assert "resumed after epoch" in err and f"{again.data.tags['sweep/child']}: finished on node" in err
    # (an epoch logged after the last checkpoint is trained and logged again, to the same value)
    steps = {(m.step, m.value) for m in client.get_metric_history(killed.info.run_id, "train/loss")}
    assert sorted(step for step, _ in steps) == list(range(1, 13)), steps

    # Its numbers are an uninterrupted run's.
    label = again.data.tags["sweep/child"]
    alone = sweep(
        server, cluster, "uninterrupted", *grid[:-4], "--modes", label.split("-")[0], "--seeds", "1", executor="local"
    )
    assert alone.returncode == 0, alone.stderr[-4000:]
    _, (reference,) = children(client, "uninterrupted")
    assert what(again) == what(reference)


@on_a_cluster
def test_ctrl_c_on_the_driver_marks_the_sweep_killed_and_a_resume_continues_from_the_checkpoint(
    server,  # noqa: F811 - the server fixture
    cluster,
    tiny_bert,
    tmp_path,
):
    data = write_imdb_archive(write_imdb_tree(tmp_path / "imdb", per_label=100), tmp_path / "aclImdb_v1.tar.gz")
    grid = (
        "--model",
        str(tiny_bert),
        "--data",
        str(data),
        "--epochs",
        "12",
        "--max-train-examples",
        "0",
        "--modes",
        "basic",
        "--seeds",
        "1",
    )
    client = MlflowClient(server.uri)
    proc = sweep(server, cluster, "interrupted", *grid, wait=False)  # on the head node alone
    try:
        deadline, stopped = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None and stopped is None:
            exp = client.get_experiment_by_name("interrupted")
            for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []:
                if int(run.data.tags.get("checkpoint/epoch", "0")) >= 2:
                    stopped = run
                    proc.send_signal(signal.SIGINT)
                    break
            time.sleep(0.2)
        assert stopped is not None, "the child reached no checkpoint before the sweep ended"
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    parent, runs = children(client, "interrupted")
    assert parent.info.status == "KILLED" and [r.info.status for r in runs] == ["KILLED"]
    assert f"resume it with --resume-parent {parent.info.run_id}" in err, err[-3000:]

    resumed = sweep(server, cluster, "interrupted", *grid, "--resume-parent", parent.info.run_id)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    parent, runs = children(client, "interrupted")
    assert parent.info.status == "FINISHED"
    (run,) = runs  # the same run, continued: no second child for the same config
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_after_epoch"]) >= 2 and "resumed after epoch" in resumed.stderr
