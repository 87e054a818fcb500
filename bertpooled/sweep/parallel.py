"""`sweep --parallel N` (`ParallelExecutor`): children side by side in N fresh processes, stopped cleanly by
Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bertpooled.config import Config
from bertpooled.contract import KILLED, SWEEP_CHILD_TAG, SWEEP_KEY_TAG, SWEEP_PARALLEL_TAG, SWEEP_SHARED_INPUTS_TAG
from bertpooled.run.experiment import run_or_resume
from bertpooled.sweep.executor import Work
from bertpooled.sweep.local import LocalExecutor
from bertpooled.tracking import sweeps

# Worker-process state for `_run_parallel`: the sweep's stop flag, whether a child is running here now, and the
# sweep's process (pid) and parent run, which an orphaned worker marks before it exits.
_stop = None
_busy = False
_sweep: tuple[int, str, str] | None = None


def _worker_init(stop, parent_pid: int | None = None, parent_run_id: str = "", tracking_uri: str = "") -> None:
    """In each worker: Ctrl-C or SIGTERM stops the sweep (the flag every worker checks before starting a child)
    and interrupts the child running here, which ends its run KILLED with its last checkpoint; an idle worker
    just waits for the parent to wind the pool down, unless the parent is gone: then it exits.

    The worker dies with the sweep's process: on Linux the kernel sends it SIGTERM when that process dies
    (PR_SET_PDEATHSIG; SIGKILL included), elsewhere a thread watches for it. Without this, a SIGKILLed sweep
    left its workers (and their queued children) running under PID 1, holding their memory for good.
    """
    from bertpooled.sweep import interrupts

    global _stop, _sweep
    _stop = stop
    _sweep = (parent_pid or os.getppid(), parent_run_id, tracking_uri)

    def take(signum: int) -> bool:
        global _busy
        with contextlib.suppress(Exception):  # its semaphore may belong to a process that died
            _stop.set()
        busy, _busy = _busy, False  # one interrupt per child: a second signal must not cut its cleanup short
        if not busy and _orphaned():
            _leave()
        return busy

    interrupts.install(take)
    _die_with_parent()


def _orphaned() -> bool:
    return _sweep is not None and os.getppid() != _sweep[0]


def _die_with_parent() -> None:
    """SIGTERM to this worker when the sweep's process dies (already dead: now); an idle orphan exits.

    On Linux the kernel sends the signal (PR_SET_PDEATHSIG), at once; everywhere a thread also checks every
    second, and is what makes an orphan that is idle (or went idle after its interrupted child) exit.
    """
    import signal
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
            time.sleep(1.0)
            if not _orphaned():
                continue
            if not _busy:
                _leave()
            if not signalled:  # the child running here ends KILLED, then this worker leaves (see _child_in_process)
                signalled = True
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bertpooled-parent-watch", daemon=True).start()


def _leave() -> None:
    """An orphaned worker's exit: mark the sweep's parent run KILLED if nothing else can, then go."""
    if _sweep and _sweep[1]:
        try:
            sweeps.use_tracking_uri(_sweep[2])
            sweeps.end_if_running(
                _sweep[1],
                KILLED,
                "the sweep's process died (killed or crashed); its workers "
                "stopped with it: resume with --resume-parent",
            )
        except Exception:
            pass
    os._exit(1)


def _child_in_process(
    config: Config, parent_id: str, tags: dict[str, str], tracking_uri: str, resume_run_id: str | None = None
):
    """One child in a worker process: it reads the parent's on-disk caches instead of its memory.

    Returns None, creating no run, when the sweep was stopped before this child started.
    """
    import sys

    global _busy
    label = tags[SWEEP_CHILD_TAG]
    try:
        _busy = True  # before the check: a stop signalled from here on interrupts this child
        if _stop is not None and _stop.is_set():
            return None
        sweeps.use_tracking_uri(tracking_uri)
        return run_or_resume(
            config,
            resume_run_id,
            progress=False,
            parent_run_id=parent_id,
            tags=tags,
            log=lambda line: print(f"[{label}] {line}", file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        if _stop is not None:
            with contextlib.suppress(Exception):
                _stop.set()
        raise
    finally:
        _busy = False
        if _orphaned():
            _leave()  # the child's run ended (KILLED with its checkpoint); no one is left to take its result


@dataclass
class ParallelExecutor:
    """`--parallel N`: the children side by side in N fresh processes, on the on-disk caches the parent filled; a
    single child runs here (`LocalExecutor`), as N processes would not speed it up."""

    parallel: int
    group_seeds: bool | None = None
    name = "local"
    shares_inputs = True

    def start(self, children: Sequence) -> None:
        pass

    def describe(self) -> str:
        return f"{self.parallel} processes"

    def run(self, work: Work) -> Iterator[str]:
        if len(work.todo) <= 1:
            yield from LocalExecutor(self.group_seeds).run(work)
            return
        yield f"{len(work.todo)} children, {self.parallel} at a time"
        work.ran.extend(
            run_parallel(work.todo, work.parent_id, self.parallel, work.log, work.resumable, work.keep_threads)
        )

    def close(self) -> None:
        pass


def run_parallel(
    todo: Sequence,
    parent_id: str,
    parallel: int,
    log: Callable[[str], None],
    resumable: dict[str, str] | None = None,
    keep_threads: bool = False,
) -> list:
    """Children side by side in `parallel` fresh processes, each with its share of the CPU threads.

    The first failure cancels the children not yet started, lets the running ones end, then propagates.
    Ctrl-C or SIGTERM (to this process, or to the whole process group) stops the sweep: no child starts
    after it, each running child ends KILLED with its last checkpoint (a resume of the sweep continues it),
    then KeyboardInterrupt propagates.
    """
    import concurrent.futures as cf
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with cf.ProcessPoolExecutor(
        max_workers=parallel,
        mp_context=context,
        initializer=_worker_init,
        initargs=(stop, os.getpid(), parent_id, sweeps.tracking_uri()),
    ) as pool:
        futures = {}
        for child in todo:
            config = child.config
            if not config.num_threads and not keep_threads:  # kept: a resumed sweep's earlier children had auto
                config = dataclasses.replace(config, num_threads=threads)
            tags = {
                SWEEP_KEY_TAG: child.key,
                SWEEP_CHILD_TAG: child.label,
                SWEEP_SHARED_INPUTS_TAG: "on-disk caches the parent filled",
                SWEEP_PARALLEL_TAG: str(parallel),
            }
            args = (config, parent_id, tags, sweeps.tracking_uri(), (resumable or {}).get(child.key))
            futures[pool.submit(_child_in_process, *args)] = child
        log(f"running {len(todo)} children, {parallel} at a time, {threads} thread(s) each")
        ran, error, interrupted = _collect(futures, stop, log)
    if interrupted:
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return ran


def _collect(futures: dict, stop, log: Callable[[str], None]) -> tuple[list, BaseException | None, bool]:
    """Wait for the children's futures: (their Outcomes, the first error, whether the sweep was interrupted).

    An error cancels the children not yet started; Ctrl-C here (not in a worker: a signal to this process alone,
    or to the group, which the workers got as well) starts nothing more and passes the interrupt on to the
    children still running."""
    import concurrent.futures as cf
    import multiprocessing
    import signal

    ran, error, interrupted = [], None, False
    pending = set(futures)
    while pending:
        try:
            for future in cf.as_completed(pending):
                pending.discard(future)
                try:
                    outcome = future.result()
                except cf.CancelledError:
                    continue
                except KeyboardInterrupt:
                    interrupted = True
                    log(f"{futures[future].label}: interrupted, its run marked KILLED")
                    continue
                except BaseException as exc:
                    error = error or exc
                    for other in futures:
                        other.cancel()
                    continue
                if outcome is not None:
                    ran.append(outcome)
                    log(f"{futures[future].label}: finished")
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            for future in futures:
                future.cancel()
            for process in multiprocessing.active_children():
                if process.pid is not None:  # always, for an active child
                    with contextlib.suppress(OSError):
                        os.kill(process.pid, signal.SIGTERM)
        if interrupted or error is not None:
            stop.set()
    return ran, error, interrupted
