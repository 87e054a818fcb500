"""Ownership that fences (issue 33): each claim of a run raises its generation; an owner writes only while the store
still holds the generation it claimed; staleness is judged on the reader's clock alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import beating_owner, tiny_args, wait_until
from mlflow.tracking import MlflowClient

from bertpooled.contract import CHECKPOINT_EPOCH_TAG, CHECKPOINT_PATH_TAG, CHECKPOINT_SHA256_TAG, HEARTBEAT_TAG
from bertpooled.tracking import ownership


def _claim_elsewhere(store: str, run_id: str) -> subprocess.CompletedProcess:
    """A second process takes the run over (`--take-over`'s claim), then exits."""
    code = "import sys; from bertpooled.tracking import ownership; ownership.claim(sys.argv[1], 'run', take_over=True)"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    return subprocess.run([sys.executable, "-c", code, run_id], env=env, capture_output=True, text=True, timeout=120)


def test_staleness_is_judged_by_whether_the_heartbeat_moves_never_by_the_owners_clock(store, monkeypatch):
    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.4)
    client = MlflowClient(store)
    exp = client.create_experiment("bertpooled")
    behind = client.create_run(exp).info.run_id
    # An owner whose clock is 2 h behind, beating: alive, whatever its heartbeat's value says.
    with beating_owner(client, behind, "another-host:12:abc"):
        client.set_tag(behind, "bertpooled.heartbeat", f"{time.time() - 7200:.0f}")
        alive, why = ownership.watch(client, behind, within_s=5)
    assert alive, why
    # An owner whose clock is an hour ahead, silent: dead once the reader has watched its heartbeat stand still.
    ahead = client.create_run(exp).info.run_id
    client.set_tag(ahead, "bertpooled.owner", "another-host:13:abc")
    client.set_tag(ahead, "bertpooled.heartbeat", f"{time.time() + 3600:.0f}")
    started = time.monotonic()
    alive, why = ownership.watch(client, ahead, within_s=1.5)
    assert not alive and "did not move" in why, why
    assert time.monotonic() - started < 10


def test_each_claim_raises_the_generation_and_the_owner_that_lost_it_writes_nothing_more(store):
    import mlflow

    from bertpooled.tracking import runs

    client = MlflowClient(store)
    lost = pytest.raises(ownership.LostRun, match=r"taken over by .*writes nothing more")
    with lost, runs.training_run("fenced", {}, "") as run:
        run_id = run.info.run_id
        assert client.get_run(run_id).data.tags["bertpooled.generation"] == "1"
        runs.log_epoch(1, {"train/loss": 0.5})  # held: written
        claimed = _claim_elsewhere(store, run_id)
        assert claimed.returncode == 0, claimed.stderr
        assert client.get_run(run_id).data.tags["bertpooled.generation"] == "2"
        runs.log_epoch(2, {"train/loss": 0.4})  # lost: LostRun, nothing written
    assert mlflow.active_run() is None  # this process let the run go without writing its status
    after = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1]
    assert after.info.status == "RUNNING"  # the new owner's to end, not this process's
    assert after.data.tags["bertpooled.heartbeat"] != ownership.ENDED  # nor did this process let it go
    assert "error" not in after.data.tags
    # And a lost owner's final status is no write either: the block ending normally raises LostRun.
    with pytest.raises(ownership.LostRun), runs.training_run("fenced-at-the-end", {}, "") as run:
        assert _claim_elsewhere(store, run.info.run_id).returncode == 0
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_the_heartbeat_of_an_owner_that_lost_the_run_stops(store, monkeypatch):
    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.3)
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("bertpooled")).info.run_id
    ownership.keep_alive(run_id)
    try:
        assert _claim_elsewhere(store, run_id).returncode == 0
        theirs = client.get_run(run_id).data.tags
        wait_until(lambda: ownership.lost(run_id), 10, "the heartbeat thread noticing the takeover")
        time.sleep(1.0)  # three beats: none of them may be this process's
        assert client.get_run(run_id).data.tags == theirs
        with pytest.raises(ownership.LostRun):
            ownership.hold(run_id)
    finally:
        ownership.let_go(run_id)
    assert client.get_run(run_id).data.tags == theirs  # letting go of a lost run writes nothing


def _pause_outside_a_write(pid: int, store: str) -> None:
    """SIGSTOP `pid` at a moment it holds no SQLite lock (paused mid-write, or mid-read, which in SQLite's rollback
    journal mode keeps a writer from committing, it would lock the store for the process that takes over: a real
    outage, but not the case under test); tries again within 60 s. EXCLUSIVE, not IMMEDIATE: IMMEDIATE succeeds
    beside a reader's SHARED lock, and a paused reader then blocked the takeover's first write."""
    import sqlite3

    deadline = time.monotonic() + 60
    while True:
        os.kill(pid, signal.SIGSTOP)
        db = sqlite3.connect(store.removeprefix("sqlite:///"), timeout=0.5, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            assert time.monotonic() < deadline, "the owner never paused outside a write"
            time.sleep(0.05)
        finally:
            db.close()


@pytest.mark.slow
def test_a_paused_owner_taken_over_stops_at_its_next_write_with_one_line(store, tiny_bert, bigger_imdb, tmp_path):
    """The reported case: an owner paused (SIGSTOP) while `--resume --take-over` finishes its run, then continued:
    it must not log its epochs a second time, log a second model or end the run again."""
    args = [sys.executable, "-m", "bertpooled", "train", *tiny_args(tiny_bert, bigger_imdb), "--epochs", "4"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    # In the test's folder: the experiment `train` creates keeps its artifacts in ./mlruns (MLflow's default),
    # which in the checkout's folder is a file left behind (.ci/run refuses that).
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(store)

    def checkpointed():
        exp = client.get_experiment_by_name("bertpooled")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return next((r for r in runs if "checkpoint/epoch" in r.data.tags), None)

    try:
        run = wait_until(lambda: checkpointed() or first.poll() is not None, 300, "the first checkpoint")
        assert first.poll() is None, first.communicate()[0]
        _pause_outside_a_write(first.pid, store)
        run_id = run.info.run_id
        resume = [sys.executable, "-m", "bertpooled", "train", "--resume", run_id, "--take-over"]
        taken = subprocess.run(
            [*resume, "--data", str(bigger_imdb)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert taken.returncode == 0, taken.stdout + taken.stderr
        finished = client.get_run(run_id)
        assert finished.info.status == "FINISHED"
    finally:
        continued_ms = int(time.time() * 1000)  # every write from here on is the paused owner's
        os.kill(first.pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    after = client.get_run(run_id)
    history = client.get_metric_history(run_id, "train/loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == [1, 2, 3, 4], steps
    # An epoch the owner logged before its pause and after its last checkpoint is logged again by the run that
    # took over (it resumes from that checkpoint): a repeated step, but not a write of the paused owner. Its
    # writes after the pause are those stamped after it continued.
    late_epochs = [m.step for m in history if m.timestamp >= continued_ms]
    # MLflow's store has no conditional write, so a check and the write it guards are two steps: a pause that
    # lands between them lets that one write through when the owner continues (docs/interrupted-runs.md). What
    # fencing promises is the rest: nothing after it (before, the paused owner logged every remaining epoch
    # again, a second model, and ended the run again).
    ended_again = after.info.end_time != finished.info.end_time
    changed = {
        k
        for k in after.data.tags.keys() | finished.data.tags.keys()
        if after.data.tags.get(k) != finished.data.tags.get(k)
    }
    checkpoint_tags = {CHECKPOINT_PATH_TAG, CHECKPOINT_EPOCH_TAG, CHECKPOINT_SHA256_TAG}  # one write: set together
    # The one write through, if any: an epoch's metrics, the end, or a checkpoint's pointer (the pause fell between
    # log_checkpoint's second check and its tags), beside the heartbeat thread's own checked write.
    one_write = len(late_epochs) + ended_again + bool(changed & checkpoint_tags)
    assert one_write <= 1, (steps, late_epochs, ended_again, changed, output)
    assert changed <= {HEARTBEAT_TAG, *checkpoint_tags}, changed
    assert after.info.status == "FINISHED"
    if not ended_again:  # the owner's next write found the run taken and stopped with one line
        assert first.returncode == 2, output
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "taken over" in errors[0] and "Traceback" not in output, output
