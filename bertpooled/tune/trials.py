"""The trials of a tuning study: one trial's training (`Objective`), a worker's loop over trials (`optimize`), and
the workers (local processes or Ray tasks) that share one study through its storage. See bertpooled.tune.study."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bertpooled.config import Config, load_config
from bertpooled.contract import (
    DATA_DIGEST_PARAM,
    TIME_EPOCH,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TUNE_STUDY_TAG,
    TUNE_TRIAL_TAG,
    VAL_ACCURACY,
    time_metric,
)
from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.run import fit, prepare, runtime
from bertpooled.run.measure import Phases
from bertpooled.run.shared import Shared
from bertpooled.sweep import workers
from bertpooled.tracking import runs as tracking
from bertpooled.tracking import tuning as store
from bertpooled.tune import space

if TYPE_CHECKING:
    from bertpooled.tune.plan import StudyPlan

    # `optimize`'s arguments but `log`, as the study hands them to each worker (picklable: no callables).
    OptimizeArgs = tuple[StudyPlan, str, dict, str, str, int, float | None, int, Any, bool | None]

# A worker killed outright stops beating: after GRACE_S its RUNNING trial is failed by the next worker or resume.
HEARTBEAT_S, GRACE_S = 20, 60


def open_storage(url: str, engine_kwargs: dict):
    """Optuna's RDB storage at `url`, with heartbeats (so a killed worker's trial is failed, not left RUNNING)."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs or None, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as exc:
        raise BertpooledError(
            f"cannot open the study storage {redact_uri(url)} ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}): pass --storage with a reachable database URL"
        ) from None


def optimize(
    plan: StudyPlan,
    url: str,
    engine_kwargs: dict,
    parent: str,
    tracking_uri: str,
    target: int,
    timeout: float | None,
    sampler_seed: int,
    pruner,
    progress,
    log: Callable[[str], None] = print,
) -> None:
    """Run trials of the study until it holds `target` trials in all (every state, running ones included)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from the objective instead
    rdb = open_storage(url, engine_kwargs)
    held = len(rdb.get_all_trials(rdb.get_study_id_from_name(plan.name), deepcopy=False))
    if held >= target:
        return
    # Seeded by what the study already holds as well: a resumed study must not draw its first trials again.
    study = optuna.load_study(
        study_name=plan.name,
        storage=rdb,
        pruner=pruner,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed + 7919 * held),
    )
    objective = Objective(plan, parent, log, progress)
    # A failed trial (its settings diverged, say) is recorded as FAIL in both stores and the search goes on; it
    # counts toward `target`, so a search whose every trial fails still ends.
    study.optimize(
        objective,
        timeout=timeout,
        catch=(Exception,),
        gc_after_trial=False,
        callbacks=[MaxTrialsCallback(target, states=None)],
    )


class Objective:
    """One trial: the trial's values on the plan's base config, trained in a child run, scored on validation."""

    def __init__(self, plan: StudyPlan, parent_id: str, log: Callable[[str], None] = print, progress=False) -> None:
        self.plan, self.parent_id, self.log, self.progress = plan, parent_id, log, progress
        self.shared = Shared()  # this worker's data, tokenizer, token ids and embeddings, read once for all its trials

    def __call__(self, trial) -> float:
        import optuna

        values = self.plan.space.suggest(trial)
        config = load_config(None, {**{k: v for k, v in self.plan.base.to_dict().items() if v is not None}, **values})
        name = f"trial-{trial.number}-{config.mode}"
        tags = {
            TUNE_STUDY_TAG: self.plan.name,
            TUNE_TRIAL_TAG: str(trial.number),
            "mode": config.mode,
            "backbone": config.model,
            "pool": config.pool,
        }
        shown = space.shown(values)
        with store.trial_run(
            self.parent_id, name, tags, f"{self.plan.name} trial {trial.number}: {shown}", pruned=(optuna.TrialPruned,)
        ) as run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            try:
                value = self._train(trial, config)
            except optuna.TrialPruned as exc:
                self.log(f"{name}: {shown}: {exc}")
                raise
        self.log(f"{name}: {shown}: val/accuracy {value:.4f}")
        return value

    def _train(self, trial, config: Config) -> float:
        import optuna

        info = prepare.check(config)
        rt = runtime.Runtime.resolve(config).start()
        phases = Phases()
        key = ("training", config.data, config.train_fraction, config.max_train_examples, config.data_seed)
        imdb, train = self.shared.get(key, lambda: prepare.read_training(config, phases))[0]
        rows, val = prepare.split_validation(config, train)
        assert val is not None, "a study's plan always holds out a validation split (validation_fraction > 0)"
        store.log_trial_inputs(
            config.to_dict(), {DATA_DIGEST_PARAM: imdb.digest, "data/source": redact_uri(imdb.source)}
        )
        tracking.log_datasets(rows.to_frame(), None, imdb.source, imdb.digest, validation=val.to_frame())
        prepared = self.shared.prepare(config, info, imdb, rows, None, phases, progress=self.progress, rt=rt, val=val)
        model = fit.build_model(prepared).to(rt.device)

        def on_epoch(stats: fit.EpochStats) -> None:
            assert stats.val is not None, "a run with a validation split scores it every epoch"
            score = stats.val[VAL_ACCURACY]
            store.log_metrics(
                {TRAIN_LOSS: stats.loss, TRAIN_ACCURACY: stats.accuracy, TIME_EPOCH: stats.seconds, **stats.val},
                step=stats.epoch,
            )
            trial.report(score, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after epoch {stats.epoch} of {config.epochs}: val/accuracy {score:.4f}"
                )

        with phases.timed("train"):
            history = fit.fit(model, prepared, on_epoch=on_epoch, progress=self.progress).history
        last = history[-1].val
        assert last is not None, "a run with a validation split scores it every epoch"
        value = last[VAL_ACCURACY]
        store.log_metrics(
            {
                "tune/value": value,
                "data/train_examples": len(rows),
                "data/val_examples": len(val),
                **{time_metric(k): v for k, v in phases.seconds.items()},
            },
            step=config.epochs,
        )
        return value


def _worker(args: OptimizeArgs, index: int, stop, owned_by: workers.Owner) -> None:
    """One worker process of `--parallel` (started as every pool's are: `sweep.workers`, so it dies with the
    study's process): its own sampler seed, its share of the CPU threads, the study's trials."""
    workers.init(stop, owned_by)
    with workers.busy():  # a signal interrupts the running trial (FAIL in Optuna, KILLED in MLflow)
        _ray_worker(args, index)


def run_workers(args: OptimizeArgs, parallel: int, log: Callable[[str], None]) -> None:
    """`parallel` fresh processes sharing the study through its storage; Ctrl-C or SIGTERM ends them all (each
    running trial FAIL in Optuna, KILLED in MLflow), then propagates. A SIGKILLed study takes its workers with
    it, and they mark its parent run KILLED."""
    plan, parent = args[0], args[3]
    if not plan.base.num_threads:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        args = (dataclasses.replace(plan, base=dataclasses.replace(plan.base, num_threads=threads)), *args[1:])
    context = workers.context()
    stop, owned_by = context.Event(), workers.owner(parent, "continue the study with --resume")
    started = [
        context.Process(target=_worker, args=(args, i, stop, owned_by), name=f"tune-worker-{i}")
        for i in range(parallel)
    ]
    for worker in started:
        worker.start()
    try:
        for worker in started:
            worker.join()
    except KeyboardInterrupt:
        stop.set()
        workers.terminate([w.pid for w in started if w.is_alive()])
        for worker in started:
            worker.join()
        raise
    failed = [f"{w.name} (exit {w.exitcode})" for w in started if w.exitcode]
    if failed:
        raise BertpooledError(
            f"tuning worker(s) {', '.join(failed)} stopped with an error (see its lines above): "
            "fix it, then continue the study with --resume"
        )


def run_ray_workers(args: OptimizeArgs, workers: int, executor, log: Callable[[str], None]) -> None:
    """The workers as Ray tasks with the executor's resources (every node must reach the study's storage and the
    tracking store: a shared database, not a local SQLite file, beyond one machine). A worker's error stops the
    study; Ctrl-C cancels the tasks, whose running trials then end (FAIL in Optuna, KILLED in MLflow)."""
    from bertpooled.sweep.ray_executor import CANCEL_GRACE_S, import_ray

    ray = import_ray()
    executor.connect()
    plan, base = args[0], args[0].base
    if not base.num_threads:
        base = dataclasses.replace(base, num_threads=max(1, int(executor.cpus_per_run)))
    if base.device == "auto" and not executor.gpus_per_run:
        base = dataclasses.replace(base, device="cpu")  # Ray leaves a GPU visible to a task that reserved none
    args = (dataclasses.replace(plan, base=base), *args[1:])
    task = ray.remote(_ray_worker).options(
        num_cpus=executor.cpus_per_run, num_gpus=executor.gpus_per_run, max_retries=0
    )
    refs = [task.remote(args, i) for i in range(workers)]
    log(f"{workers} tuning worker(s) as Ray tasks, {executor.describe().removeprefix('Ray (').rstrip(')')}")
    try:
        ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        _cancel(ray, refs, CANCEL_GRACE_S)
        raise BertpooledError(
            f"a tuning worker failed on Ray ({(str(cause).splitlines() or [type(cause).__name__])[0]}): "
            "fix it, then continue the study with --resume"
        ) from None
    except BaseException:
        _cancel(ray, refs, CANCEL_GRACE_S)
        raise


def _cancel(ray, refs: list, grace: float) -> None:
    for ref in refs:
        ray.cancel(ref)  # a KeyboardInterrupt inside the task: its trial and run end as on Ctrl-C
    ray.wait(refs, num_returns=len(refs), timeout=grace)


def _ray_worker(args: OptimizeArgs, index: int) -> None:
    """One worker inside a Ray task (Ray delivers cancellation as KeyboardInterrupt itself), or a local worker
    process (`_worker`): the study's trials with the worker's own sampler seed."""
    from bertpooled.tracking.sweeps import use_tracking_uri

    plan, url, engine_kwargs, parent, tracking_uri, target, timeout, sampler_seed, pruner, progress = args
    use_tracking_uri(tracking_uri)
    optimize(
        plan,
        url,
        engine_kwargs,
        parent,
        tracking_uri,
        target,
        timeout,
        sampler_seed + 104729 * index,
        pruner,
        progress,
        log=lambda line: print(f"[worker {index}] {line}", flush=True),
    )
