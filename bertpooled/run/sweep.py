"""`bertpooled sweep`: a grid of modes x seeds as MLflow child runs of one parent run, resumable.

Every child config is resolved and checked before the parent run exists. A child is known by the sha256 of
its resolved config (tag `sweep/key`); running the sweep again under the same parent runs only the children
that have no FINISHED run there. The children run in this process and share their inputs (`Shared`): the
parent reads the data, loads the tokenizer and embeddings and tokenizes once, before the first child, so
every child logs the same, honest (near-zero) data/tokenize/features times; the parent logs what the shared
preparation cost as `sweep/shared_<phase>_s`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bertpooled.config import MODE_ALIASES, Config, load_config
from bertpooled.contract import (
    CHECKPOINT_EPOCH_TAG,
    CONFIG_PARAM_PREFIX,
    FINISHED,
    KIND_SWEEP,
    KIND_TAG,
    MAX_TAG_VALUE,
    NOTE_TAG,
    RUN_NAME_TAG,
    SWEEP_CHILD_TAG,
    SWEEP_CHILDREN_TAG,
    SWEEP_COMPARISON_RUN_TAG,
    SWEEP_KEY_TAG,
    SWEEP_MODES_TAG,
    SWEEP_SEEDS_TAG,
    SWEEP_SHARED_INPUTS_TAG,
)
from bertpooled.errors import BertpooledError, short_text
from bertpooled.report import compare
from bertpooled.report.records import Report
from bertpooled.run import grouped_sweep, prepare, runtime
from bertpooled.run.experiment import Outcome, pipeline_for, run_or_resume
from bertpooled.run.measure import Phases
from bertpooled.run.parallel import run_parallel
from bertpooled.run.pipeline import Inputs
from bertpooled.run.shared import Shared
from bertpooled.tracking import ownership, sweeps
from bertpooled.tracking import runs as tracking
from bertpooled.tracking.probe import check_tracking_reachable

DEFAULT_MODES = ("basic", "pool")
DEFAULT_SEEDS = 3
# What one sweep parent can hold: its tags list the grid (MLflow keeps at most 8,000 characters a tag), its note
# names every seed, and each child is a run that compare-runs reads back. Checked before any config is built.
MAX_CHILDREN = 1000
# The grid's own axes: everything else in a child's config is the sweep's base, the same for all children.
GRID_FIELDS = ("mode", "seed", "pool")


@dataclass(frozen=True)
class Child:
    """One cell of the grid: its resolved config, its identity in the store, a readable label."""

    config: Config
    key: str
    label: str


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    children: list[Child]
    ran: list[Outcome] = field(default_factory=list)
    already_finished: list[Child] = field(default_factory=list)


def parse_modes(text: str | None) -> list[str]:
    """`basic,pool` -> ["basic", "pool"]; empty = the default; aliases resolved, repeats refused."""
    names = [m.strip().lower() for m in (text or "").split(",") if m.strip()] or list(DEFAULT_MODES)
    resolved = [MODE_ALIASES.get(m, m) for m in names]
    repeated = sorted({m for m in resolved if resolved.count(m) > 1})
    if repeated:
        raise BertpooledError(f"--modes {text!r} names {', '.join(repeated)} more than once: list each mode once")
    return resolved


def parse_seeds(count: str | None = None, seed_list: str | None = None) -> list[int]:
    """`--seeds N` means 0..N-1, `--seed-list 0,5` those seeds; neither = 0..2; empty text = not given."""
    count, seed_list = (count or "").strip(), (seed_list or "").strip()
    if count and seed_list:
        raise BertpooledError("--seeds and --seed-list both given: pass one (--seeds 3 means --seed-list 0,1,2)")
    if seed_list:
        try:
            seeds = [int(s) for s in seed_list.split(",") if s.strip()]
        except ValueError:
            raise BertpooledError(
                f"--seed-list {seed_list!r} is not a list of integers: write e.g. --seed-list 0,5"
            ) from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise BertpooledError(
                f"--seed-list {short_text(repr(seed_list))} must list distinct integers >= 0, e.g. --seed-list 0,5"
            )
        _check_grid_size(1, seeds)
        return seeds
    if not count:
        return list(range(DEFAULT_SEEDS))
    try:
        n = int(count)
    except ValueError:
        raise BertpooledError(f"--seeds {count!r} is not a number: pass how many seeds, e.g. --seeds 3") from None
    if n < 1:
        raise BertpooledError(f"--seeds {n} runs nothing: pass 1 or more, or --seed-list")
    if n > MAX_CHILDREN:  # before range(n) is built
        raise BertpooledError(
            f"--seeds {n:,} is more than one sweep holds ({MAX_CHILDREN:,} children): split it into "
            "sweeps of --seed-list ranges"
        )
    seeds = list(range(n))
    _check_grid_size(1, seeds)
    return seeds


def _check_grid_size(n_modes: int, seeds: Sequence[int]) -> None:
    """A grid the parent run can hold: at most MAX_CHILDREN children and a seed list that fits in one tag."""
    if n_modes * len(seeds) > MAX_CHILDREN:
        raise BertpooledError(
            f"{n_modes} mode(s) x {len(seeds):,} seeds is {n_modes * len(seeds):,} children, more than "
            f"one sweep holds ({MAX_CHILDREN:,}): split the seeds over several sweeps"
        )
    # The parent's note lists the seeds with ", " (see _parent_tags); 200 characters for the rest of the note.
    if len(", ".join(map(str, seeds))) + 200 > MAX_TAG_VALUE:
        raise BertpooledError(
            f"the {len(seeds):,} seeds do not fit in the sweep's tags ({MAX_TAG_VALUE:,} "
            "characters): pass fewer or smaller seeds"
        )


def child_key(config: Config) -> str:
    """The child's identity: sha256 of its whole resolved config (16 hex digits)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def plan(config: str | None, overrides: dict[str, object], modes: Sequence[str], seeds: Sequence[int]) -> list[Child]:
    """Resolve every child's config (defaults, then `config`, then `overrides`, then its mode and seed)."""
    for name in ("mode", "seed"):
        if str(overrides.get(name) or "").strip():
            raise BertpooledError(f"--set {name}=... does not apply to a sweep: use --{name}s (and --seed-list)")
    _check_grid_size(len(modes), seeds)
    children = []
    for seed in seeds:  # seed-major: an interrupted sweep has every mode for its first seeds
        for mode in modes:
            cfg = load_config(config or None, {**overrides, "mode": mode, "seed": seed})
            children.append(Child(cfg, child_key(cfg), f"{cfg.mode}-s{cfg.seed}"))
    return children


def base_config(children: Sequence[Child]) -> dict[str, object]:
    """What all children share, as the parent's `config/<field>` params (the grid's axes left out)."""
    return {k: ("" if v is None else v) for k, v in children[0].config.to_dict().items() if k not in GRID_FIELDS}


def _check_children(children: Sequence[Child]) -> dict[str, object]:
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
    parallel: int = 1,
    executor=None,
    group_seeds: bool | None = None,
    take_over: bool = False,
) -> SweepOutcome:
    """Run the children that have no FINISHED run under the parent (a new one unless resuming); see the module doc.

    Under `mlflow run -e sweep` the run MLflow created is the parent, so `mlflow run --run-id ID -e sweep`
    resumes. A child that fails stops the sweep: its run and the parent end FAILED and the error propagates.
    `executor` (e.g. `ray_executor.RayExecutor`) runs the children elsewhere; None runs them here, as processes.
    A little over 60 lines: the checks that must come before the parent run exists, read top to bottom.
    `group_seeds`: train the seeds of a config together here (bertpooled.run.grouped_sweep); None: on CUDA only.
    """
    if not children:
        raise BertpooledError("the sweep has no children: pass --modes and --seeds")
    if group_seeds and (parallel > 1 or executor is not None):
        raise BertpooledError(
            "--group-seeds trains a config's seeds in this process, one child after another: "
            "leave out --parallel and --executor ray, or pass --no-group-seeds"
        )
    check_tracking_reachable()
    if not resume_parent:
        tracking.check_experiment_name(experiment)
    infos = _check_children(children)
    env_run = os.environ.get("MLFLOW_RUN_ID") or None
    if resume_parent and env_run and resume_parent != env_run:
        raise BertpooledError(
            f"--resume-parent {resume_parent} differs from the run `mlflow run` started ({env_run}): "
            "use `mlflow run --run-id` to resume there"
        )
    parent_id = resume_parent or env_run
    base = base_config(children)
    existing: dict[str, list] = {}
    if parent_id:
        parent = sweeps.find_parent(parent_id, from_mlflow_run=parent_id == env_run)
        _check_same_base(parent, base)
        if parent_id != env_run:  # a sweep still driven by a live process is refused: its children would run twice
            ownership.claim(parent_id, "sweep", take_over=take_over)
        existing = sweeps.children_by_key(parent)
        experiment_id = parent.info.experiment_id
    else:
        experiment_id = tracking.use_experiment(experiment)

    done, todo, resumable = _what_to_run(children, existing, log)
    todo, keep_threads = _threads_as_before(todo, existing, log)
    resume_hint = f"mlflow run --run-id {parent_id} -e sweep" if env_run else "--resume-parent <parent id>"
    tags = _parent_tags(parent.data.tags if parent_id else {}, children, existing)
    logged_base = parent_id is not None and any(k.startswith(CONFIG_PARAM_PREFIX) for k in parent.data.params)
    current, started = "preparing the shared inputs", parent_id
    try:
        with sweeps.parent_run(parent_id, experiment_id, tags, where=lambda: current) as started:
            resume_hint = resume_hint.replace("<parent id>", started)
            outcome = SweepOutcome(started, experiment_id, list(children), already_finished=done)
            if not logged_base:
                tracking.log_params({f"{CONFIG_PARAM_PREFIX}{k}": v for k, v in base.items()})
            log(f"sweep {started}: {len(children)} children, {len(done)} already finished, {len(todo)} to run")
            # `current` is read after the loop (where= and the handlers below), not in it.
            for current in _run_todo(  # noqa: B007
                todo,
                started,
                infos,
                resumable,
                outcome.ran,
                parallel=parallel,
                executor=executor,
                progress=progress,
                log=log,
                group_seeds=group_seeds,
                keep_threads=keep_threads,
            ):
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


def _run_todo(
    todo: Sequence[Child],
    parent_id: str,
    infos: dict,
    resumable: dict[str, str],
    ran: list,
    *,
    parallel: int,
    executor,
    progress: bool | None,
    log: Callable[[str], None],
    group_seeds=None,
    keep_threads: bool = False,
) -> Iterator[str]:
    """Run the children, appending each Outcome to `ran`; yields what is running now (the parent's `error` tag names
    it if the sweep stops): elsewhere (`executor`), side by side (`parallel`), or here one by one (seed groups too)."""
    shared = None
    # Children on other machines read their own inputs: the driver need not even hold the data.
    if todo and executor is None:
        shared = Shared()
        seconds = _prepare_shared(shared, todo, infos, progress)
        tracking.log_metrics({f"sweep/shared_{phase}_s": s for phase, s in seconds.items()})
        log("shared inputs: " + ", ".join(f"{phase} {s:.1f}s" for phase, s in seconds.items()))
    if executor is not None and todo:
        yield f"{len(todo)} children on {executor.describe()}"
        ran.extend(executor.run(todo, parent_id, log, progress))
    elif parallel > 1 and len(todo) > 1:
        yield f"{len(todo)} children, {parallel} at a time"
        ran.extend(run_parallel(todo, parent_id, parallel, log, resumable, keep_threads=keep_threads))
    else:
        for i, (child, start) in enumerate(
            grouped_sweep.schedule(todo, resumable, group_seeds, shared, infos, progress, log), 1
        ):
            yield child.label
            log(f"[{i}/{len(todo)}] {child.label}")
            pipeline, extra = start()
            tags = {
                SWEEP_KEY_TAG: child.key,
                SWEEP_CHILD_TAG: child.label,
                SWEEP_SHARED_INPUTS_TAG: "prepared once by the parent run",
                **extra,
            }
            ran.append(
                run_or_resume(
                    child.config,
                    resumable.get(child.key),
                    progress=progress,
                    log=log,
                    shared=shared,
                    parent_run_id=parent_id,
                    tags=tags,
                    pipeline=pipeline,
                )
            )


def _what_to_run(
    children: Sequence[Child],
    existing: dict[str, list],
    log: Callable[[str], None],
) -> tuple[list[Child], list[Child], dict[str, str]]:
    """(done, to run, resumable run id by key): a child with a FINISHED run is done; one stopped with a checkpoint
    continues in its own run, from its last finished epoch; any other earlier run is run again."""
    done = [c for c in children if any(r.info.status == FINISHED for r in existing.get(c.key, []))]
    todo = [c for c in children if c not in done]
    resumable: dict[str, str] = {}
    for child in todo:
        for run in existing.get(child.key, []):
            if run.info.status != FINISHED and CHECKPOINT_EPOCH_TAG in run.data.tags and child.key not in resumable:
                resumable[child.key] = run.info.run_id
                log(
                    f"{child.label}: earlier run {run.info.run_id} ended {run.info.status} after epoch "
                    f"{run.data.tags['checkpoint/epoch']}; resuming it"
                )
            else:
                log(f"{child.label}: earlier run {run.info.run_id} ended {run.info.status}; running it again")
    return done, todo, resumable


def _threads_as_before(
    todo: Sequence[Child],
    existing: dict[str, list],
    log: Callable[[str], None],
) -> tuple[list[Child], bool]:
    """The children to run with the thread count the sweep's earlier children logged (where theirs is auto), and
    whether that count must be kept as it is (a parallel run otherwise gives auto children cores/N).

    A parallel sweep gives each child cores/N threads, a local one leaves the count to the run (0, auto): a sweep
    resumed another way would mix the two, and compare-runs rightly refuses to compare times measured on other
    thread counts. So a resumed sweep keeps the count its children already have, however it runs now.
    """
    logged = {r.data.params.get(f"{CONFIG_PARAM_PREFIX}num_threads") for runs in existing.values() for r in runs}
    logged.discard(None)
    if len(logged) != 1 or not todo:
        return list(todo), False  # a new sweep, or one already mixed: nothing single to keep
    threads = int(next(iter(logged)))
    same = [
        c if c.config.num_threads else dataclasses.replace(c, config=dataclasses.replace(c.config, num_threads=threads))
        for c in todo
    ]
    log(f"num_threads {threads or 'auto'} for the children to run, as the sweep's earlier children had it")
    return same, True


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
