"""The local executor: a sweep's children here, one after another, on the inputs the parent prepared once."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bertpooled.config import Config
from bertpooled.contract import SWEEP_CHILD_TAG, SWEEP_KEY_TAG, SWEEP_SHARED_INPUTS_TAG
from bertpooled.run.experiment import run_or_resume
from bertpooled.sweep import groups, workers
from bertpooled.sweep.executor import Work
from bertpooled.sweep.plan import Child


@dataclass
class LocalExecutor:
    """The children here, one after another, on the inputs the parent prepared; `group_seeds`: the seeds of a config
    trained together in one loop (`groups`), None: on CUDA only."""

    group_seeds: bool | None = None
    name = "local"
    shares_inputs = True
    here = True

    def start(self, children: Sequence[Child]) -> None:
        pass

    def describe(self) -> str:
        return "this process"

    def run(self, work: Work) -> Iterator[str]:
        schedule = groups.schedule(
            work.todo, work.resumable, self.group_seeds, work.shared, work.infos, work.progress, work.log
        )
        for i, (child, start) in enumerate(schedule, 1):
            yield child.label
            work.log(f"[{i}/{len(work.todo)}] {child.label}")
            pipeline, extra = start()
            tags = {
                SWEEP_KEY_TAG: child.key,
                SWEEP_CHILD_TAG: child.label,
                SWEEP_SHARED_INPUTS_TAG: "prepared once by the parent run",
                **extra,
            }
            outcome = run_or_resume(
                child.config,
                work.resumable.get(child.key),
                progress=work.progress,
                log=work.log,
                shared=work.shared,
                parent_run_id=work.parent_id,
                tags=tags,
                pipeline=pipeline,
            )
            work.ran.append(outcome)

    def close(self) -> None:
        pass

    def worker_config(self, config: Config, count: int) -> Config:
        return workers.share_threads(config, count)

    def run_workers(
        self, target: Callable[..., None], args: Any, count: int, log: Callable[[str], None], owned_by: workers.Owner
    ) -> None:
        workers.run_here(target, args, count, log, owned_by)
