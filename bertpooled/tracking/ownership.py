"""Which live process drives a run, and fencing: an owner writes only while it still holds its claim.

A run shows RUNNING both while its process trains it and after that process was killed (kill -9, a lost
machine): MLflow cannot tell them apart. So whoever drives a run (a training run, a sweep's parent) writes
`bertpooled.owner` (host, pid, a nonce), `bertpooled.generation` (a counter every start or takeover of the run
raises) and refreshes `bertpooled.heartbeat` every HEARTBEAT_S from a daemon thread. Being tags in the tracking
store, they work across machines through a tracking server.

Staleness is judged by one clock, the reader's: a run whose owner may be alive (another machine, or a live
process here) is watched, and it is alive when its heartbeat changes within STALE_AFTER_S of the reader's
monotonic clock, dead when it does not. No two machines' clocks are compared. A local owner whose process
is gone is dead at once.

Fencing: before each write that matters (an epoch's metrics, a checkpoint, the model, the final metrics and
status) the owner calls `hold`, which reads the generation back; when another process has claimed the run
since (a `--take-over`, or a takeover after this owner was paused past the stale window), `hold` raises
`LostRun`, the heartbeat stops, and nothing more is written to the run by this process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from bertpooled.contract import GENERATION_TAG, HEARTBEAT_TAG, OWNER_TAG
from bertpooled.errors import BertpooledError

HEARTBEAT_S = float(os.environ.get("BERTPOOLED_HEARTBEAT_S", "30"))
STALE_AFTER_S = 3 * HEARTBEAT_S + 10
# How long a claim waits before reading back whose it is: two processes claiming one run at the same moment
# both write; the later write wins, and the earlier writer, reading it back, gives way.
CLAIM_SETTLE_S = 1.0

# The heartbeat an owner leaves when it lets a run go (the run ended, or the resume gave up): no one drives it.
ENDED = "ended"
_NONCE = uuid.uuid4().hex[:12]
# run id -> (the heartbeat's stop event, users in this process, the generation this process holds)
_beats: dict[str, tuple[threading.Event, int, int]] = {}
_lost: dict[str, str] = {}  # run id -> the line saying who took it
_beats_lock = threading.Lock()


class LostRun(BertpooledError):
    """Another process claimed the run this process drove: this one stops and writes nothing more to it."""


def me() -> str:
    """This process as an owner: `host:pid:nonce` (the nonce tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_NONCE}"


def liveness(tags: dict[str, str], status: str) -> tuple[bool | None, str]:
    """(whether a live process drives the run, a few words saying why) from one read of its tags and status;
    None when one read cannot tell (an owner elsewhere, or a live process here): `watch` the heartbeat then.

    Not only RUNNING runs: a KILLED run that a resume has claimed, and is preparing to continue, is driven too.
    """
    if status == "FINISHED":
        return False, "it FINISHED"
    owner, beat = tags.get(OWNER_TAG, ""), tags.get(HEARTBEAT_TAG, "")
    if beat == ENDED:
        return False, f"its last owner let it go; it shows {status}"
    if not beat:
        return False, f"it shows {status} and no owner ever kept it alive (an older run, or one killed at its start)"
    if owner == me():
        return True, "this process drives it"
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not _pid_exists(int(pid)):
        return False, f"it shows {status} but its process ({pid} on this machine) is gone"
    return None, f"its owner {owner} may be driving it"


def watch(client: MlflowClient, run_id: str, within_s: float | None = None) -> tuple[bool, str]:
    """Watch `run_id`'s heartbeat on this process's clock: alive when it changes (or the run is let go, or
    ends) within `within_s` (STALE_AFTER_S), dead when it stays as it was."""
    return watch_many(client, [run_id], within_s)[run_id]


def watch_many(client: MlflowClient, run_ids: list[str], within_s: float | None = None) -> dict[str, tuple[bool, str]]:
    """`watch` for several runs at once, in one window of `within_s` (not one window each): run id -> (alive,
    why). A run is decided as soon as one read can tell (`liveness`) or its heartbeat moves."""
    within_s = STALE_AFTER_S if within_s is None else within_s
    first = {run_id: client.get_run(run_id).data.tags.get(HEARTBEAT_TAG, "") for run_id in run_ids}
    decided: dict[str, tuple[bool, str]] = {}
    started = time.monotonic()
    while len(decided) < len(run_ids) and time.monotonic() - started < within_s:
        time.sleep(min(1.0, HEARTBEAT_S / 4, within_s / 4))
        for run_id in (r for r in run_ids if r not in decided):
            run = client.get_run(run_id)
            alive, why = liveness(run.data.tags, run.info.status)
            if alive is not None:
                decided[run_id] = (alive, why)
            elif run.data.tags.get(HEARTBEAT_TAG, "") != first[run_id]:
                owner = run.data.tags.get(OWNER_TAG, "")
                decided[run_id] = (True, f"its owner {owner} is driving it (its heartbeat moved while watched)")
    gone = (False, f"its owner's heartbeat did not move in {within_s:.0f} s of watching")
    return {run_id: decided.get(run_id, gone) for run_id in run_ids}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def claim(run_id: str, what: str, take_over: bool = False, client: MlflowClient | None = None) -> None:
    """Make this process the owner of `run_id` at the next generation and keep it alive (see `keep_alive`), or
    a one-line error when a live process owns it. `what` names the run in the error ("run", "sweep");
    `take_over` claims a run that looks alive, fencing its owner out. Released with `let_go`."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    alive, why = liveness(run.data.tags, run.info.status)
    if alive is None and not take_over:
        alive, why = watch(client, run_id)
    if alive and not take_over:
        raise BertpooledError(
            f"{what} {run_id} is still being driven by another process: {why}. Wait for it or stop it; if you know "
            f"that process is gone or should stop, pass --take-over (it stops at its next write)"
        )
    generation = generation_of(client.get_run(run_id).data.tags) + 1
    _write(client, run_id, generation)
    time.sleep(CLAIM_SETTLE_S)
    tags = client.get_run(run_id).data.tags
    if tags.get(OWNER_TAG) != me() or tags.get(GENERATION_TAG) != str(generation):
        raise BertpooledError(
            f"{what} {run_id} was claimed by another process ({tags.get(OWNER_TAG)}) at the same moment: "
            "let that one drive it"
        )
    keep_alive(run_id, generation)


def generation_of(tags: dict[str, str]) -> int:
    """The claim's generation a run's tags hold (0 for a run no owner ever claimed)."""
    value = tags.get(GENERATION_TAG, "")
    return int(value) if value.isdigit() else 0


def keep_alive(run_id: str, generation: int | None = None) -> None:
    """Start (or count one more user of) the thread that refreshes `run_id`'s heartbeat every HEARTBEAT_S.

    Without `generation` (a run this process starts, not one it claimed) the run's generation is raised by one.
    """
    with _beats_lock:
        if run_id in _beats:
            stop, users, held = _beats[run_id]
            _beats[run_id] = (stop, users + 1, held)
            return
        stop = threading.Event()
        _lost.pop(run_id, None)
    client = MlflowClient()
    if generation is None:
        generation = generation_of(client.get_run(run_id).data.tags) + 1
        _write(client, run_id, generation)
    with _beats_lock:
        _beats[run_id] = (stop, 1, generation)

    def beat() -> None:
        beats = MlflowClient()
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                if _still_held(beats, run_id, generation):
                    beats.set_tag(run_id, HEARTBEAT_TAG, _now())

    threading.Thread(target=beat, name=f"bertpooled-heartbeat-{run_id[:8]}", daemon=True).start()


def hold(run_id: str | None) -> None:
    """Before a write that matters to `run_id`: `LostRun` when another process has claimed it since this one did.
    A run this process does not drive (or None) passes."""
    if run_id is None:
        return
    with _beats_lock:
        lost = _lost.get(run_id)
        held = _beats.get(run_id)
    if lost:
        raise LostRun(lost)
    if held is not None and not _still_held(MlflowClient(), run_id, held[2]):
        raise LostRun(_lost[run_id])


def end_run_held(run_id: str, status: str) -> None:
    """End the fluent API's active run `run_id` with `status` if this process still holds it; else end it here
    without a write and raise `LostRun`."""
    import mlflow

    try:
        hold(run_id)
    except LostRun:
        forget_active_run(run_id)
        raise
    mlflow.end_run(status)


def hold_active() -> None:
    """`hold` for the fluent API's active run (the run an epoch, a checkpoint or the model is logged to)."""
    import mlflow

    active = mlflow.active_run()
    hold(active.info.run_id if active else None)


def lost(run_id: str) -> bool:
    """Whether this process lost `run_id` to another owner (then it must write nothing more to it)."""
    with _beats_lock:
        return run_id in _lost


def _still_held(client: MlflowClient, run_id: str, generation: int) -> bool:
    tags = client.get_run(run_id).data.tags
    now = generation_of(tags)
    if now == generation:
        return True
    line = (
        f"run {run_id} was taken over by {tags.get(OWNER_TAG, 'another process')} (claim {now}; this process held "
        f"claim {generation}): this process stops and writes nothing more to it"
    )
    with _beats_lock:
        _lost[run_id] = line
        entry = _beats.pop(run_id, None)
    if entry is not None:
        entry[0].set()
    return False


def let_go(run_id: str) -> None:
    """One user fewer of `run_id`'s heartbeat; the last one stops it and marks the heartbeat ENDED (unless the
    run was lost to another owner: then nothing is written)."""
    with _beats_lock:
        if run_id not in _beats:
            return
        stop, users, generation = _beats.pop(run_id)
        if users > 1:
            _beats[run_id] = (stop, users - 1, generation)
            return
    stop.set()
    with contextlib.suppress(Exception):
        client = MlflowClient()
        if _still_held(client, run_id, generation):
            client.set_tag(run_id, HEARTBEAT_TAG, ENDED)


def _now() -> str:
    # For people reading the tag; no reader compares it with its own clock, only watches whether it moves.
    return f"{time.time():.3f}"


def _write(client: MlflowClient, run_id: str, generation: int) -> None:
    client.log_batch(
        run_id,
        tags=[RunTag(OWNER_TAG, me()), RunTag(HEARTBEAT_TAG, _now()), RunTag(GENERATION_TAG, str(generation))],
    )


# A tracking URI no store answers to: `forget_active_run` points MLflow's fluent API at it for one call.
_NOWHERE = "bertpooled-lost-run:"


def forget_active_run(run_id: str) -> None:
    """End the fluent API's active run `run_id` in this process without writing to the store: the run's status
    is its new owner's to write. (MLflow's `end_run` pops the run, then writes its status through a client it
    makes from the tracking URI; pointed nowhere, that write fails and is dropped. Without this, MLflow's exit
    hook would end the run FINISHED under its new owner.)"""
    import mlflow

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = _NOWHERE
    explicit = mlflow.get_tracking_uri() != _NOWHERE  # set by mlflow.set_tracking_uri, which the variable loses to
    before = mlflow.get_tracking_uri()
    try:
        if explicit:
            mlflow.set_tracking_uri(_NOWHERE)
        with contextlib.suppress(Exception):
            mlflow.end_run("KILLED")
    finally:
        if explicit:
            mlflow.set_tracking_uri(before)
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env
