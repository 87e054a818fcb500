"""Where a sweep's children run: the one `Executor` protocol and the `Work` it is handed.

`runner.run_sweep` is the one sweep (parent run, naming, tags, resume by config key, closing comparison); an
executor only runs the children it is handed (`Work`). Three implement it: `local.LocalExecutor` (here, one child
after another, the seeds of a config trained together with `--group-seeds`), `parallel.ParallelExecutor` (here,
side by side in fresh processes) and `ray_executor.RayExecutor` (Ray tasks on a cluster). Which earlier run a child
continues is decided once, by `resume.earlier_runs`, for all of them; `runner.executor_for` picks one by name.

The same executors are the one worker pool a tuning study runs its workers in (`run_workers`): this process or
fresh processes here (`workers.run_here`), or Ray tasks; nothing chooses between them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bertpooled.config import Config
from bertpooled.sweep.plan import Child
from bertpooled.sweep.workers import Owner

EXECUTORS = ("local", "ray")


@dataclass
class Work:
    """The children an executor runs under the sweep's parent run, and what it needs to run them."""

    todo: list[Child]
    parent_id: str
    log: Callable[[str], None]
    progress: bool | None = None
    resumable: dict[str, str] = field(default_factory=dict)
    """The earlier run each child continues, by key (`resume.what_to_run`)."""
    infos: dict = field(default_factory=dict)
    """Each child's BackboneInfo by key (`prepare.check`)."""
    shared: object | None = None
    """The inputs the parent prepared once (`run.shared.Shared`), for an executor that `shares_inputs`."""
    keep_threads: bool = False
    """Keep the children's thread counts as they are (a resumed sweep's earlier children had them)."""
    ran: list = field(default_factory=list)
    """Each child's `Outcome`, appended as it finishes."""


class Executor(Protocol):
    """Runs a sweep's children; the sweep selects one by name (`runner.executor_for`)."""

    name: str
    shares_inputs: bool
    """Whether the parent reads, loads and tokenizes the children's inputs once, before the first of them."""
    here: bool
    """Whether the work runs on this machine (whose cores and memory are then checked before it starts)."""

    def start(self, children: Sequence[Child]) -> None:
        """One-line errors and connections before the sweep's parent run exists (a mistake leaves no run)."""

    def describe(self) -> str:
        """Where the children run, in words."""

    def run(self, work: Work) -> Iterator[str]:
        """Run `work.todo`, appending each Outcome to `work.ran`; yields what runs now (the parent's `error` tag
        names it if the sweep stops there). The first child that fails stops the sweep and propagates."""

    def close(self) -> None:
        """Let go of what `start` took (a cluster connection); safe to call more than once."""

    def worker_config(self, config: Config, count: int) -> Config:
        """`config` as one of `count` workers of this executor runs it (its threads; its device)."""

    def run_workers(
        self, target: Callable[..., None], args: Any, count: int, log: Callable[[str], None], owned_by: Owner
    ) -> None:
        """`target(args, i, log)` for i in range(count), each a worker of the pool (`log` None in a worker of its
        own, which prints its lines); returns when all have ended. A worker's error stops the others and is one
        line ending in `owned_by.resume_hint`; Ctrl-C stops them all (their running work KILLED), then propagates."""
