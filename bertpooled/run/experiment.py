"""One tracked experiment: validate, read data, then inside an MLflow run prepare, train, evaluate and log."""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bertpooled.config import Config
from bertpooled.contract import (
    ACCURACY,
    CHECKPOINT_SHA256_TAG,
    DATA_DIGEST_PARAM,
    RESUMED_TAG,
    TIME_EPOCH,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VAL_ACCURACY,
    time_metric,
)
from bertpooled.errors import BertpooledError
from bertpooled.run import checkpoint, cost, prepare, runtime
from bertpooled.run.fit import EpochStats
from bertpooled.run.measure import Phases
from bertpooled.run.pipeline import Inputs, Pipeline
from bertpooled.run.shared import Shared
from bertpooled.tracking import ownership
from bertpooled.tracking import runs as tracking
from bertpooled.tracking.models import fail_unfinished_models, log_checkpoint, run_to_resume
from bertpooled.tracking.probe import check_tracking_reachable


@dataclass
class Outcome:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    runs_link: str
    run_link: str
    model_uri: str


def run_experiment(
    config: Config,
    *,
    progress: bool | None = None,
    log=print,
    shared: Shared | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    resume: Resume | None = None,
    pipeline: Pipeline | None = None,
) -> Outcome:
    """Run `config` end to end as one MLflow run and return where it landed.

    Everything a user can get wrong (config, backbone, data) fails before the run is created, except
    under `mlflow run`, which creates the run itself: there it ends FAILED with the reason as a tag.
    A sweep passes `shared` (inputs an earlier child already read, loaded or tokenized: the same values,
    not read again), `parent_run_id` (the run is nested under it) and `tags` (added to the run's own); a seed
    group passes `pipeline` (one that hands back its seed's already-trained model: bertpooled.run.grouped_sweep).
    The orchestration of a run, read top to bottom: each step is one call.
    """
    started = time.perf_counter()
    check_tracking_reachable()
    if parent_run_id is None and resume is None:
        tracking.check_experiment_name()
    info = prepare.check(config)
    runtime.configure_threads(config)
    device = runtime.resolve_device(config.device)  # resolved once: everything below receives it
    phases = Phases()
    imdb, train_split, test_split = (shared.read_data if shared else prepare.read_data)(
        config, phases, progress=progress
    )
    train_split, val_split = prepare.split_validation(config, train_split)
    held = f" / {len(val_split):,} validation" if val_split is not None else ""
    log(
        f"data: {len(train_split):,} train{held} / {len(test_split):,} test reviews from "
        f"{tracking.redact_uri(imdb.source)}"
    )
    if resume and resume.data_digest != imdb.digest:
        raise BertpooledError(
            f"run {resume.run_id} was trained on other data (digest {resume.data_digest[:12]}, this is "
            f"{imdb.digest[:12]}): "
            "point --data or BERTPOOLED_IMDB at the same IMDB copy"
        )
    pipeline = pipeline or pipeline_for(config)
    inputs = Inputs(config, info, imdb, train_split, test_split, phases, device, shared, val=val_split)
    code = tracking.code_provenance()
    name = tracking.run_name(config.variant, config.model, config.seed)
    tags = {"mode": config.mode, "backbone": config.model, "pool": config.pool, **pipeline.tags(config), **(tags or {})}
    if resume:
        tags[RESUMED_TAG] = str(resume.state.epoch)
    with tracking.training_run(
        name,
        tags,
        config.description or pipeline.describe(config),
        parent_run_id=parent_run_id,
        resume_run_id=resume.run_id if resume else None,
        system_metrics=config.system_metrics,
    ) as run:
        if resume:
            _continue(resume, log)
        else:
            _log_inputs(inputs, code)

        def on_epoch(stats: EpochStats) -> None:
            metrics = {TRAIN_LOSS: stats.loss, TRAIN_ACCURACY: stats.accuracy, TIME_EPOCH: stats.seconds}
            if stats.test_accuracy is not None:
                metrics[ACCURACY.key] = stats.test_accuracy
            metrics.update(stats.val or {})
            tracking.log_epoch(stats.epoch, metrics)
            extra = f" test_acc={stats.test_accuracy:.4f}" if stats.test_accuracy is not None else ""
            extra += f" val_acc={stats.val[VAL_ACCURACY]:.4f}" if stats.val else ""
            log(
                f"epoch {stats.epoch}/{config.epochs}: loss={stats.loss:.4f} acc={stats.accuracy:.4f}{extra} "
                f"({stats.seconds:.1f}s)"
            )

        owner = checkpoint.identity(run.info.run_id, config.to_dict())
        checkpoints = checkpoint.Checkpointer(
            lambda *state: _save_checkpoint(*state, owner=owner), resume.state if resume else None
        )
        trained = pipeline.fit_and_evaluate(inputs, on_epoch=on_epoch, checkpoints=checkpoints, progress=progress)
        tracking.log_predictions(test_split.ids, test_split.labels, trained.probabilities)
        _log_plots(test_split.labels, trained.probabilities)
        with phases.timed("log_model"):
            model_uri = pipeline.log_model(config, trained)
        # time/total_s covers everything this process did for the run, model logging included (and a seed group's
        # share of training, done before the run started: the pipeline's `trained_ahead_s`).
        phases.seconds["total"] = time.perf_counter() - started + getattr(pipeline, "trained_ahead_s", 0.0)
        metrics = dict(trained.metrics)
        metrics.update({time_metric(k): v for k, v in phases.seconds.items()})
        tracking.log_metrics(metrics, step=config.epochs, model_uri=model_uri)
        runs_link, run_link = tracking.ui_links(run)
        return Outcome(run.info.run_id, run.info.experiment_id, metrics, runs_link, run_link, model_uri)


def pipeline_for(config: Config) -> Pipeline:
    """The pipeline that runs `config`: the reference yardstick for mode=reference, else the LSTM."""
    if config.mode == "reference":
        from bertpooled.run.reference import ReferencePipeline

        return ReferencePipeline()
    from bertpooled.run.lstm import LSTMPipeline

    return LSTMPipeline()


def _continue(resume: Resume, log) -> None:
    """What a resumed run records before training on: where it resumed, and what the interruption left."""
    log(f"resuming run {resume.run_id} after epoch {resume.state.epoch}")
    orphans = fail_unfinished_models(resume.run_id)
    if orphans:
        log(f"marked FAILED the model(s) an interrupted model logging left PENDING: {', '.join(orphans)}")
    if resume.code_change:
        # Params cannot change: the run keeps the code it started with, and says what resumed it.
        tracking.set_tags({"resume/code_change": resume.code_change})


def _log_inputs(inputs: Inputs, code: dict[str, str]) -> None:
    """What a new run logs before any work: the resolved config, provenance and the datasets."""
    config, imdb, device = inputs.config, inputs.imdb, inputs.device
    # config.yaml and config/data name the data actually read (e.g. from BERTPOOLED_IMDB), not the unset field;
    # a download keeps it unset (its URL is data/source), so resuming downloads again rather than opening a URL.
    resolved = config.to_dict()
    if resolved["data"] is None and Path(imdb.source).exists():
        resolved["data"] = tracking.redact_uri(imdb.source)
    tracking.log_config(
        resolved,
        {
            **code,
            DATA_DIGEST_PARAM: imdb.digest,
            "data/source": tracking.redact_uri(imdb.source),
            "backbone/path": inputs.info.path,
            "backbone/hidden_size": inputs.info.hidden_size,
            "runtime/torch": torch.__version__,
            "runtime/threads": torch.get_num_threads(),
            "runtime/device": str(device),
            "runtime/precision": runtime.precision_for(config, device),
            **cost.runtime_params(device),
            "runtime/machine": platform.machine(),
        },
    )
    tracking.log_datasets(
        inputs.train.to_frame(),
        inputs.test.to_frame(),
        imdb.source,
        imdb.digest,
        validation=inputs.val.to_frame() if inputs.val is not None else None,
    )


def _log_plots(labels, probabilities) -> None:
    """Confusion matrix, ROC and precision-recall curves of the test predictions, as artifacts under plots/."""
    if len(set(labels.astype(int).tolist())) < 2:
        return  # ROC and PR curves need both classes among the labels
    from bertpooled.report.plots import classifier_plots

    with tempfile.TemporaryDirectory() as tmp:
        classifier_plots(labels, probabilities, tmp)
        tracking.log_artifacts(tmp, "plots")


def _save_checkpoint(epoch: int, model, optimizer, order, history, owner: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sha256 = checkpoint.save(Path(tmp), epoch, model, optimizer, order, history, owner)
        log_checkpoint(Path(tmp), epoch, sha256)


@dataclass
class Resume:
    """A run to continue: its id, its data digest and its verified last checkpoint."""

    run_id: str
    data_digest: str
    state: checkpoint.State
    code_change: str = ""
    """With --allow-code-change: how the code differs from the run's ("" when it does not)."""
    lock: object = None
    """The open lock file that makes this process the run's only resumer on this machine (see `claim_run`)."""

    def release(self) -> None:
        """Let another process resume the run (the lock also goes when this process ends, however it ends)."""
        ownership.let_go(self.run_id)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def claim_run(run_id: str):
    """An exclusive lock on `run_id` for this process, or a one-line error when another process holds it.

    Two resumes of one run at once would both log every metric and a model each into the same run. The OS
    drops the lock when its process dies (kill -9 too), so a crashed resume never blocks the next one. The
    lock file lives in the cache folder: it covers resumes on this machine, not other machines that share a
    tracking server. An unwritable cache folder means resuming without the lock.
    """
    import fcntl

    from bertpooled.data.imdb import cache_dir

    folder = cache_dir() / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The open handle is the lock: returned to the caller, who holds it for the run and closes it.
        handle = open(folder / f"resume-{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.lock", "a+")  # noqa: SIM115
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BertpooledError(
            f"run {run_id} is being resumed by another process on this machine: wait for it to end, or stop it"
        ) from None
    return handle


def prepare_resume(
    run_id: str, requested: dict[str, object] | None, allow_code_change: bool = False, take_over: bool = False
) -> tuple[Config, Resume]:
    """The run's own config (checked against any options given now), its checkpoint and its code, before anything runs.

    Code that differs from the run's (commit, uncommitted changes, installed version) is refused unless
    `allow_code_change`, which records the difference on the run instead. A run that a live process drives (here
    or on another machine: see bertpooled.tracking.ownership) is refused, unless `take_over`; from here on this
    process drives it, its heartbeat kept fresh until `Resume.release`.
    """
    check_tracking_reachable()  # seconds, not minutes of MLflow's retries against a dead or hanging server
    lock = claim_run(run_id)
    try:
        config, resume = _prepare_resume(run_id, requested, allow_code_change)
        ownership.claim(run_id, "run", take_over=take_over)  # the last step: nothing after it can fail
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    resume.lock = lock
    return config, resume


def _prepare_resume(run_id: str, requested: dict[str, object] | None, allow_code_change: bool) -> tuple[Config, Resume]:
    from bertpooled.config import load_config, read_yaml, resolve_config_path

    with tempfile.TemporaryDirectory() as tmp:
        params, digest, tags, folder = run_to_resume(run_id, Path(tmp))
        # Runs logged before these fields existed trained nn.LSTM's two bias vectors on the word table.
        params = {"lstm_bias": "torch", "features": "embeddings", **params}
        config = load_config(None, params)
        # Verified against the run being resumed, whatever its tags say (a copied checkpoint is another run's).
        state = checkpoint.load(folder, tags.get(CHECKPOINT_SHA256_TAG), checkpoint.identity(run_id, config.to_dict()))
    if requested:
        # Options given now are compared one by one with the run's own; only the data's location may change
        # (its content is checked against the run's digest before training).
        file = requested.pop("config", None)
        given = {**(read_yaml(resolve_config_path(file)) if file else {}), **requested}
        wanted = load_config(None, {**config.to_dict(), **given}).to_dict()
        config.data = wanted["data"]
        differs = [f"{k}={v!r} there, {wanted[k]!r} now" for k, v in config.to_dict().items() if wanted[k] != v]
        if differs:
            raise BertpooledError(
                f"run {run_id} had another config ({'; '.join(differs[:3])}): resume it as it was, without those "
                "options"
            )
    return config, Resume(run_id, digest, state, _code_change(run_id, allow_code_change))


def _code_change(run_id: str, allow: bool) -> str:
    then, now = tracking.logged_code(run_id), tracking.code_provenance()
    differs = [
        f"{k} {then[k].lower() or '-'} -> {now[k].lower() or '-'}"
        for k in then
        if k in now and then[k].lower() != now[k].lower()
    ]
    if not differs:
        return ""
    if not allow:
        raise BertpooledError(
            f"run {run_id} was trained by other code ({'; '.join(differs[:2])}): resume it with the code it started "
            "with, or pass --allow-code-change to continue anyway and record the change on the run"
        )
    return "; ".join(differs)


def run_or_resume(config: Config, resume_run_id: str | None, **kwargs) -> Outcome:
    """`run_experiment` for a sweep's child: a new run, or its earlier run continued from that run's checkpoint."""
    if not resume_run_id:
        return run_experiment(config, **kwargs)
    resumed_config, target = prepare_resume(resume_run_id, None)
    try:
        return run_experiment(resumed_config, resume=target, **kwargs)
    finally:
        target.release()
