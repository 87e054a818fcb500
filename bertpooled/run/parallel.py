"""`sweep --parallel N`: children side by side in N fresh processes, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Sequence

from bertpooled.config import Config
from bertpooled.run.experiment import run_or_resume
from bertpooled.contract import SWEEP_CHILD_TAG, SWEEP_KEY_TAG, SWEEP_PARALLEL_TAG, SWEEP_SHARED_INPUTS_TAG
from bertpooled.tracking import sweeps

# Worker-process state for `_run_parallel`: the sweep's stop flag, and whether a child is running here now.
_stop = None
_busy = False


def _worker_init(stop) -> None:
    """In each worker: Ctrl-C or SIGTERM stops the sweep (the flag every worker checks before starting a child)
    and interrupts the child running here, which ends its run KILLED with its last checkpoint; an idle worker
    just waits for the parent to wind the pool down."""
    from bertpooled.run import interrupts

    global _stop
    _stop = stop

    def take(signum: int) -> bool:
        global _busy
        _stop.set()
        busy, _busy = _busy, False  # one interrupt per child: a second signal must not cut its cleanup short
        return busy

    interrupts.install(take)


def _child_in_process(config: Config, parent_id: str, tags: dict[str, str], tracking_uri: str,
                      resume_run_id: str | None = None):
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
        return run_or_resume(config, resume_run_id, progress=False, parent_run_id=parent_id, tags=tags,
                          log=lambda line: print(f"[{label}] {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        if _stop is not None:
            _stop.set()
        raise
    finally:
        _busy = False


def run_parallel(todo: Sequence, parent_id: str, parallel: int, log: Callable[[str], None],
                  resumable: dict[str, str] | None = None) -> list:
    """Children side by side in `parallel` fresh processes, each with its share of the CPU threads.

    The first failure cancels the children not yet started, lets the running ones end, then propagates.
    Ctrl-C or SIGTERM (to this process, or to the whole process group) stops the sweep: no child starts
    after it, each running child ends KILLED with its last checkpoint (a resume of the sweep continues it),
    then KeyboardInterrupt propagates. Kept in one function: the pool, its futures and the interrupt handling
    only make sense together.
    """
    import concurrent.futures as cf
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    ran, error, interrupted = [], None, False
    with cf.ProcessPoolExecutor(max_workers=parallel, mp_context=context, initializer=_worker_init,
                                initargs=(stop,)) as pool:
        futures = {}
        for child in todo:
            config = child.config
            if not config.num_threads:
                config = dataclasses.replace(config, num_threads=threads)
            tags = {SWEEP_KEY_TAG: child.key, SWEEP_CHILD_TAG: child.label, SWEEP_SHARED_INPUTS_TAG: "on-disk caches the parent filled",
                    SWEEP_PARALLEL_TAG: str(parallel)}
            futures[pool.submit(_child_in_process, config, parent_id, tags, sweeps.tracking_uri(),
                                (resumable or {}).get(child.key))] = child
        log(f"running {len(todo)} children, {parallel} at a time, {threads} thread(s) each")
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
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the running children end
                        error = error or exc
                        for other in futures:
                            other.cancel()
                        continue
                    if outcome is not None:
                        ran.append(outcome)
                        log(f"{futures[future].label}: finished")
            except KeyboardInterrupt:
                # Here, not in a worker: a signal to this process alone (or to the group, which the workers got
                # as well). Start nothing more, and pass the interrupt on to the children still running.
                interrupted = True
                stop.set()
                for future in futures:
                    future.cancel()
                for process in multiprocessing.active_children():
                    with contextlib.suppress(OSError):
                        os.kill(process.pid, signal.SIGTERM)
            if interrupted or error is not None:
                stop.set()
    if interrupted:
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return ran
