"""One tracked experiment: validate, read data, then inside an MLflow run prepare, train, evaluate and log."""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bertpooled.run import checkpoint, cost, reference, train
from bertpooled.tracking import runs as tracking
from bertpooled.config import Config
from bertpooled.errors import BertpooledError
from bertpooled.run.shared import Shared


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
) -> Outcome:
    """Run `config` end to end as one MLflow run and return where it landed.

    Everything a user can get wrong (config, backbone, data) fails before the run is created, except
    under `mlflow run`, which creates the run itself: there it ends FAILED with the reason as a tag.
    A sweep passes `shared` (inputs an earlier child already read, loaded or tokenized: the same values,
    not read again), `parent_run_id` (the run is nested under it) and `tags` (added to the run's own).
    """
    started = time.perf_counter()
    tracking.check_tracking_reachable()
    info = train.check(config)
    train.configure_threads(config)
    phases = train.Phases()
    imdb, train_split, test_split = (shared.read_data if shared else train.read_data)(config, phases, progress=progress)
    log(f"data: {len(train_split):,} train / {len(test_split):,} test reviews from {tracking.redact_uri(imdb.source)}")
    if resume and resume.data_digest != imdb.digest:
        raise BertpooledError(
            f"run {resume.run_id} was trained on other data (digest {resume.data_digest[:12]}, this is {imdb.digest[:12]}): "
            "point --data or BERTPOOLED_IMDB at the same IMDB copy"
        )

    code = tracking.code_provenance()
    name = tracking.run_name(config.variant, config.model, config.seed)
    tags = {"mode": config.mode, "backbone": config.model, "pool": config.pool, **(tags or {})}
    if config.mode != "reference":
        tags["features"] = config.features
    if config.features == "encoder":
        tags.update({"pool_at": config.pool_at, "finetune": str(config.finetune).lower(), "variant": config.variant})
    description = config.description or (
        reference.describe(config) if config.mode == "reference" else
        f"IMDB sentiment, {config.mode} mode ({config.pool} pooling) on {config.model} "
        f"{'embedding-layer outputs' if config.features == 'embedding_layer' else 'word embeddings'}, "
        f"LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
        if config.features != "encoder" else
        f"IMDB sentiment from {config.model} encoder hidden states ({'fine-tuned' if config.finetune else 'frozen'}), "
        f"{config.pool} pooling at {config.pool_at}, LSTM({config.lstm_units}), {config.epochs} epochs, seed {config.seed}"
    )
    with tracking.training_run(name, tags, description, parent_run_id=parent_run_id,
                               resume_run_id=resume.run_id if resume else None,
                               system_metrics=config.system_metrics) as run:
        if resume:
            log(f"resuming run {resume.run_id} after epoch {resume.state.epoch}")
            tracking.set_tags({"resumed_after_epoch": str(resume.state.epoch)})
            orphans = tracking.fail_unfinished_models(resume.run_id)
            if orphans:
                log(f"marked FAILED the model(s) an interrupted model logging left PENDING: {', '.join(orphans)}")
            if resume.code_change:
                # Params cannot change: the run keeps the code it started with, and says what resumed it.
                tracking.set_tags({"resume/code_change": resume.code_change})
        else:
            _log_inputs(config, info, imdb, train_split, test_split, code)
        if config.mode == "reference":
            config.to_dict(),
            result = reference.fit_and_evaluate(
                config, info, imdb, train_split, test_split, phases, shared=shared, progress=progress
            )
            tracking.log_predictions(test_split.ids, test_split.labels, result.probabilities)
            with phases.timed("log_model"):
                model_uri = reference.log_model(result.model)
        else:
            prepare = shared.prepare if shared else train.prepare
            prepared = prepare(config, info, imdb, train_split, test_split, phases, progress=progress)

            def on_epoch(stats: train.EpochStats) -> None:
                metrics = {"train/loss": stats.loss, "train/accuracy": stats.accuracy, "time/epoch_s": stats.seconds}
                if stats.test_accuracy is not None:
                    metrics["test/accuracy"] = stats.test_accuracy
                tracking.log_epoch(stats.epoch, metrics)
                extra = f" test_acc={stats.test_accuracy:.4f}" if stats.test_accuracy is not None else ""
                log(f"epoch {stats.epoch}/{config.epochs}: loss={stats.loss:.4f} acc={stats.accuracy:.4f}{extra} ({stats.seconds:.1f}s)")

            checkpoints = checkpoint.Checkpointer(_save_checkpoint, resume.state if resume else None)
            result = train.train_and_evaluate(prepared, on_epoch=on_epoch, progress=progress, checkpoints=checkpoints)
            tracking.log_predictions(test_split.ids, test_split.labels, result.probabilities)
            model_config = {
                "pool": config.pool,
                "padding": config.padding,
                "lstm_units": config.lstm_units,
                "max_len": config.max_len,
                "backbone": config.model,
                "features": config.features,
                "pool_at": config.pool_at,
                "lstm_bias": config.lstm_bias,
            }
            if config.features == "embedding_layer":
                model_config["layer_norm_eps"] = result.model.layer.eps
            if config.features == "encoder":
                # The backbone's architecture as JSON: serving rebuilds it and loads the weights from safetensors.
                model_config["backbone_config"] = result.model.encoder.model.config.to_dict()
            with phases.timed("log_model"):
                model_uri = tracking.log_model(result.model.state_dict(), model_config, prepared.tokenizer)
        # time/total_s covers everything this process did for the run, model logging included.
        phases.seconds["total"] = time.perf_counter() - started
        metrics = dict(result.metrics)
        metrics.update({f"time/{k}_s": v for k, v in phases.seconds.items()})
        tracking.log_metrics(metrics, step=config.epochs, model_uri=model_uri)
        runs_link, run_link = tracking.ui_links(run)
        return Outcome(run.info.run_id, run.info.experiment_id, metrics, runs_link, run_link, model_uri)


def _log_inputs(config: Config, info, imdb, train_split, test_split, code: dict[str, str]) -> None:
    """What a new run logs before any work: the resolved config, provenance and the datasets."""
    # config.yaml and config/data name the data actually read (e.g. from BERTPOOLED_IMDB), not the unset field;
    # a download keeps it unset (its URL is data/source), so resuming downloads again rather than opening a URL.
    resolved = config.to_dict()
    if resolved["data"] is None and Path(imdb.source).exists():
        resolved["data"] = tracking.redact_uri(imdb.source)
    tracking.log_config(
        resolved,
        {
            **code,
            "data/digest": imdb.digest,
            "data/source": tracking.redact_uri(imdb.source),
            "backbone/path": info.path,
            "backbone/hidden_size": info.hidden_size,
            "runtime/torch": torch.__version__,
            "runtime/threads": torch.get_num_threads(),
            "runtime/device": str(train.resolve_device(config.device)),
            "runtime/precision": train.resolve_precision(config.precision, train.resolve_device(config.device)),
            **cost.runtime_params(train.resolve_device(config.device)),
            "runtime/machine": platform.machine(),
        },
    )
    tracking.log_datasets(train_split.to_frame(), test_split.to_frame(), imdb.source, imdb.digest)


def _save_checkpoint(epoch: int, model, optimizer, order, history) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sha256 = checkpoint.save(Path(tmp), epoch, model, optimizer, order, history)
        tracking.log_checkpoint(Path(tmp), epoch, sha256)


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
        handle = open(folder / f"resume-{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.lock", "a+")
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


def prepare_resume(run_id: str, requested: dict[str, object] | None, allow_code_change: bool = False) -> tuple[Config, Resume]:
    """The run's own config (checked against any options given now), its checkpoint and its code, before anything runs.

    Code that differs from the run's (commit, uncommitted changes, installed version) is refused unless
    `allow_code_change`, which records the difference on the run instead.
    """
    lock = claim_run(run_id)
    try:
        config, resume = _prepare_resume(run_id, requested, allow_code_change)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    resume.lock = lock
    return config, resume


def _prepare_resume(run_id: str, requested: dict[str, object] | None, allow_code_change: bool) -> tuple[Config, Resume]:
    from bertpooled.config import load_config, read_yaml, resolve_config_path

    with tempfile.TemporaryDirectory() as tmp:
        params, digest, tags, folder = tracking.run_to_resume(run_id, Path(tmp))
        state = checkpoint.load(folder, tags.get("checkpoint/sha256"))
    # Runs logged before these fields existed trained nn.LSTM's two bias vectors on the word table.
    params = {"lstm_bias": "torch", "features": "embeddings", **params}
    config = load_config(None, params)
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
                f"run {run_id} had another config ({'; '.join(differs[:3])}): resume it as it was, without those options"
            )
    return config, Resume(run_id, digest, state, _code_change(run_id, allow_code_change))


def _code_change(run_id: str, allow: bool) -> str:
    then, now = tracking.logged_code(run_id), tracking.code_provenance()
    differs = [f"{k} {then[k].lower() or '-'} -> {now[k].lower() or '-'}" for k in then
               if k in now and then[k].lower() != now[k].lower()]
    if not differs:
        return ""
    if not allow:
        raise BertpooledError(
            f"run {run_id} was trained by other code ({'; '.join(differs[:2])}): resume it with the code it started "
            "with, or pass --allow-code-change to continue anyway and record the change on the run"
        )
    return "; ".join(differs)
