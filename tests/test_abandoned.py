"""`bertpooled runs end-abandoned`: RUNNING runs nothing drives are listed (dry run) and ended with the reason, and
compare-runs says why it skips them; runs a live process drives, and runs that are not ours, are left alone."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.contract import HEARTBEAT_TAG, OWNER_TAG
from bertpooled.tracking import ownership
from bertpooled.tracking import store as reads

ENTRY = "mlflow.project.entryPoint"  # what `mlflow run` tags the run it creates with
HOUR_MS = 3600 * 1000
WATCH = ["--watch", "1"]  # the stale run's heartbeat never moves: one second of watching tells it as well as 100


@pytest.fixture(autouse=True)
def quick_heartbeats(monkeypatch):
    """Owners beating every 0.25 s, so a one-second watch is longer than a beat (as --watch must be)."""
    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.25)


def _gone_pid() -> int:
    """The pid of a process of this machine that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


@pytest.fixture()
def runs(store):
    """One RUNNING run of each kind in experiment `bertpooled`, by what it is; and a finished one to compare."""
    client = MlflowClient(store)
    exp = client.create_experiment("bertpooled")
    now_ms = int(time.time() * 1000)
    me = ownership.me()  # this process drives it, as one read tells

    def make(name: str, age_ms: int, tags: dict[str, str], params: dict[str, str] | None = None) -> str:
        run = client.create_run(exp, start_time=now_ms - age_ms, tags=tags, run_name=name)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in (params or {}).items()])
        return run.info.run_id

    made = {
        "never_started": make("never-started", 2 * HOUR_MS, {ENTRY: "main"}, {"mode": "pool"}),
        "too_new": make("too-new", 60 * 1000, {ENTRY: "main"}),
        "started": make("started", 2 * HOUR_MS, {ENTRY: "main"}, {"config/mode": "pool"}),
        "notebook": make("notebook", 2 * HOUR_MS, {}),
        "stale": make("stale", 10_000, {OWNER_TAG: "elsewhere:12:n", HEARTBEAT_TAG: f"{time.time() - 3600:.0f}"}),
        "pid_gone": make("pid-gone", 10_000, {OWNER_TAG: f"{socket.gethostname()}:{_gone_pid()}:n"}),
        "alive": make("alive", 10_000, {OWNER_TAG: me, HEARTBEAT_TAG: f"{time.time():.0f}"}),
    }
    client.set_tag(made["pid_gone"], HEARTBEAT_TAG, f"{time.time():.0f}")
    finished = make("finished", 10_000, {})
    client.set_terminated(finished)
    return client, made


def _statuses(client, made) -> dict[str, str]:
    return {what: client.get_run(run_id).info.status for what, run_id in made.items()}


def test_a_dry_run_lists_what_it_would_end_and_changes_nothing(runs):
    client, made = runs
    before = _statuses(client, made)
    result = CliRunner().invoke(app, ["runs", "end-abandoned", *WATCH])
    assert result.exit_code == 0, result.output
    assert "watching the heartbeats of 1 run(s) owned elsewhere for 1 s" in result.output
    listed = [line for line in result.output.splitlines() if line.startswith("would end")]
    assert sorted(line.split()[2] for line in listed) == ["never-started", "pid-gone", "stale"]
    assert "pass --apply" in result.output
    assert _statuses(client, made) == before


def test_apply_ends_never_started_runs_failed_and_ownerless_ones_killed_with_the_reason(runs):
    client, made = runs
    result = CliRunner().invoke(app, ["runs", "end-abandoned", "--apply", "--experiment", "bertpooled", *WATCH])
    assert result.exit_code == 0, result.output
    expected = {"never_started": "FAILED", "stale": "KILLED", "pid_gone": "KILLED"}
    assert _statuses(client, made) == {what: expected.get(what, "RUNNING") for what in made}
    tags = {what: client.get_run(made[what]).data.tags for what in expected}
    assert "never started" in tags["never_started"]["bertpooled.abandoned"]
    assert "heartbeat did not move in 1 s of watching" in tags["stale"]["bertpooled.abandoned"]
    assert "is gone" in tags["pid_gone"]["bertpooled.abandoned"]
    assert all(t["error"].startswith("ended by `bertpooled runs end-abandoned`") for t in tags.values())
    # Nothing is left to end, and a threshold of 0 minutes makes the too-new run count.
    again = CliRunner().invoke(app, ["runs", "end-abandoned", "--older-than", "0", *WATCH])
    assert [line.split()[2] for line in again.output.splitlines() if line.startswith("would end")] == ["too-new"]


def test_compare_runs_says_why_it_skips_a_run_nothing_drives(runs):
    client, made = runs
    _, notes = reads.select_runs(client, experiment="bertpooled")
    (never,) = [n for n in notes if made["never_started"] in n]
    assert "never started" in never and "bertpooled runs end-abandoned --apply" in never
    (alive,) = [n for n in notes if made["alive"] in n]
    assert "status RUNNING, not FINISHED" in alive
    CliRunner().invoke(app, ["runs", "end-abandoned", "--apply", *WATCH])
    _, notes = reads.select_runs(client, experiment="bertpooled")
    (stale,) = [n for n in notes if made["stale"] in n]
    assert "status KILLED (ended by `bertpooled runs end-abandoned`" in stale


def test_an_unknown_experiment_is_one_line(store):
    from conftest import one_error_line

    one_error_line(CliRunner().invoke(app, ["runs", "end-abandoned", "--experiment", "nope"]), "'nope'")


def test_a_run_claimed_between_finding_and_ending_is_left_alone(runs):
    from bertpooled.tracking import abandoned

    client, made = runs
    experiments = abandoned.experiments_to_search(client, "bertpooled")
    (found,) = [r for r in abandoned.find(client, experiments, 3600, watch_s=1) if r.run_id == made["stale"]]
    client.log_batch(made["stale"], tags=[RunTag(HEARTBEAT_TAG, f"{time.time():.0f}")])  # a resume claimed it
    assert abandoned.end(client, found, 3600) is False
    assert client.get_run(made["stale"]).info.status == "RUNNING"


@contextmanager
def _beating(client, run_id: str):
    """The heartbeat of `run_id` refreshed every 0.1 s from a thread, as a live owner on another machine does."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def test_a_run_owned_elsewhere_is_ended_only_when_its_heartbeat_stands_still(store):
    """No clocks compared: an owner elsewhere whose heartbeat moves is alive, whatever time its tag says (a
    machine 2 h behind); one whose heartbeat stands still through the window is gone."""
    client = MlflowClient(store)
    behind = f"{time.time() - 7200:.0f}"
    beating, still = (
        client.create_run(client.create_experiment(name), tags={OWNER_TAG: "elsewhere:1:n", HEARTBEAT_TAG: behind})
        for name in ("beating", "still")
    )
    with _beating(client, beating.info.run_id):
        # A long window is only a deadline: the watch ends as soon as the heartbeat moves.
        result = CliRunner().invoke(
            app, ["runs", "end-abandoned", "--apply", "--experiment", "beating", "--watch", "120"]
        )
    assert result.exit_code == 0, result.output
    assert "no abandoned runs" in result.output
    assert client.get_run(beating.info.run_id).info.status == "RUNNING"
    result = CliRunner().invoke(app, ["runs", "end-abandoned", "--apply", "--experiment", "still", *WATCH])
    assert result.exit_code == 0, result.output
    assert client.get_run(still.info.run_id).info.status == "KILLED"


@pytest.mark.parametrize("seconds", ["0", "0.25"])
def test_a_watch_no_longer_than_a_heartbeat_is_refused_in_one_line_and_ends_nothing(runs, seconds):
    """A window a live owner may not beat in would take it for gone."""
    from conftest import one_error_line

    client, made = runs
    before = _statuses(client, made)
    result = CliRunner().invoke(app, ["runs", "end-abandoned", "--apply", "--watch", seconds])
    one_error_line(result, "heartbeat interval")
    assert _statuses(client, made) == before
