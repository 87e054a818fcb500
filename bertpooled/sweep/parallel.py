"""`sweep --parallel N` (`ParallelExecutor`): children side by side in N fresh processes, stopped cleanly by
Ctrl-C or SIGTERM."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bertpooled.config import Config
from bertpooled.contract import SWEEP_CHILD_TAG, SWEEP_KEY_TAG, SWEEP_PARALLEL_TAG, SWEEP_SHARED_INPUTS_TAG
from bertpooled.run.experiment import run_or_resume
from bertpooled.sweep import workers
from bertpooled.sweep.executor import Work
from bertpooled.sweep.local import LocalExecutor
from bertpooled.tracking import sweeps


def _child_in_process(
    config: Config, parent_id: str, tags: dict[str, str], tracking_uri: str, resume_run_id: str | None = None
):
    """One child in a worker process (see `workers`): it reads the parent's on-disk caches instead of its memory.

    Returns None, creating no run, when the sweep was stopped before this child started.
    """
    import sys

    label = tags[SWEEP_CHILD_TAG]
    with workers.busy():  # before the check: a stop signalled from here on interrupts this child
        if workers.stopped():
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


@dataclass
class ParallelExecutor:
    """`--parallel N`: the children side by side in N fresh processes, on the on-disk caches the parent filled; a
    single child runs here (`LocalExecutor`), as N processes would not speed it up."""

    parallel: int
    group_seeds: bool | None = None
    name = "local"
    shares_inputs = True
    here = True

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

    def worker_config(self, config: Config, count: int) -> Config:
        return workers.share_threads(config, count)

    def run_workers(
        self, target: Callable[..., None], args: Any, count: int, log: Callable[[str], None], owned_by: workers.Owner
    ) -> None:
        workers.run_here(target, args, count, log, owned_by)


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

    context = workers.context()
    stop = context.Event()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with cf.ProcessPoolExecutor(
        max_workers=parallel,
        mp_context=context,
        initializer=workers.init,
        initargs=(stop, workers.owner(parent_id, "resume with --resume-parent")),
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
            workers.terminate([process.pid for process in multiprocessing.active_children()])
        if interrupted or error is not None:
            stop.set()
    return ran, error, interrupted
