"""One tracked experiment: validate, read data, then inside an MLflow run prepare, train, evaluate and log."""

from __future__ import annotations

import dataclasses
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bertpooled import budget, data
from bertpooled.config import Config
from bertpooled.contract import DATA_DIGEST_PARAM, PLOTS_DIR, PROTOCOL_TAG, RESUMED_TAG, time_metric
from bertpooled.errors import BertpooledError
from bertpooled.run import checkpoint, cost, prepare, runtime
from bertpooled.run import resume as resuming
from bertpooled.run.measure import EpochReport, Phases, Trained
from bertpooled.run.pipeline import Inputs, Pipeline
from bertpooled.run.shared import Shared
from bertpooled.run.sources import ROLES, fetch_sources, rows_digest, unlabelled_split
from bertpooled.tracking import runs as tracking
from bertpooled.tracking.probe import check_tracking_reachable
from bertpooled.tracking.provenance import code_provenance
from bertpooled.tracking.sink import Datasets, MlflowSink, Sink, TrainingStart


@dataclass(frozen=True)
class Outcome:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    runs_link: str
    run_link: str
    model_uri: str


# Settings that do not change what a run measures (the name and variant say mode, seed, backbone and pooling;
# where the data is read from, the machine's threads and device, how cost is sampled): no part of its protocol.
NOT_PROTOCOL = frozenset(
    {"mode", "seed", "model", "data", "pool", "pool_at", "device", "num_threads", "eval_batch_size"}
    | {"precompute_mb", "latency_texts", "throughput_batches", "description", "system_metrics", "precision"}
)


def protocol_differences(config: Config) -> dict[str, object]:
    """The settings of `config` that differ from the default protocol (the Config defaults, which are
    experiments/default.yaml's), in field order."""
    default = Config(mode=config.mode)
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(Config)
        if f.name not in NOT_PROTOCOL and getattr(config, f.name) != getattr(default, f.name)
    }


def run_experiment(
    config: Config,
    *,
    progress: bool | None = None,
    log=print,
    shared: Shared | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    resume: resuming.Resume | None = None,
    pipeline: Pipeline | None = None,
) -> Outcome:
    """Run `config` end to end as one MLflow run and return where it landed.

    Everything a user can get wrong (config, backbone, data) fails before the run is created, except
    under `mlflow run`, which creates the run itself: there it ends FAILED with the reason as a tag.
    A sweep passes `shared` (inputs an earlier child already read, loaded or tokenized: the same values,
    not read again), `parent_run_id` (the run is nested under it) and `tags` (added to the run's own); a seed
    group passes `pipeline` (one that hands back its seed's already-trained model: bertpooled.run.grouped).
    The orchestration of a run, read top to bottom: each step is one call.
    """
    started = time.perf_counter()
    check_tracking_reachable()
    if parent_run_id is None and resume is None:
        tracking.check_experiment_name()
    info = prepare.check(config)
    budget.check_memory(config, info.hidden_size, info.num_layers)  # before any run exists or data is read
    rt = runtime.Runtime.resolve(config).start()  # resolved once: everything below receives it
    inputs = read_inputs(config, info, rt, shared, resume, log, progress)
    pipeline = pipeline or pipeline_for(config)
    differs = protocol_differences(config)
    name = tracking.run_name(config.variant, config.model, config.seed, differs)
    tags = {"mode": config.mode, "backbone": config.model, "pool": config.pool, **pipeline.tags(config), **(tags or {})}
    tags.setdefault(PROTOCOL_TAG, tracking.protocol_tag(differs))
    if resume:
        tags[RESUMED_TAG] = str(resume.state.epoch)
    how = TrainingStart(
        name,
        tags,
        config.description or pipeline.describe(config),
        parent_run_id=parent_run_id,
        resume_run_id=resume.run_id if resume else None,
        system_metrics=config.system_metrics,
    )
    return run_scope(inputs, pipeline, MlflowSink(how), started=started, log=log, progress=progress, resume=resume)


def run_scope(
    inputs: Inputs,
    pipeline: Pipeline,
    sink: Sink,
    *,
    started: float,
    log=print,
    progress: bool | None = None,
    resume: resuming.Resume | None = None,
) -> Outcome:
    """The one path of every kind of run (a training run, a tuning trial, a seed group's child, the reference):
    inputs -> pipeline -> outcome, told to `sink` (start, inputs, each epoch, the outcome, the end).

    `started`: when the run's work began (`time/total_s` counts from there); `resume`: the interrupted run it
    continues (its inputs were logged then)."""
    config = inputs.config
    with sink.start() as run_id:
        if resume:
            resuming.record(resume, log)
        else:
            _log_inputs(sink, inputs)
        owner = checkpoint.identity(run_id, config.to_dict())
        checkpoints = checkpoint.Checkpointer.to_sink(sink, owner, resume.state if resume else None)
        on_epoch = EpochReport(sink, config.epochs, log)
        trained = pipeline.fit_and_evaluate(inputs, on_epoch=on_epoch, checkpoints=checkpoints, progress=progress)
        metrics, model_uri = _log_outcome(sink, pipeline, inputs, trained, started)
        runs_link, run_link = sink.links()
        return Outcome(run_id, sink.experiment_id, metrics, runs_link, run_link, model_uri)


def read_inputs(
    config: Config,
    info,
    rt: runtime.Runtime,
    shared: Shared | None,
    resume: resuming.Resume | None,
    log,
    progress: bool | None,
    test: bool = True,
) -> Inputs:
    """The data subsets a run trains and evaluates on (the validation split carved out), said in one line; a
    resumed run's data must be the data it was trained on. `test` False (a tuning trial): no test row is read."""
    phases = Phases()
    test_split: data.Split | None = None
    if test:
        imdb, train_split, test_split = (shared.read_data if shared else prepare.read_data)(
            config, phases, progress=progress
        )
    else:
        imdb, train_split = (shared.read_training if shared else prepare.read_training)(
            config, phases, progress=progress
        )
    train_split, val_split = prepare.split_validation(config, train_split)
    held = f" / {len(val_split):,} validation" if val_split is not None else ""
    source = tracking.redact_uri(imdb.source)
    tested = f" / {len(test_split):,} test" if test_split is not None else ""
    log(f"data: {len(train_split):,} train{held}{tested} reviews from {source}")
    if resume and resume.data_digest != imdb.digest:
        raise BertpooledError(
            f"run {resume.run_id} was trained on other data (digest {resume.data_digest[:12]}, this is "
            f"{imdb.digest[:12]}): point --data or BERTPOOLED_IMDB at the same IMDB copy"
        )
    return Inputs(
        config,
        info,
        imdb,
        train_split,
        test_split,
        phases,
        rt,
        shared,
        val=val_split,
        sources=fetch_sources(config),
    )


def _log_outcome(sink: Sink, pipeline: Pipeline, inputs: Inputs, trained: Trained, started: float):
    """After training: the test predictions, plots and the model (a run that read the test set), then the final
    metrics; (metrics, model URI)."""
    config, test, phases = inputs.config, inputs.test, inputs.phases
    model_uri = ""
    if test is not None:
        sink.predictions(test.ids, test.labels, trained.probabilities)
        _log_plots(sink, test.labels, trained.probabilities)
        with phases.timed("log_model"):
            model_uri = pipeline.log_model(config, trained)
    # time/total_s covers everything this process did for the run, model logging included (and a seed group's
    # share of training, done before the run started).
    phases.seconds["total"] = time.perf_counter() - started + trained.trained_ahead_s
    metrics = dict(trained.metrics)
    metrics.update({time_metric(k): v for k, v in phases.seconds.items()})
    sink.outcome(metrics, step=config.epochs, model_uri=model_uri)
    return metrics, model_uri


def pipeline_for(config: Config) -> Pipeline:
    """The pipeline that runs `config`: the reference yardstick for mode=reference, else the LSTM."""
    if config.mode == "reference":
        from bertpooled.run.reference import ReferencePipeline

        return ReferencePipeline()
    from bertpooled.run.pipeline import LSTMPipeline

    return LSTMPipeline()


def _log_inputs(sink: Sink, inputs: Inputs) -> None:
    """What a new run logs before any work: the resolved config, provenance and the datasets."""
    config, imdb, rt = inputs.config, inputs.imdb, inputs.rt
    unlabelled, source = unlabelled_split(config, imdb, inputs.train, inputs.val)
    about_unlabelled = (
        {"unlabelled/source": source, "unlabelled/digest": rows_digest(imdb, unlabelled.ids)} if unlabelled else {}
    )
    # config.yaml and config/data name the data actually read (e.g. from BERTPOOLED_IMDB), not the unset field;
    # a download keeps it unset (its URL is data/source), so resuming downloads again rather than opening a URL.
    resolved = config.to_dict()
    if resolved["data"] is None and Path(imdb.source).exists():
        resolved["data"] = tracking.redact_uri(imdb.source)
    params = {
        **code_provenance(),
        DATA_DIGEST_PARAM: imdb.digest,
        "data/source": tracking.redact_uri(imdb.source),
        "backbone/path": inputs.info.path,
        "backbone/hidden_size": inputs.info.hidden_size,
        "runtime/torch": torch.__version__,
        "runtime/threads": torch.get_num_threads(),
        "runtime/device": str(rt.device),
        "runtime/precision": rt.precision,
        **cost.runtime_params(rt.device),
        "runtime/machine": platform.machine(),
        # The chain of runs: which model this one started from and which taught it (URI, run, weights).
        **{k: v for option, source in (inputs.sources or {}).items() for k, v in source.params(ROLES[option]).items()},
        **about_unlabelled,
    }
    datasets = Datasets(
        imdb.source,
        imdb.digest,
        inputs.train.to_frame(),
        inputs.test.to_frame() if inputs.test is not None else None,
        inputs.val.to_frame() if inputs.val is not None else None,
        unlabelled.to_frame() if unlabelled is not None else None,
    )
    sink.inputs(resolved, params, datasets)


def _log_plots(sink: Sink, labels, probabilities) -> None:
    """Confusion matrix, ROC and precision-recall curves of the test predictions, as artifacts under plots/."""
    if len(set(labels.astype(int).tolist())) < 2:
        return  # ROC and PR curves need both classes among the labels
    from bertpooled.report.plots import classifier_plots

    with tempfile.TemporaryDirectory() as tmp:
        classifier_plots(labels, probabilities, tmp)
        sink.artifacts(Path(tmp), PLOTS_DIR)


def run_or_resume(config: Config, resume_run_id: str | None, **kwargs) -> Outcome:
    """`run_experiment` for a sweep's child: a new run, or its earlier run continued from that run's checkpoint."""
    if not resume_run_id:
        return run_experiment(config, **kwargs)
    resumed_config, target = resuming.prepare_resume(resume_run_id, None)
    try:
        return run_experiment(resumed_config, resume=target, **kwargs)
    finally:
        target.release()
