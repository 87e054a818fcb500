"""Which live process drives a run: an owner tag and a heartbeat the owner keeps fresh in the tracking store.

A run shows RUNNING both while its process trains it and after that process was killed (kill -9, a lost
machine): MLflow cannot tell them apart. So whoever drives a run (a training run, a sweep's parent) writes
`bertpooled.owner` (host, pid, a nonce) and refreshes `bertpooled.heartbeat` (Unix seconds) every HEARTBEAT_S
from a daemon thread. Being tags in the tracking store, they work across machines through a tracking server.

A RUNNING run is *alive* while its heartbeat is younger than STALE_AFTER_S, unless its owner is a process on
this machine that no longer exists (then it is dead at once). `--resume` and `--resume-parent` refuse a live
run, and take over a dead one; `--take-over` takes over one that looks alive (its owner known to be gone,
within the stale window). Clocks: the age compares the owner's clock with the reader's, so machines sharing
a tracking server need synchronised clocks (NTP) to within the stale window.
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

from bertpooled.contract import HEARTBEAT_TAG, OWNER_TAG
from bertpooled.errors import BertpooledError

HEARTBEAT_S = float(os.environ.get("BERTPOOLED_HEARTBEAT_S", "30"))
STALE_AFTER_S = 3 * HEARTBEAT_S + 10
# How long a claim waits before reading back whose it is: two processes claiming one run at the same moment
# both write; the later write wins, and the earlier writer, reading it back, gives way.
CLAIM_SETTLE_S = 1.0

# The heartbeat an owner leaves when it lets a run go (the run ended, or the resume gave up): no one drives it.
ENDED = "ended"
_NONCE = uuid.uuid4().hex[:12]
_beats: dict[str, tuple[threading.Event, int]] = {}
_beats_lock = threading.Lock()


def me() -> str:
    """This process as an owner: `host:pid:nonce` (the nonce tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_NONCE}"


def liveness(tags: dict[str, str], status: str, now: float | None = None) -> tuple[bool, str]:
    """(whether a live process drives the run, a few words saying why) from the run's tags and status.

    Not only RUNNING runs: a KILLED run that a resume has claimed, and is preparing to continue, is driven too.
    """
    if status == "FINISHED":
        return False, "it FINISHED"
    owner, beat = tags.get(OWNER_TAG, ""), tags.get(HEARTBEAT_TAG, "")
    if beat == ENDED:
        return False, f"its last owner let it go; it shows {status}"
    try:
        age = (now or time.time()) - float(beat)
    except ValueError:
        return False, f"it shows {status} and no owner ever kept it alive (an older run, or one killed at its start)"
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not _pid_exists(int(pid)):
        return False, f"it shows {status} but its process ({pid} on this machine) is gone"
    if age > STALE_AFTER_S:
        return False, f"it shows {status} but its owner's last heartbeat was {age:.0f} s ago"
    return True, f"its owner {owner} (heartbeat {max(age, 0):.0f} s ago) is driving it"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def claim(run_id: str, what: str, take_over: bool = False, client: MlflowClient | None = None) -> None:
    """Make this process the owner of `run_id` and keep it alive (see `keep_alive`), or a one-line error when a
    live process owns it. `what` names the run in the error ("run", "sweep"); `take_over` claims a run that looks
    alive (its owner known to be gone). Released with `let_go`."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    alive, why = liveness(run.data.tags, run.info.status)
    if alive and not take_over:
        raise BertpooledError(
            f"{what} {run_id} is still being driven by another process: {why}. Wait for it or stop it; if you know "
            f"that process is gone, pass --take-over (or wait {STALE_AFTER_S:.0f} s without a heartbeat)"
        )
    _write(client, run_id)
    time.sleep(CLAIM_SETTLE_S)
    winner = client.get_run(run_id).data.tags.get(OWNER_TAG)
    if winner != me():
        raise BertpooledError(
            f"{what} {run_id} was claimed by another process ({winner}) at the same moment: let that one drive it"
        )
    keep_alive(run_id)


def keep_alive(run_id: str) -> None:
    """Start (or count one more user of) the thread that refreshes `run_id`'s heartbeat every HEARTBEAT_S."""
    with _beats_lock:
        if run_id in _beats:
            stop, users = _beats[run_id]
            _beats[run_id] = (stop, users + 1)
            return
        stop = threading.Event()
        _beats[run_id] = (stop, 1)
    _write(MlflowClient(), run_id)

    def beat() -> None:
        client = MlflowClient()
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                _write(client, run_id)

    threading.Thread(target=beat, name=f"bertpooled-heartbeat-{run_id[:8]}", daemon=True).start()


def let_go(run_id: str) -> None:
    """One user fewer of `run_id`'s heartbeat; the last one stops it (the tags stay, with their last time)."""
    with _beats_lock:
        if run_id not in _beats:
            return
        stop, users = _beats.pop(run_id)
        if users > 1:
            _beats[run_id] = (stop, users - 1)
            return
    stop.set()
    with contextlib.suppress(Exception):
        MlflowClient().set_tag(run_id, HEARTBEAT_TAG, ENDED)


def _write(client: MlflowClient, run_id: str) -> None:
    client.log_batch(run_id, tags=[RunTag(OWNER_TAG, me()), RunTag(HEARTBEAT_TAG, f"{time.time():.0f}")])
