"""The trials of a tuning study: one trial's training (`Objective`), a worker's loop over trials (`optimize`), and
the workers (local processes or Ray tasks) that share one study through its storage. See bertpooled.tune.study."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bertpooled.config import Config, load_config
from bertpooled.contract import TUNE_STUDY_TAG, TUNE_TRIAL_TAG, VAL_ACCURACY
from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.run import fit, network, prepare, runtime
from bertpooled.run.experiment import read_inputs, run_scope
from bertpooled.run.measure import Trained
from bertpooled.run.pipeline import Inputs, LSTMPipeline
from bertpooled.run.shared import Shared
from bertpooled.tracking.sink import MlflowSink, TrialStart
from bertpooled.tune import space

if TYPE_CHECKING:
    from bertpooled.tune.plan import StudyPlan

#: What a trial's run reports as its score: the last epoch's val/accuracy.
TUNE_VALUE = "tune/value"
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


@dataclass(frozen=True)
class WorkerArgs:
    """What each worker of a study is handed (picklable: no callables), the same for every worker."""

    plan: StudyPlan
    """The study, its base config already as a worker runs it (`Executor.worker_config`)."""
    url: str
    """The study's Optuna storage, and the engine arguments it opens with."""
    engine_kwargs: dict
    parent: str
    """The study's parent run, under which each trial is a child run."""
    tracking_uri: str
    target: int
    """Trials the study holds in all (every state) when the workers stop starting more."""
    timeout: float | None
    sampler_seed: int
    """The study's sampler seed; worker i draws with its own (`work`)."""
    pruner: Any
    progress: bool | None


def work(args: WorkerArgs, index: int, log: Callable[[str], None] | None = None) -> None:
    """Worker `index` of a study, as the executor's pool runs it (`Executor.run_workers`): the study's trials with
    the worker's own sampler seed. `log` None: a worker of its own (a process or a Ray task), which joins the
    study's tracking store and prints its lines prefixed with its number."""
    from bertpooled.tracking.sweeps import use_tracking_uri

    if log is None:
        use_tracking_uri(args.tracking_uri)

        def log(line: str) -> None:
            print(f"[worker {index}] {line}", flush=True)

    optimize(dataclasses.replace(args, sampler_seed=args.sampler_seed + 104729 * index), log)


def optimize(args: WorkerArgs, log: Callable[[str], None] = print) -> None:
    """Run trials of the study until it holds `target` trials in all (every state, running ones included)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from the objective instead
    rdb = open_storage(args.url, args.engine_kwargs)
    held = len(rdb.get_all_trials(rdb.get_study_id_from_name(args.plan.name), deepcopy=False))
    if held >= args.target:
        return
    # Seeded by what the study already holds as well: a resumed study must not draw its first trials again.
    study = optuna.load_study(
        study_name=args.plan.name,
        storage=rdb,
        pruner=args.pruner,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed + 7919 * held),
    )
    objective = Objective(args.plan, args.parent, log, args.progress)
    # A failed trial (its settings diverged, say) is recorded as FAIL in both stores and the search goes on; it
    # counts toward `target`, so a search whose every trial fails still ends.
    study.optimize(
        objective,
        timeout=args.timeout,
        catch=(Exception,),
        gc_after_trial=False,
        callbacks=[MaxTrialsCallback(args.target, states=None)],
    )


class Objective:
    """One trial: the trial's values on the plan's base config, trained in a child run through the one run path
    (`run.experiment.run_scope`), scored on validation; its pruning is a callback on the run's sink."""

    def __init__(self, plan: StudyPlan, parent_id: str, log: Callable[[str], None] = print, progress=False) -> None:
        self.plan, self.parent_id, self.log, self.progress = plan, parent_id, log, progress
        self.shared = Shared()  # this worker's data, tokenizer, token ids and embeddings, read once for all its trials

    def __call__(self, trial) -> float:
        import optuna

        started = time.perf_counter()
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
        how = TrialStart(
            self.parent_id, name, tags, f"{self.plan.name} trial {trial.number}: {shown}", (optuna.TrialPruned,)
        )
        info = prepare.check(config)
        rt = runtime.Runtime.resolve(config).start()
        inputs = read_inputs(config, info, rt, self.shared, None, quiet, self.progress, test=False)
        assert inputs.val is not None, "a study's plan always holds out a validation split (validation_fraction > 0)"
        sink = MlflowSink(how, [Pruning(trial, config.epochs)])
        try:
            outcome = run_scope(inputs, TrialPipeline(), sink, started=started, log=quiet, progress=self.progress)
        except optuna.TrialPruned as exc:
            self.log(f"{name}: {shown}: {exc}")
            raise
        value = outcome.metrics[TUNE_VALUE]
        self.log(f"{name}: {shown}: val/accuracy {value:.4f}")
        return value


def quiet(line: str) -> None:
    """A trial says one line when it ends (`Objective`), not one per epoch."""


@dataclass(frozen=True)
class Pruning:
    """A trial's hook on its run's sink: the run's id on the trial, and after each epoch its val/accuracy reported
    to Optuna, whose pruner may stop the trial there (`optuna.TrialPruned`: the run ends KILLED, `-pruned`)."""

    trial: Any
    epochs: int

    def on_start(self, run_id: str) -> None:
        self.trial.set_user_attr("mlflow_run_id", run_id)

    def on_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        import optuna

        score = metrics[VAL_ACCURACY]
        self.trial.report(score, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {step} of {self.epochs}: val/accuracy {score:.4f}")


class TrialPipeline(LSTMPipeline):
    """The LSTM pipeline as a trial runs it: trained on the training rows less the validation split, which is
    scored after every epoch; no test row is read and no model logged. Its result is `tune/value`, the last
    epoch's val/accuracy."""

    def fit_and_evaluate(self, inputs: Inputs, on_epoch=None, checkpoints=None, progress=None) -> Trained:
        prepared = self._prepare(inputs, progress)
        model = network.build_model(prepared).to(inputs.rt.device)
        with inputs.phases.timed("train"):
            history = fit.fit(model, prepared, on_epoch=on_epoch, progress=progress).history
        last = history[-1].val
        assert last is not None and inputs.val is not None, "a trial's run scores its validation split every epoch"
        metrics = {TUNE_VALUE: last[VAL_ACCURACY], "data/train_examples": len(inputs.train)}
        metrics["data/val_examples"] = len(inputs.val)
        return Trained(metrics, np.empty(0), None, history=history)

    def log_model(self, config: Config, trained: Trained) -> str:
        return ""  # a trial's model is not kept: the study's best config is trained again, and tested
