"""`bertpooled tune`: an Optuna study per mode over a named search space, each trial a child MLflow run.

A trial trains on the training subset less its validation split and is scored by `val/accuracy` after its last
epoch; it reports `val/accuracy` after every epoch, so the pruner can stop a hopeless one early. It never takes,
tokenizes or scores a test row: the test set stays unseen until the tuned configs are compared.

The study lives in Optuna's RDB storage (beside the tracking store by default: `tracking.tuning.study_storage`),
so `--resume` continues it and `--parallel N` workers share it; its parent run logs the best trial, the best
config as YAML (`train --config` and `sweep --config` take it as it is) and Optuna's plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import yaml

from bertpooled import files
from bertpooled.config import load_config
from bertpooled.contract import (
    BEST_CONFIG_ARTIFACT,
    CONFIG_PARAM_PREFIX,
    PLOTS_DIR,
    TUNE_BEST_RUN_TAG,
    TUNE_BEST_TRIAL_TAG,
    TUNE_STORAGE_TAG,
    TUNE_STUDY_TAG,
)
from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.sweep import workers
from bertpooled.sweep.executor import Executor
from bertpooled.sweep.local import LocalExecutor
from bertpooled.tracking import tuning as store
from bertpooled.tracking.probe import check_tracking_reachable
from bertpooled.tracking.runs import check_experiment_name
from bertpooled.tune import space
from bertpooled.tune import trials as trial_runs
from bertpooled.tune.plan import StudyPlan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PRUNERS = ("median", "none")


@dataclass(frozen=True)
class StudyOutcome:
    plan: StudyPlan
    parent_run_id: str
    best_value: float
    best_params: dict
    best_trial: int
    best_run_id: str
    counts: dict[str, int]
    best_config: str


def make_pruner(name: str):
    """`median`: from the 6th trial on, stop a trial whose val/accuracy after any epoch is below the median of the
    earlier trials' at that epoch; `none`: every trial runs all its epochs."""
    import optuna

    name = (name or "median").strip().lower()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BertpooledError(f"unknown pruner {name!r}: pass --pruner {' or '.join(PRUNERS)}")


def run_study(
    plan: StudyPlan,
    *,
    trials: int,
    timeout: float | None = None,
    resume: bool = False,
    parallel: int = 1,
    storage: str | None = None,
    pruner=None,
    sampler_seed: int = 0,
    experiment: str | None = None,
    output: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = False,
    executor: Executor | None = None,
) -> StudyOutcome:
    """Run (or with `resume`, continue) `plan`'s study until it holds `trials` complete or pruned trials, or
    `timeout` seconds pass; then log the best trial on the parent run. See the module doc. `executor` (started:
    `sweep.runner.executor_for`) runs the `parallel` workers: this process alone or local processes (None: the
    local executor), Ray tasks."""
    import optuna

    executor = executor or LocalExecutor()
    for option, n in (("trials", trials), ("parallel", parallel)):
        if n < 1:
            raise BertpooledError(f"--{option} {n} runs nothing: pass 1 or more")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here instead
    _check_before_work(plan, experiment, parallel, local=executor.here)
    url, engine_kwargs = store.study_storage(storage)
    rdb = trial_runs.open_storage(url, engine_kwargs)
    pruner = pruner if pruner is not None else make_pruner("median")
    shown = redact_uri(url)
    identity = {"space": str(plan.space), "base": json.dumps(plan.base.to_dict(), sort_keys=True, default=str)}
    study, started, parent_id, experiment_id = _open(plan, rdb, pruner, resume, identity, shown, experiment, log)
    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    tags = {TUNE_STUDY_TAG: plan.name, TUNE_STORAGE_TAG: shown, "mode": plan.mode, "tune/trials": str(trials)}
    tags["tune/space"] = str(plan.space)
    # `tune-pool` for the default --study tune (not tune-tune-pool); another study name is prefixed.
    run_name = plan.name if plan.name.startswith("tune-") else f"tune-{plan.name}"
    with store.study_run(parent_id, experiment_id, run_name, tags, launcher) as parent:
        if not started:
            study = _create(study, plan, rdb, pruner, {**identity, "mlflow_parent_run_id": parent}, sampler_seed)
        done = _count(study, ("COMPLETE", "PRUNED"))
        target = len(study.get_trials(deepcopy=False)) + max(0, trials - done)
        log(
            f"study {plan.name} ({parent}): {done} of {trials} trials done, {max(0, trials - done)} to run"
            f"{f', {parallel} workers' if parallel > 1 else ''}; storage {shown}"
        )
        log(f"trials: {store.trials_link(experiment_id, plan.name, plan.space.names)}")
        if done < trials:
            worker_plan = dataclasses.replace(plan, base=executor.worker_config(plan.base, parallel))
            where = (worker_plan, url, engine_kwargs, parent, store.tracking_uri(), target)
            args = trial_runs.WorkerArgs(*where, timeout, sampler_seed, pruner, progress)
            owned_by = workers.owner(parent, "continue the study with --resume")
            executor.run_workers(trial_runs.work, args, parallel, log, owned_by)
        return _conclude(study, plan, parent, output, log)


def _check_before_work(plan: StudyPlan, experiment: str | None, parallel: int, local: bool) -> None:
    """The experiment's name and the store (as every command checks them); `parallel` local workers against this
    machine's cores, and their trials' memory at the space's largest width, batch and length against its free
    memory (a Ray cluster's workers are the cluster's to place)."""
    from bertpooled import budget
    from bertpooled.run.sources import backbone_info

    check_experiment_name(experiment)  # the check train and sweep make: one line, not a 67-line traceback
    check_tracking_reachable()  # seconds, not minutes; and a file that is no MLflow store is never written over
    if not local:
        return
    if parallel > 1:
        budget.check_parallel(parallel)
    largest = {
        d.name: max(d.corners())
        for d in plan.space.dimensions
        if d.name in ("lstm_units", "batch_size", "max_len") and d.corners()
    }
    info = backbone_info(plan.base)
    config = dataclasses.replace(plan.base, **largest)
    budget.check_memory(config, info.hidden_size, info.num_layers, parallel, f"study {plan.name}'s largest trial")


def _create(study, plan: StudyPlan, rdb, pruner, attrs: dict, sampler_seed: int):
    """The new study (or the one a crash left empty), its identity and parent run as user attributes, and the
    trials' base config, pruner and sampler as the parent run's params."""
    import optuna

    study = study or optuna.create_study(study_name=plan.name, storage=rdb, direction="maximize", pruner=pruner)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    store.log_params(
        {
            **{f"{CONFIG_PARAM_PREFIX}{k}": ("" if v is None else v) for k, v in plan.base.to_dict().items()},
            "tune/pruner": type(pruner).__name__,
            "tune/sampler": f"TPESampler(seed={sampler_seed})",
        }
    )
    return study


def _open(plan: StudyPlan, rdb, pruner, resume: bool, identity: dict, shown: str, experiment, log):
    """(the study or None, whether it started before, its parent run id, the experiment id): a started study
    only with --resume and the same identity (its stale trials failed), a new one only without."""
    study = _load(plan.name, rdb, pruner)
    # A study a crash left before its parent run was recorded (no trials, no run) is started afresh.
    started = study is not None and ("mlflow_parent_run_id" in study.user_attrs or study.get_trials(deepcopy=False))
    if started and not resume:
        raise BertpooledError(
            f"study {plan.name} already exists in {shown}: pass --resume to continue it, or --study with a new name"
        )
    if resume and not started:
        raise BertpooledError(f"no study {plan.name} in {shown} to resume: leave out --resume to start it")
    if not started:
        # The tracking store answers before the study is made.
        return study, False, None, store.use_experiment(experiment)
    parent_id = _check_resumable(study, identity, shown)
    experiment_id = store.find_study_parent(parent_id)
    _fail_stale(study, log)
    return study, True, parent_id, experiment_id


def _load(name: str, rdb, pruner):
    """The study `name` in the storage, or None."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=rdb, pruner=pruner)
    except KeyError:
        return None


def _check_resumable(study, identity: dict, shown: str) -> str:
    attrs = study.user_attrs
    if "mlflow_parent_run_id" not in attrs:
        raise BertpooledError(
            f"study {study.study_name} in {shown} was not made by bertpooled tune: pick another --study"
        )
    differs = [k for k in identity if attrs.get(k) != identity[k]]
    if differs:
        raise BertpooledError(
            f"study {study.study_name} was started with another {' and '.join(differs)} "
            f"(space {attrs.get('space')}): pass the same --space and options to resume it, or a new --study"
        )
    return attrs["mlflow_parent_run_id"]


def _fail_stale(study, log) -> None:
    """Trials whose worker died (no heartbeat for GRACE_S) failed in Optuna, and their runs ended in MLflow."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = [
        t.user_attrs["mlflow_run_id"]
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "FAIL" and "mlflow_run_id" in t.user_attrs
    ]
    ended = store.end_orphaned_trials(failed)
    if ended:
        log(f"ended FAILED {len(ended)} trial run(s) a stopped worker left RUNNING")


def _count(study, states: Sequence[str]) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def best_config(plan: StudyPlan, params: dict) -> dict:
    """The best trial's config as the YAML file holds it: the protocol (--config file and options, less what only
    shrank the search), the mode, the trial's values. Checked to load before it is written."""
    values = {**plan.protocol, "mode": plan.mode, **params}
    load_config(None, values)
    return values


def _conclude(study, plan: StudyPlan, parent: str, output: str | None, log: Callable[[str], None]) -> StudyOutcome:
    """On the parent run: trial counts, the best trial and its config (YAML), the trials table and Optuna's plots."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    store.log_metrics({f"tune/trials_{state.lower()}": n for state, n in counts.items()})
    if not counts["COMPLETE"]:
        raise BertpooledError(
            f"study {plan.name} has no complete trial ({counts['PRUNED']} pruned, {counts['FAIL']} "
            "failed: see their runs' error tags): fix the cause, then --resume it"
        )
    best = study.best_trial
    values = best_config(plan, best.params)
    header = (
        f"# The best of study {plan.name}: trial {best.number}, val/accuracy {best.value:.4f} on "
        f"{plan.base.validation_fraction:g} of the training subset "
        f"(max_train_examples={plan.base.max_train_examples}).\n"
        f"# Searched: {plan.space}. Run it: bertpooled train --config THIS_FILE (or sweep --config).\n"
    )
    text = header + yaml.safe_dump(values, sort_keys=False)
    store.log_text(text, BEST_CONFIG_ARTIFACT)
    store.set_tags(
        {
            TUNE_BEST_TRIAL_TAG: str(best.number),
            TUNE_BEST_RUN_TAG: best.user_attrs.get("mlflow_run_id", ""),
            **{f"best/{k}": str(v) for k, v in best.params.items()},
        }
    )
    store.log_metrics({"best/val_accuracy": best.value, "best/trial": best.number})
    with tempfile.TemporaryDirectory() as tmp:
        study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        _plots(study, Path(tmp) / PLOTS_DIR, log)
        store.log_artifacts(tmp)
    if output:
        path = Path(output) / f"best-{plan.mode}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(path, text)
        log(f"best config: {path}")
    log(
        f"study {plan.name}: best trial {best.number} val/accuracy {best.value:.4f} with "
        f"{space.shown(best.params)}; {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed"
    )
    return StudyOutcome(
        plan, parent, best.value, dict(best.params), best.number, best.user_attrs.get("mlflow_run_id", ""), counts, text
    )


def _plots(study, folder: Path, log: Callable[[str], None]) -> None:
    """Optuna's optimization history and parameter importances, drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in (
            ("optimization_history", plots.plot_optimization_history),
            ("param_importances", plots.plot_param_importances),
        ):
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:  # importances need 2+ complete trials that differ
                log(f"no {name} plot: {(str(exc).splitlines() or [''])[0]}")
                continue
            figure = cast("Figure", axes.figure)  # the plot's own figure, not a subfigure
            figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(figure)
