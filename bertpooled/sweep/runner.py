"""`bertpooled sweep`: a grid of modes x seeds as MLflow child runs of one parent run, resumable.

Every child config is resolved and checked before the parent run exists (`plan`). A child is known by the sha256
of its resolved config (tag `sweep/key`); running the sweep again under the same parent runs only the children
that have no FINISHED run there, continuing the earlier run `resume.earlier_runs` picks. Where the children run
is the executor's (`executor.Executor`). A local or parallel sweep shares the children's inputs (`Shared`): the
parent reads the data, loads the tokenizer and embeddings and tokenizes once, before the first child, so every
child logs the same, honest (near-zero) data/tokenize/features times; the parent logs what the shared
preparation cost as `sweep/shared_<phase>_s`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bertpooled import budget
from bertpooled.contract import (
    CONFIG_PARAM_PREFIX,
    KIND_SWEEP,
    KIND_TAG,
    NOTE_TAG,
    RUN_NAME_TAG,
    SWEEP_CHILDREN_TAG,
    SWEEP_COMPARISON_RUN_TAG,
    SWEEP_MODES_TAG,
    SWEEP_SEEDS_TAG,
)
from bertpooled.errors import BertpooledError
from bertpooled.model.backbone import BackboneInfo
from bertpooled.report import compare
from bertpooled.report.records import Report
from bertpooled.run import prepare, runtime
from bertpooled.run.experiment import Outcome, pipeline_for
from bertpooled.run.measure import Phases
from bertpooled.run.pipeline import Inputs
from bertpooled.run.shared import Shared
from bertpooled.sweep.executor import EXECUTORS, Executor, Work
from bertpooled.sweep.local import LocalExecutor
from bertpooled.sweep.plan import Child, base_config
from bertpooled.sweep.resume import threads_as_before, what_to_run
from bertpooled.tracking import ownership, sweeps
from bertpooled.tracking import runs as tracking
from bertpooled.tracking.probe import check_tracking_reachable


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    children: list[Child]
    ran: list[Outcome] = field(default_factory=list)
    already_finished: list[Child] = field(default_factory=list)


def _check_children(children: Sequence[Child]) -> dict[str, BackboneInfo]:
    """prepare.check for every child (it reads config files only); returns each child's BackboneInfo by key."""
    return {child.key: prepare.check(child.config) for child in children}


def _parent_tags(tags: dict[str, str], children: Sequence[Child], existing: dict[str, list]) -> dict[str, str]:
    """Kind, name, grid and note of the parent (`tags`: its tags so far); a resumed sweep's grid is the union."""
    modes = list(
        dict.fromkeys([*filter(None, tags.get(SWEEP_MODES_TAG, "").split(",")), *(c.config.mode for c in children)])
    )
    seeds = list(
        dict.fromkeys(
            [*filter(None, tags.get(SWEEP_SEEDS_TAG, "").split(",")), *(str(c.config.seed) for c in children)]
        )
    )
    n_children = len(set(existing) | {c.key for c in children})
    # A new parent (or the run `mlflow run` created, randomly named) gets a name; a resumed sweep keeps its own.
    name = tags[RUN_NAME_TAG] if tags.get(KIND_TAG) == KIND_SWEEP else f"sweep-{'+'.join(modes)}-{len(seeds)}seeds"
    return {
        KIND_TAG: KIND_SWEEP,
        RUN_NAME_TAG: name,
        SWEEP_MODES_TAG: ",".join(modes),
        SWEEP_SEEDS_TAG: ",".join(seeds),
        SWEEP_CHILDREN_TAG: str(n_children),
        NOTE_TAG: (f"Sweep of {', '.join(modes)} x seeds {', '.join(seeds)} ({n_children} child runs, nested below)."),
    }


def _check_same_base(parent, base: dict[str, object]) -> None:
    logged = {
        k.removeprefix(CONFIG_PARAM_PREFIX): v
        for k, v in parent.data.params.items()
        if k.startswith(CONFIG_PARAM_PREFIX)
    }
    if not logged:
        return
    differ = [
        f"{k}={logged.get(k)!r} there, {str(v)!r} now" for k, v in base.items() if logged.get(k, str(v)) != str(v)
    ]
    if differ:
        raise BertpooledError(
            f"sweep {parent.info.run_id} was started with other settings ({'; '.join(differ)}): pass the same "
            "options to resume it, or start a new sweep without --resume-parent"
        )


def _prepare_shared(shared: Shared, todo: Sequence[Child], infos: dict, progress: bool | None) -> dict[str, float]:
    """Read, load and tokenize what the children to run need, once, before the first of them."""
    phases = Phases()
    first = todo[0].config
    imdb, train_split, test_split = shared.read_data(first, phases, progress=progress)
    for child in todo:  # each pipeline fills the memo once; a child whose inputs are there already adds nothing
        rt = runtime.Runtime.resolve(child.config)
        inputs = Inputs(child.config, infos[child.key], imdb, train_split, test_split, phases, rt, shared)
        pipeline_for(child.config).warm(inputs, progress)
    return phases.seconds


def run_sweep(
    children: Sequence[Child],
    *,
    experiment: str | None = None,
    resume_parent: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    take_over: bool = False,
) -> SweepOutcome:
    """Run the children that have no FINISHED run under the parent (a new one unless resuming); see the module doc.

    Under `mlflow run -e sweep` the run MLflow created is the parent, so `mlflow run --run-id ID -e sweep`
    resumes. A child that fails stops the sweep: its run and the parent end FAILED and the error propagates.
    `executor` (`runner.executor_for`, started) runs the children; None: here, one by one (`LocalExecutor`).
    """
    if not children:
        raise BertpooledError("the sweep has no children: pass --modes and --seeds")
    executor = executor or LocalExecutor()
    check_tracking_reachable()
    if not resume_parent:
        tracking.check_experiment_name(experiment)
    infos = _check_children(children)
    workers = getattr(executor, "parallel", 1) if executor.here else 1  # a Ray cluster's nodes have their own
    for child in children:
        info = infos[child.key]
        budget.check_memory(child.config, info.hidden_size, info.num_layers, workers, f"child {child.label}")
    env_run = os.environ.get("MLFLOW_RUN_ID") or None
    parent_id, parent, existing, experiment_id = _find_parent(resume_parent, env_run, experiment, children, take_over)
    resume_hint = f"mlflow run --run-id {parent_id} -e sweep" if env_run else "--resume-parent <parent id>"
    current, started = "preparing the shared inputs", parent_id
    try:
        done, todo, resumable = what_to_run(children, existing, log)
        todo, keep_threads = threads_as_before(todo, existing, log)
        tags = _parent_tags(parent.data.tags if parent else {}, children, existing)
        logged_base = parent is not None and any(k.startswith(CONFIG_PARAM_PREFIX) for k in parent.data.params)
        with sweeps.parent_run(parent_id, experiment_id, tags, where=lambda: current) as started:
            resume_hint = resume_hint.replace("<parent id>", started)
            outcome = SweepOutcome(started, experiment_id, list(children), already_finished=done)
            if not logged_base:
                tracking.log_params({f"{CONFIG_PARAM_PREFIX}{k}": v for k, v in base_config(children).items()})
            log(f"sweep {started}: {len(children)} children, {len(done)} already finished, {len(todo)} to run")
            work = Work(todo, started, log, progress, resumable, infos, keep_threads=keep_threads, ran=outcome.ran)
            for current in _run_todo(executor, work):  # noqa: B007 (read by `where` above)
                pass
    except KeyboardInterrupt:
        log(f"sweep {started} interrupted at {current}; resume it with {resume_hint}")
        raise
    except BaseException:
        if started:
            log(f"sweep {started} stopped at {current}; resume it with {resume_hint}")
        raise
    finally:
        if parent_id and parent_id != env_run:
            ownership.let_go(parent_id)
    return outcome


def _find_parent(resume_parent: str | None, env_run: str | None, experiment: str | None, children, take_over: bool):
    """(parent id, its Run, its children by key, experiment id): the sweep resumed (`--resume-parent`, or the run
    `mlflow run` made), claimed from a dead owner; or (None, None, {}, the experiment a new sweep goes to)."""
    if resume_parent and env_run and resume_parent != env_run:
        raise BertpooledError(
            f"--resume-parent {resume_parent} differs from the run `mlflow run` started ({env_run}): "
            "use `mlflow run --run-id` to resume there"
        )
    parent_id = resume_parent or env_run
    if not parent_id:
        return None, None, {}, tracking.use_experiment(experiment)
    parent = sweeps.find_parent(parent_id, from_mlflow_run=parent_id == env_run)
    _check_same_base(parent, base_config(children))
    if parent_id != env_run:  # a sweep still driven by a live process is refused: its children would run twice
        ownership.claim(parent_id, "sweep", take_over=take_over)
    return parent_id, parent, sweeps.children_by_key(parent), parent.info.experiment_id


def _run_todo(executor: Executor, work: Work) -> Iterator[str]:
    """Yields what is running now (the parent's `error` tag names it if the sweep stops): the shared inputs first,
    where the executor's children read them from this process (or its on-disk caches), then the executor's."""
    if work.todo and executor.shares_inputs:
        work.shared = Shared()
        seconds = _prepare_shared(work.shared, work.todo, work.infos, work.progress)
        tracking.log_metrics({f"sweep/shared_{phase}_s": s for phase, s in seconds.items()})
        work.log("shared inputs: " + ", ".join(f"{phase} {s:.1f}s" for phase, s in seconds.items()))
    yield from executor.run(work)


def executor_for(
    name: str | None,
    *,
    parallel: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    group_seeds: bool | None = None,
) -> Executor:
    """The executor `--executor NAME` (and `--parallel`, `--group-seeds`) select; every mistake is a one-line error
    before any run. Not started: `start` it with the children (a Ray executor joins its cluster there)."""
    name = name or "local"
    if name not in EXECUTORS:
        raise BertpooledError(f"unknown executor {name!r}: pass --executor local or --executor ray")
    if group_seeds and (parallel > 1 or name != "local"):
        raise BertpooledError(
            "--group-seeds trains a config's seeds in this process, one child after another: "
            "leave out --parallel and --executor ray, or pass --no-group-seeds"
        )
    if name == "local":
        if address:
            raise BertpooledError("--address names a Ray cluster: pass --executor ray with it, or leave it out")
        if parallel > 1:
            from bertpooled.sweep.parallel import ParallelExecutor

            budget.check_parallel(parallel)

            return ParallelExecutor(parallel)
        return LocalExecutor(group_seeds)
    if parallel > 1:
        raise BertpooledError(
            "--parallel is for --executor local; with ray, the cluster's CPUs and --cpus-per-run "
            "decide how many children run at once"
        )
    from bertpooled.sweep.ray_executor import RayExecutor

    return RayExecutor(address, cpus_per_run, gpus_per_run)


def compare_children(outcome: SweepOutcome, *, format: str = "table", output: str | None = None) -> Report:
    """compare-runs over the parent's children, baseline `basic` when the grid has it; logged as a comparison
    run, whose id the parent gets as tag `sweep/comparison_run_id`."""
    modes = list(dict.fromkeys(c.config.mode for c in outcome.children))
    report = compare.compare_runs(
        format=format, output=output, parent=outcome.parent_run_id, baseline="basic" if "basic" in modes else modes[0]
    )
    if report.comparison_run_id:
        sweeps.set_tag(outcome.parent_run_id, SWEEP_COMPARISON_RUN_TAG, report.comparison_run_id)
    return report
