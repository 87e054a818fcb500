"""What an earlier sweep left to do: the one rule for which earlier run of a child a resumed sweep continues.

A child (a grid cell, known by its key) may have several earlier runs under the parent: one per start of the
sweep that reached it. `earlier_runs` reads them the same way for every executor (the driver before any child
runs, and a Ray task that Ray retried after its node died):

- a FINISHED run: the child is done; nothing else about its runs is touched;
- else the unfinished run with the most progress (the highest `checkpoint/epoch`; the latest started among
  equals) continues, from its last checkpoint, in its own run: the least training lost, and the same result
  (a resumed run's metrics are those of a run trained straight through);
- every other run still RUNNING is an orphan: the process that drove it is gone (the sweep's parent was claimed
  from a dead owner, or Ray retried the task because its worker died), so it is ended FAILED, saying why,
  instead of showing RUNNING for ever;
- the rest (KILLED or FAILED earlier) stay as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bertpooled.contract import CHECKPOINT_EPOCH_TAG, CONFIG_PARAM_PREFIX, FAILED, FINISHED
from bertpooled.sweep.plan import Child
from bertpooled.tracking import sweeps

if TYPE_CHECKING:
    from mlflow.entities import Run

RUNNING = "RUNNING"
ORPHAN_NO_CHECKPOINT = "its process was lost before its first checkpoint: the child runs again"
ORPHAN_LESS_PROGRESS = "its process was lost; run {run_id} continues this child from a later checkpoint"


@dataclass(frozen=True)
class Earlier:
    """One child's earlier runs, read by the rule in the module doc."""

    finished: Run | None = None
    """A FINISHED run (the child is done), else None."""
    resume: Run | None = None
    """The unfinished run to continue from its checkpoint, else None (the child starts a new run)."""
    orphans: list[Run] = field(default_factory=list)
    """Runs left RUNNING by a process that is gone: to end FAILED (`end_orphans`)."""
    others: list[Run] = field(default_factory=list)
    """Earlier runs that ended (KILLED, FAILED) and are not continued."""


def _epoch(run: Run) -> int:
    try:
        return int(run.data.tags[CHECKPOINT_EPOCH_TAG])
    except (KeyError, ValueError):
        return -1


def earlier_runs(runs: Sequence[Run]) -> Earlier:
    """The rule (see the module doc) over one child's earlier runs (MLflow `Run`s, in any order)."""
    finished = [r for r in runs if r.info.status == FINISHED]
    if finished:
        return Earlier(finished=finished[0])
    checkpointed = [r for r in runs if _epoch(r) >= 0]
    resume = max(checkpointed, key=lambda r: (_epoch(r), r.info.start_time or 0), default=None)
    rest = [r for r in runs if r is not resume]
    return Earlier(
        resume=resume,
        orphans=[r for r in rest if r.info.status == RUNNING],
        others=[r for r in rest if r.info.status != RUNNING],
    )


def end_orphans(earlier: Earlier) -> list[str]:
    """End the child's orphaned runs FAILED (tag `error` says why); their ids."""
    for run in earlier.orphans:
        # An orphan with a checkpoint means `resume` is set: the rule continues the run with the most progress.
        resume = earlier.resume
        if _epoch(run) < 0 or resume is None:
            reason = ORPHAN_NO_CHECKPOINT
        else:
            reason = ORPHAN_LESS_PROGRESS.format(run_id=resume.info.run_id)
        sweeps.end_child(run.info.run_id, FAILED, reason)
    return [run.info.run_id for run in earlier.orphans]


def what_to_run(
    children: Sequence[Child], existing: dict[str, list[Run]], log: Callable[[str], None]
) -> tuple[list[Child], list[Child], dict[str, str]]:
    """(done, to run, the run id to continue by key), by `earlier_runs`; the orphans of the children to run are
    ended FAILED here, before any of them runs."""
    done, todo, resumable = [], [], {}
    for child in children:
        earlier = earlier_runs(existing.get(child.key, []))
        if earlier.finished is not None:
            done.append(child)
            continue
        todo.append(child)
        if earlier.resume is not None:
            run = earlier.resume
            resumable[child.key] = run.info.run_id
            log(
                f"{child.label}: earlier run {run.info.run_id} ended {run.info.status} after epoch "
                f"{run.data.tags[CHECKPOINT_EPOCH_TAG]}; resuming it"
            )
        for run_id in end_orphans(earlier):
            log(f"{child.label}: earlier run {run_id} was left RUNNING by a process that is gone; ended it FAILED")
        for run in earlier.others:
            log(f"{child.label}: earlier run {run.info.run_id} ended {run.info.status}; not continued")
    return done, todo, resumable


def threads_as_before(
    todo: Sequence[Child], existing: dict[str, list[Run]], log: Callable[[str], None]
) -> tuple[list[Child], bool]:
    """The children to run with the thread count the sweep's earlier children logged (where theirs is auto), and
    whether that count must be kept as it is (a parallel run otherwise gives auto children cores/N).

    A parallel sweep gives each child cores/N threads, a local one leaves the count to the run (0, auto): a sweep
    resumed another way would mix the two, and compare-runs rightly refuses to compare times measured on other
    thread counts. So a resumed sweep keeps the count its children already have, however it runs now.
    """
    param = f"{CONFIG_PARAM_PREFIX}num_threads"
    logged = {r.data.params[param] for runs in existing.values() for r in runs if param in r.data.params}
    if len(logged) != 1 or not todo:
        return list(todo), False  # a new sweep, or one already mixed: nothing single to keep
    threads = int(next(iter(logged)))
    same = [
        c if c.config.num_threads else dataclasses.replace(c, config=dataclasses.replace(c.config, num_threads=threads))
        for c in todo
    ]
    log(f"num_threads {threads or 'auto'} for the children to run, as the sweep's earlier children had it")
    return same, True
