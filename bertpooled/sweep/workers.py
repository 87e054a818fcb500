"""One way to start a worker process, for every pool the project runs (`sweep --parallel`, `tune --parallel`,
any later one): fresh (spawned) processes that die with the process that started them.

A worker dies with its parent: on Linux the kernel sends it SIGTERM when the parent dies (PR_SET_PDEATHSIG,
SIGKILL of the parent included), and everywhere a thread checks every second. SIGTERM (or Ctrl-C) interrupts
the work running in the worker, which ends its run KILLED with its last checkpoint; a worker with no work
running only notes the stop, unless its parent is gone: then it exits. An orphaned worker marks the pool's
parent run KILLED on its way out, since nothing else is left to. Without this a SIGKILLed sweep or study left
its workers training under PID 1 for good, and its parent run RUNNING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bertpooled.config import Config
from bertpooled.contract import KILLED
from bertpooled.errors import BertpooledError
from bertpooled.tracking import sweeps

#: The error tag an orphaned worker leaves on the pool's parent run.
ORPHANED = "its process died (killed or crashed); the workers stopped with it"


@dataclass(frozen=True)
class Owner:
    """Who a worker works for: the pool's process, its parent run (may be empty) and the tracking store; what to
    tell the user on the parent run when the process dies."""

    pid: int
    run_id: str = ""
    tracking_uri: str = ""
    resume_hint: str = ""


# This worker process's state: the pool's stop flag, whether work runs here now (until its cleanup has ended),
# whether that work was interrupted already, and whom it works for.
_stop = None
_busy = False
_interrupted = False
_owner: Owner | None = None


def context():
    """The multiprocessing context of every pool: spawn (a fork would copy torch's threads and locks)."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def owner(run_id: str = "", resume_hint: str = "") -> Owner:
    """This process as the owner of a pool about to start, whose parent run is `run_id`."""
    return Owner(os.getpid(), run_id, sweeps.tracking_uri(), resume_hint)


def init(stop, owned_by: Owner) -> None:
    """The first thing in each worker: signals and the tie to the parent (see the module doc). `stop` is the
    pool's Event (or None): set here on a signal, so that no worker of the pool starts more work."""
    from bertpooled.tracking import interrupts

    global _stop, _owner
    _stop, _owner = stop, owned_by

    def take(signum: int) -> bool:
        global _interrupted
        with contextlib.suppress(Exception):  # its semaphore may belong to a process that died
            if _stop is not None:
                _stop.set()
        if _busy:
            # One interrupt per piece of work: a second must not cut its cleanup short. The work stays busy until
            # its cleanup (ending its run KILLED) is over, so that nothing makes this orphan leave before that.
            first, _interrupted = not _interrupted, True
            return first
        if orphaned():
            leave()
        return False

    interrupts.install(take)
    _die_with_parent()


def stopped() -> bool:
    """Whether the pool was told to stop (a worker starts no more work then)."""
    return _stop is not None and _stop.is_set()


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Work running in this worker: a signal from here on interrupts it (KeyboardInterrupt), and stops the pool;
    if the parent died meanwhile, the worker leaves once the work has ended (its run KILLED)."""
    global _busy, _interrupted
    _busy, _interrupted = True, False
    try:
        yield
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            if _stop is not None:
                _stop.set()
        raise
    finally:
        _busy = False  # the work and its cleanup are over: from here an orphan may leave
        if orphaned():
            leave()


def orphaned() -> bool:
    return _owner is not None and os.getppid() != _owner.pid


def _die_with_parent() -> None:
    """SIGTERM to this worker when the pool's process dies (already dead: now); an idle orphan exits.

    On Linux the kernel sends the signal (PR_SET_PDEATHSIG), at once; everywhere a thread also checks every
    second, and is what makes an orphan that is idle (or went idle after its interrupted work) exit.
    """
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        signalled = sys.platform.startswith("linux")
        while True:
            if orphaned():  # at once too: the parent may have died before the kernel was asked to tell us
                if not _busy:
                    leave()
                if not signalled:  # the work running here ends KILLED, then this worker leaves (see busy)
                    signalled = True
                    os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)

    threading.Thread(target=watch, name="bertpooled-parent-watch", daemon=True).start()


def leave() -> None:
    """An orphaned worker's exit: mark the pool's parent run KILLED if nothing else has, then go."""
    if _owner is not None and _owner.run_id:
        try:
            sweeps.use_tracking_uri(_owner.tracking_uri)
            reason = f"{ORPHANED}{': ' + _owner.resume_hint if _owner.resume_hint else ''}"
            sweeps.end_if_running(_owner.run_id, KILLED, reason)
        except Exception as exc:  # the store may be gone too: the run stays as it is, and a resume finds it
            from bertpooled.tracking.runs import say_not_ended

            say_not_ended(_owner.run_id, KILLED, exc)
    os._exit(1)


def terminate(pids: Sequence[int | None]) -> None:
    """SIGTERM to each live worker: its running work ends KILLED with its checkpoint, an idle one notes the stop."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def share_threads(config: Config, count: int) -> Config:
    """`config` as one of `count` workers on this machine runs it: an unset thread count is its share of the cores
    (a worker alone keeps torch's own choice)."""
    if count <= 1 or config.num_threads:
        return config
    return dataclasses.replace(config, num_threads=max(1, (os.cpu_count() or 1) // count))


def run_here(
    target: Callable[..., None],
    args: Any,
    count: int,
    log: Callable[[str], None],
    owned_by: Owner,
    what: str = "worker",
) -> None:
    """`target(args, i)` for i in range(count): in this process (with `log`) when `count` is 1, else in `count`
    fresh processes started as every pool's are (they die with this one). Ctrl-C or SIGTERM ends them all (their
    running work KILLED), then propagates; a worker that fails is a one-line error naming it, after all ended."""
    if count <= 1:
        target(args, 0, log)
        return
    ctx = context()
    stop = ctx.Event()
    started = [
        ctx.Process(target=_pool_worker, args=(target, args, i, stop, owned_by), name=f"{what}-{i}")
        for i in range(count)
    ]
    for worker in started:
        worker.start()
    try:
        for worker in started:
            worker.join()
    except KeyboardInterrupt:
        stop.set()
        terminate([w.pid for w in started if w.is_alive()])
        for worker in started:
            worker.join()
        raise
    failed = [f"{w.name} (exit {w.exitcode})" for w in started if w.exitcode]
    if failed:
        raise BertpooledError(
            f"{', '.join(failed)} stopped with an error (see its lines above): fix it, then {owned_by.resume_hint}"
        )


def _pool_worker(target: Callable[..., None], args: Any, index: int, stop, owned_by: Owner) -> None:
    """One process of `run_here`'s pool: tied to the pool (see `init`), its work interruptible (see `busy`)."""
    init(stop, owned_by)
    with busy():
        target(args, index, None)
