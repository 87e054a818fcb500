"""`bertpooled sweep`: a grid of modes x seeds as MLflow child runs of one parent run, resumable.

Every child config is resolved and checked before the parent run exists. A child is known by the sha256 of
its resolved config (tag `sweep/key`); running the sweep again under the same parent runs only the children
that have no FINISHED run there. The children run in this process and share their inputs (`Shared`): the
parent reads the data, loads the tokenizer and embeddings and tokenizes once, before the first child, so
every child logs the same, honest (near-zero) data/tokenize/features times; the parent logs what the shared
preparation cost as `sweep/shared_<phase>_s`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from bertpooled.report import compare
from bertpooled.run import reference, train
from bertpooled.tracking import runs as tracking
from bertpooled.config import MODE_ALIASES, Config, load_config
from bertpooled.errors import BertpooledError
from bertpooled.run.experiment import Outcome, run_experiment
from bertpooled.report.records import Report
from bertpooled.run.shared import Shared

KEY_TAG = "sweep/key"
CHILD_TAG = "sweep/child"
DEFAULT_MODES = ("basic", "pool")
DEFAULT_SEEDS = 3
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
            raise BertpooledError(f"--seed-list {seed_list!r} is not a list of integers: write e.g. --seed-list 0,5") from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise BertpooledError(f"--seed-list {seed_list!r} must list distinct integers >= 0, e.g. --seed-list 0,5")
        return seeds
    if not count:
        return list(range(DEFAULT_SEEDS))
    try:
        n = int(count)
    except ValueError:
        raise BertpooledError(f"--seeds {count!r} is not a number: pass how many seeds, e.g. --seeds 3") from None
    if n < 1:
        raise BertpooledError(f"--seeds {n} runs nothing: pass 1 or more, or --seed-list")
    return list(range(n))


def child_key(config: Config) -> str:
    """The child's identity: sha256 of its whole resolved config (16 hex digits)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def plan(config: str | None, overrides: dict[str, object], modes: Sequence[str], seeds: Sequence[int]) -> list[Child]:
    """Resolve every child's config (defaults, then `config`, then `overrides`, then its mode and seed)."""
    for name in ("mode", "seed"):
        if str(overrides.get(name) or "").strip():
            raise BertpooledError(f"--set {name}=... does not apply to a sweep: use --{name}s (and --seed-list)")
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
    """train.check for every child (it reads config files only); returns each child's BackboneInfo by key."""
    return {child.key: train.check(child.config) for child in children}


def _experiment_id(experiment: str | None) -> str:
    """--experiment, else MLflow's own variables, else `bertpooled`; created when missing."""
    if not experiment and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or tracking.DEFAULT_EXPERIMENT
    return mlflow.set_experiment(name).experiment_id


def _parent_tags(tags: dict[str, str], children: Sequence[Child], existing: dict[str, list[Run]]) -> dict[str, str]:
    """Kind, name, grid and note of the parent (`tags`: its tags so far); a resumed sweep's grid is the union."""
    modes = list(dict.fromkeys([*filter(None, tags.get("sweep/modes", "").split(",")), *(c.config.mode for c in children)]))
    seeds = list(dict.fromkeys([*filter(None, tags.get("sweep/seeds", "").split(",")), *(str(c.config.seed) for c in children)]))
    n_children = len(set(existing) | {c.key for c in children})
    # A new parent (or the run `mlflow run` created, randomly named) gets a name; a resumed sweep keeps its own.
    name = tags["mlflow.runName"] if tags.get(tracking.KIND_TAG) == "sweep" else f"sweep-{'+'.join(modes)}-{len(seeds)}seeds"
    return {
        tracking.KIND_TAG: "sweep",
        "mlflow.runName": name,
        "sweep/modes": ",".join(modes),
        "sweep/seeds": ",".join(seeds),
        "sweep/children": str(n_children),
        "mlflow.note.content": (
            f"Sweep of {', '.join(modes)} x seeds {', '.join(seeds)} ({n_children} child runs, nested below)."
        ),
    }


def _find_parent(client: MlflowClient, run_id: str, from_mlflow_run: bool) -> Run:
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise BertpooledError(
            f"unknown sweep parent run {run_id!r} at {tracking.redact_uri(client.tracking_uri)}: "
            "pass --resume-parent with the id a sweep printed, or leave it out to start a new sweep"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise BertpooledError(f"sweep parent run {run_id} is deleted: restore it (mlflow runs restore) or start a new sweep")
    kind = run.data.tags.get(tracking.KIND_TAG)
    # A run `mlflow run -e sweep` just created has no kind yet; anything else must be a sweep parent.
    if kind != "sweep" and not (from_mlflow_run and kind is None):
        raise BertpooledError(
            f"run {run_id} is a {kind or 'plain'} run, not a sweep parent: pass --resume-parent with a sweep's id"
        )
    return run


def _check_same_base(parent: Run, base: dict[str, object]) -> None:
    logged = {k.removeprefix("config/"): v for k, v in parent.data.params.items() if k.startswith("config/")}
    if not logged:
        return
    differ = [f"{k}={logged.get(k)!r} there, {str(v)!r} now" for k, v in base.items() if logged.get(k, str(v)) != str(v)]
    if differ:
        raise BertpooledError(
            f"sweep {parent.info.run_id} was started with other settings ({'; '.join(differ)}): pass the same "
            "options to resume it, or start a new sweep without --resume-parent"
        )


def _existing_children(client: MlflowClient, parent: Run) -> dict[str, list[Run]]:
    found: dict[str, list[Run]] = {}
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token,
        )
        for run in page:
            key = run.data.tags.get(KEY_TAG)
            if key:
                found.setdefault(key, []).append(run)
        token = page.token
        if not token:
            return found


def _prepare_shared(shared: Shared, todo: Sequence[Child], infos: dict, progress: bool | None) -> dict[str, float]:
    """Read, load and tokenize what the children to run need, once, before the first of them."""
    phases = train.Phases()
    first = todo[0].config
    imdb, train_split, test_split = shared.read_data(first, phases, progress=progress)
    neural = [c for c in todo if c.config.mode != "reference" and shared.shares(c.config)]
    if neural:
        shared.prepare(neural[0].config, infos[neural[0].key], imdb, train_split, test_split, phases, progress)
    for child in (c for c in todo if c.config.mode == "reference"):
        reference.texts(child.config, infos[child.key], imdb, train_split, test_split, phases, shared, progress)
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
) -> SweepOutcome:
    """Run the children that have no FINISHED run under the parent (a new one unless resuming); see the module doc.

    Under `mlflow run -e sweep` the run MLflow created is the parent, so `mlflow run --run-id ID -e sweep`
    resumes. A child that fails stops the sweep: its run and the parent end FAILED and the error propagates.
    `executor` (e.g. `ray_executor.RayExecutor`) runs the children elsewhere; None runs them here, as processes.
    """
    if not children:
        raise BertpooledError("the sweep has no children: pass --modes and --seeds")
    tracking.check_tracking_reachable()
    infos = _check_children(children)
    client = MlflowClient()
    env_run = os.environ.get("MLFLOW_RUN_ID") or None
    if resume_parent and env_run and resume_parent != env_run:
        raise BertpooledError(
            f"--resume-parent {resume_parent} differs from the run `mlflow run` started ({env_run}): "
            "use `mlflow run --run-id` to resume there"
        )
    parent_id = resume_parent or env_run
    base = base_config(children)
    existing: dict[str, list[Run]] = {}
    if parent_id:
        parent = _find_parent(client, parent_id, from_mlflow_run=parent_id == env_run)
        _check_same_base(parent, base)
        existing = _existing_children(client, parent)
        experiment_id = parent.info.experiment_id
    else:
        experiment_id = _experiment_id(experiment)

    done = [c for c in children if any(r.info.status == "FINISHED" for r in existing.get(c.key, []))]
    todo = [c for c in children if c not in done]
    resumable: dict[str, str] = {}
    for child in todo:
        for run in existing.get(child.key, []):
            if run.info.status != "FINISHED" and "checkpoint/epoch" in run.data.tags and child.key not in resumable:
                # A child stopped with a checkpoint continues in its own run, from its last finished epoch.
                resumable[child.key] = run.info.run_id
                log(f"{child.label}: earlier run {run.info.run_id} ended {run.info.status} after epoch "
                    f"{run.data.tags['checkpoint/epoch']}; resuming it")
            else:
                log(f"{child.label}: earlier run {run.info.run_id} ended {run.info.status}; running it again")

    resume_hint = f"mlflow run --run-id {parent_id} -e sweep" if env_run else "--resume-parent <parent id>"
    # The parent's own run id stays out of the children's environment: start_run would resume it.
    os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_experiment(experiment_id=experiment_id)
    tags = _parent_tags(parent.data.tags if parent_id else {}, children, existing)
    parent_run = mlflow.start_run(run_id=parent_id, run_name=tags["mlflow.runName"], tags=tags)
    parent_id = parent_run.info.run_id
    resume_hint = resume_hint.replace("<parent id>", parent_id)
    outcome = SweepOutcome(parent_id, experiment_id, list(children), already_finished=done)
    current = "preparing the shared inputs"
    try:
        if not any(k.startswith("config/") for k in parent_run.data.params):
            mlflow.log_params({f"config/{k}": v for k, v in base.items()})
        log(f"sweep {parent_id}: {len(children)} children, {len(done)} already finished, {len(todo)} to run")
        # Children on other machines read their own inputs: the driver need not even hold the data.
        if todo and executor is None:
            shared = Shared()
            seconds = _prepare_shared(shared, todo, infos, progress)
            mlflow.log_metrics({f"sweep/shared_{phase}_s": s for phase, s in seconds.items()})
            log("shared inputs: " + ", ".join(f"{phase} {s:.1f}s" for phase, s in seconds.items()))
        if executor is not None and todo:
            current = f"{len(todo)} children on {executor.describe()}"
            outcome.ran.extend(executor.run(todo, parent_id, log, progress))
        elif parallel > 1 and len(todo) > 1:
            current = f"{len(todo)} children, {parallel} at a time"
            outcome.ran.extend(_run_parallel(todo, parent_id, parallel, log, resumable))
        else:
            for i, child in enumerate(todo, 1):
                current = child.label
                log(f"[{i}/{len(todo)}] {child.label}")
                tags = {KEY_TAG: child.key, CHILD_TAG: child.label, "sweep/shared_inputs": "prepared once by the parent run"}
                outcome.ran.append(_run_child(child.config, resumable.get(child.key), progress=progress, log=log,
                                              shared=shared, parent_run_id=parent_id, tags=tags))
    except KeyboardInterrupt:
        mlflow.set_tag("error", f"interrupted (Ctrl-C or SIGTERM) at {current}")
        mlflow.end_run("KILLED")
        log(f"sweep {parent_id} interrupted at {current}; resume it with {resume_hint}")
        raise
    except BaseException as exc:
        message = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        mlflow.set_tag("error", f"{current}: {message}"[:5000])
        mlflow.end_run("FAILED")
        log(f"sweep {parent_id} stopped at {current}; resume it with {resume_hint}")
        raise
    mlflow.end_run("FINISHED")
    return outcome


def _run_child(config: Config, resume_run_id: str | None, **kwargs) -> Outcome:
    """`run_experiment` for one child: a new run, or its earlier run continued from that run's checkpoint."""
    if not resume_run_id:
        return run_experiment(config, **kwargs)
    from bertpooled.run.experiment import prepare_resume

    resumed_config, target = prepare_resume(resume_run_id, None)
    try:
        return run_experiment(resumed_config, resume=target, **kwargs)
    finally:
        target.release()


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
    label = tags[CHILD_TAG]
    try:
        _busy = True  # before the check: a stop signalled from here on interrupts this child
        if _stop is not None and _stop.is_set():
            return None
        mlflow.set_tracking_uri(tracking_uri)
        return _run_child(config, resume_run_id, progress=False, parent_run_id=parent_id, tags=tags,
                          log=lambda line: print(f"[{label}] {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        if _stop is not None:
            _stop.set()
        raise
    finally:
        _busy = False


def _run_parallel(todo: Sequence[Child], parent_id: str, parallel: int, log: Callable[[str], None],
                  resumable: dict[str, str] | None = None) -> list:
    """Children side by side in `parallel` fresh processes, each with its share of the CPU threads.

    The first failure cancels the children not yet started, lets the running ones end, then propagates.
    Ctrl-C or SIGTERM (to this process, or to the whole process group) stops the sweep: no child starts
    after it, each running child ends KILLED with its last checkpoint (a resume of the sweep continues it),
    then KeyboardInterrupt propagates.
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
            tags = {KEY_TAG: child.key, CHILD_TAG: child.label, "sweep/shared_inputs": "on-disk caches the parent filled",
                    "sweep/parallel": str(parallel)}
            futures[pool.submit(_child_in_process, config, parent_id, tags, mlflow.get_tracking_uri(),
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


def compare_children(outcome: SweepOutcome, *, format: str = "table", output: str | None = None) -> Report:  # noqa: A002
    """compare-runs over the parent's children, baseline `basic` when the grid has it; logged as a comparison
    run, whose id the parent gets as tag `sweep/comparison_run_id`."""
    modes = list(dict.fromkeys(c.config.mode for c in outcome.children))
    report = compare.compare_runs(
        format=format, output=output, parent=outcome.parent_run_id, baseline="basic" if "basic" in modes else modes[0]
    )
    if report.comparison_run_id:
        MlflowClient().set_tag(outcome.parent_run_id, "sweep/comparison_run_id", report.comparison_run_id)
    return report
