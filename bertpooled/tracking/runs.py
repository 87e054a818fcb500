"""Everything MLflow: the run's lifecycle, names and tags, params, metrics, datasets, predictions and the model.

Training code calls this module at its edges (start, each finished epoch, the end). Only tracking/ and serving/
import mlflow at run time (tests/test_layering.py holds that rule).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bertpooled.contract import (
    CHECKPOINT_EPOCH_TAG,
    CONFIG_ARTIFACT,
    CONFIG_PARAM_PREFIX,
    DEFAULT_EXPERIMENT,
    ERROR_TAG,
    FAILED,
    FINISHED,
    KILLED,
    KIND_TAG,
    KIND_TRAIN,
    NOTE_TAG,
    PREDICTIONS_PATH,
    RUN_NAME_TAG,
)
from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.tracking import deadlines, ownership, ui_view


def move_uri_credentials(uri: str | None = None) -> str | None:
    """Take `user:password@` out of an http(s) tracking URI before MLflow reads it; returns the URI without them.

    MLflow prints its tracking URI in lines of its own (`View run ... at: <uri>`), which this project cannot
    redact, so the credentials go where MLflow's client reads them for HTTP basic auth instead:
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (values already set there win). With no `uri`,
    MLFLOW_TRACKING_URI itself is rewritten. Database URIs keep theirs (the driver needs them) and are
    only ever shown through `redact_uri`.
    """
    from_env = uri is None
    uri = os.environ.get("MLFLOW_TRACKING_URI") if from_env else uri
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not (parts.username or parts.password):
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    clean = redact_uri(uri)
    if from_env:
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


def check_experiment_name(name: str | None = None, option: str = "--experiment") -> None:
    """Refuse, before any work, an experiment name MLflow would refuse only when the run is created: the name
    `use_experiment` would pick (`name`, else MLFLOW_EXPERIMENT_NAME) past MLflow's limit, or blank."""
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from bertpooled.errors import short_text

    chosen = name if name is not None else os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if chosen is None:
        return
    where = option if name is not None else "MLFLOW_EXPERIMENT_NAME"
    if len(chosen) > MAX_EXPERIMENT_NAME_LENGTH:
        raise BertpooledError(
            f"{where} {short_text(chosen, 40)} is too long: MLflow takes at most "
            f"{MAX_EXPERIMENT_NAME_LENGTH} characters"
        )
    if name is not None and not chosen.strip():
        raise BertpooledError(f"{where} is blank: pass a name, or leave it out for {DEFAULT_EXPERIMENT}")


def use_experiment(name: str | None = None) -> str | None:
    """Make the experiment new runs go to active (created when missing) and return its id: `name`, else MLflow's
    own variables (the name wins over the id, as in MLflow), else `bertpooled`; None under `mlflow run`, whose run
    already has its experiment.

    The choice is made explicitly each time: MLflow otherwise prefers an experiment remembered earlier in
    the process, which may belong to another tracking store. The one place an experiment is chosen.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return None
    env_name, env_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not name and env_id and not env_name:
        return mlflow.set_experiment(experiment_id=env_id).experiment_id
    return mlflow.set_experiment(name or env_name or DEFAULT_EXPERIMENT).experiment_id


def run_name(mode: str, model: str, seed: int, differs: dict | None = None) -> str:
    """`pool-minilm-s0`: mode, backbone (last path part of a folder or hub name), seed; then what sets the run
    apart from the default protocol in `differs` (see `protocol_tag`): `-e2` epochs, `-n1000` training reviews,
    `-t500` test reviews, `-tuned` a searched setting (lr, units, batch, ...), `-custom` any other, so one name
    means one protocol."""
    short = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.rstrip("/")).name) or "model"
    differs = differs or {}
    marks = [f"{mark}{differs[field]}" for field, mark in NAME_MARKS if field in differs]
    rest = set(differs) - {field for field, _ in NAME_MARKS}
    if rest & TUNED_FIELDS:
        marks.append("tuned")
    elif rest:
        marks.append("custom")
    return "-".join([f"{mode}-{short}-s{seed}", *marks])


#: The protocol's fields a run name spells out when they differ from the default.
NAME_MARKS = (("epochs", "e"), ("max_train_examples", "n"), ("max_test_examples", "t"))
#: Training settings a study searches: a run that changes one is `-tuned`; any other change is `-custom`.
TUNED_FIELDS = frozenset({"lr", "lstm_units", "batch_size", "adam_eps", "backbone_lr"})


def protocol_tag(differs: dict) -> str:
    """The `protocol` tag (a column of the runs view): `default`, or each setting that differs, `epochs=2 ...`."""
    return " ".join(f"{field}={value}" for field, value in differs.items()) or "default"


@contextmanager
def training_run(
    name: str,
    tags: dict[str, str],
    description: str,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, continue) a run; an error ends it FAILED with the reason as tag `error`.

    Ctrl-C ends it KILLED. Whatever was logged before the failure stays. With `parent_run_id` (a sweep's)
    the run is a new child of that run, in its experiment, nested in MLflow's UI.
    """
    if resume_run_id:
        # The tags first, while the run is not RUNNING: whoever watches for RUNNING runs (a Ray driver's progress
        # lines) then never sees it without this attempt's tags (resumed_after_epoch, the node).
        MlflowClient().log_batch(resume_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        # The same run, RUNNING again; nested when a sweep's parent run is active in this process.
        run = mlflow.start_run(
            run_id=resume_run_id, nested=mlflow.active_run() is not None, log_system_metrics=system_metrics
        )
    elif parent_run_id:
        experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        run = mlflow.start_run(
            run_name=name,
            experiment_id=experiment_id,
            nested=True,
            parent_run_id=parent_run_id,
            log_system_metrics=system_metrics,
        )
    else:
        use_experiment()
        run = mlflow.start_run(run_name=name, log_system_metrics=system_metrics)
    ownership.keep_alive(run.info.run_id)  # this process drives the run: a heartbeat tells it from a dead one
    try:
        with ending(run.info.run_id):
            # Under `mlflow run` the run already exists with a random name: the tags below rename and describe it.
            mlflow.set_tags({RUN_NAME_TAG: name, KIND_TAG: KIND_TRAIN, **tags})
            if description:
                mlflow.set_tag(NOTE_TAG, description)
            yield run
            if resume_run_id:
                _clear_tag(run.info.run_id, ERROR_TAG)  # the interruption it recorded is over: the run FINISHED
    finally:
        ownership.let_go(run.info.run_id)


@contextmanager
def ending(run_id: str, where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """How every run this package starts ends (training, sweep parent, comparison): FINISHED when the block
    completes, KILLED on Ctrl-C or SIGTERM, FAILED on an error with its first line as tag `error`; `where()`
    names the step that stopped (a sweep's child). Whatever was logged before the failure stays."""
    try:
        yield
    except KeyboardInterrupt:
        at = where()
        end_run(run_id, KILLED, f"interrupted (Ctrl-C or SIGTERM){f' at {at}' if at else ''}")
        raise
    except BaseException as exc:
        message = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        at = where()
        end_run(run_id, FAILED, (f"{at}: {message}" if at else message)[:5000])
        raise
    else:
        ownership.end_run_held(run_id, FINISHED)  # only while this process holds it (else LostRun, nothing written)


def _clear_tag(run_id: str, key: str) -> None:
    client = MlflowClient()
    if key in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, key)


def end_run(run_id: str, status: str, reason: str) -> None:
    """End a failing run, whatever state the failure left MLflow's client in: the interrupt may have landed inside
    an MLflow call (a half-done database transaction, say); the original exception is what the caller re-raises,
    so a second failure here must not replace it, and a fresh client gets a final try at the status, so that no
    run is left RUNNING. A run this process lost to another owner is not written to."""
    if ownership.lost(run_id):
        return ownership.forget_active_run(run_id)
    with deadlines.hurried():  # a store that stopped answering must not hold up the exit for minutes
        try:
            mlflow.set_tag(ERROR_TAG, reason)
            mlflow.end_run(status)
        except Exception:
            try:
                MlflowClient().set_terminated(run_id, status)
            except Exception as exc:
                say_not_ended(run_id, status, exc)
            with suppress(Exception):
                mlflow.end_run(status)  # clear the fluent API's active run in this process


def say_not_ended(run_id: str, status: str, error: BaseException) -> None:
    """One line on stderr when a run could not be ended (the store is gone or stopped answering): it stays RUNNING,
    and the command that ends it once nothing drives it. Never raises: the caller is on its way out."""
    import sys

    first = (str(error).splitlines() or [type(error).__name__])[0][:300]
    with suppress(Exception):
        print(
            f"warning: run {run_id} could not be marked {status} ({type(error).__name__}: {first}); it stays RUNNING "
            "until `bertpooled runs end-abandoned --apply` ends it",
            file=sys.stderr,
            flush=True,
        )


def log_config(config_dict: dict, extra_params: dict[str, object]) -> None:
    """The resolved config as `config/<field>` params (plain `-P` names belong to `mlflow run`) and as YAML."""
    import yaml

    params = {f"{CONFIG_PARAM_PREFIX}{k}": ("" if v is None else v) for k, v in config_dict.items()}
    params.update(extra_params)
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(config_dict, sort_keys=False), CONFIG_ARTIFACT)


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    ownership.hold_active()
    mlflow.log_metrics(metrics, step=epoch)


def _shown(key: str, value: float) -> float:
    """A final time to 4 significant digits (103.5 s, 0.1823 s): MLflow's runs table prints the stored value as
    is, 13 digits of timer noise; 4 digits is well inside a phase's run-to-run spread."""
    return float(f"{value:.4g}") if key.startswith("time/") else value


def log_metrics(metrics: dict[str, float], step: int | None = None, model_uri: str | None = None) -> None:
    """Final metrics; `step` = the last epoch keeps them the latest values beside the per-epoch ones.

    With the logged model's URI (MLflow 3's `models:/<model_id>`) they are also the model's metrics, and
    the test/* ones are tied to the run's test dataset: the model's page then lists them and the dataset.
    """
    values = {k: _shown(k, float(v)) for k, v in metrics.items()}
    model_id = model_uri.removeprefix("models:/") if model_uri and model_uri.startswith("models:/") else None
    if model_id is None:
        mlflow.log_metrics(values, step=step)
        return
    active = mlflow.active_run()
    assert active is not None, "metrics are logged inside a run"
    run = mlflow.get_run(active.info.run_id)
    assert run.inputs is not None, "a run read back from the store has its inputs"
    test_set = next(
        (
            i.dataset
            for i in run.inputs.dataset_inputs
            if any(t.key == MLFLOW_DATASET_CONTEXT and t.value == "testing" for t in i.tags)
        ),
        None,
    )
    evaluation = {k: v for k, v in values.items() if k.startswith("test/")}
    if evaluation:
        mlflow.log_metrics(evaluation, step=step, model_id=model_id, dataset=test_set)
    rest = {k: v for k, v in values.items() if k not in evaluation}
    if rest:
        mlflow.log_metrics(rest, step=step, model_id=model_id)


def log_datasets(train: pd.DataFrame, test: pd.DataFrame | None, source: str, digest: str, **more: pd.DataFrame | None):
    """Training, validation, test and unlabelled (distillation) subsets (those given) as MLflow dataset inputs
    (schema, profile, digest; not the data itself)."""
    import hashlib

    from mlflow.data.pandas_dataset import from_pandas

    frames = {"train": train, "val": more.get("validation"), "test": test, "unlabelled": more.get("unlabelled")}
    contexts = {"train": "training", "val": "validation", "test": "testing", "unlabelled": "distillation"}
    for short, frame in ((k, v) for k, v in frames.items() if v is not None):
        name, context = f"imdb-{short}", contexts[short]
        # The subset's own digest, from the data's digest and its rows' ids: MLflow's default hashes the
        # whole frame again (and warns about pandas 4 on the way).
        ids = "\n".join(map(str, frame["id"])) if "id" in frame else str(len(frame))
        subset = hashlib.sha256(f"{digest}\n{name}\n{ids}".encode()).hexdigest()[:16]
        with warnings.catch_warnings():
            # A local path matches MLflow's local source type twice over; either reading is the same.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            targets = None if context == "distillation" else "label"  # its rows have none (the teacher labels them)
            dataset = from_pandas(frame, source=redact_uri(source), name=name, targets=targets, digest=subset)
            # The schema is inferred lazily, on logging: inferred here, the hint about integer columns that
            # may hold missing values (model inputs) is left out for a record of labels that never miss.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            _ = dataset.schema
        _log_input_racing(dataset, context, {"imdb_digest": digest[:16]})


def _log_input_racing(dataset, context: str, tags: dict[str, str], attempts: int = 5) -> None:
    """`mlflow.log_input`, tolerant of runs logging the same dataset at the same moment.

    MLflow's stores look a dataset up, then insert it: two runs of one sweep logging the same subset at
    once can both miss it, and the second insert breaks the unique key (seen with `sweep --parallel`).
    The dataset exists by then, so the same call again links it to this run.
    """
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except mlflow.exceptions.MlflowException as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or ("unique constraint" not in text and "duplicate key" not in text):
                raise
            time.sleep(0.1 * (attempt + 1))


def log_predictions(ids: list[str], labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Per-example test predictions, which the paired significance tests of compare-runs read."""
    frame = pd.DataFrame({"id": ids, "label": labels.astype(int), "probability": probabilities})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS_PATH).name
        frame.to_csv(path, index=False, float_format="%.8g")
        mlflow.log_artifact(str(path), artifact_path=str(Path(PREDICTIONS_PATH).parent))


def log_artifacts(folder: str | Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def ui_links(run: mlflow.ActiveRun) -> tuple[str, str]:
    """(runs table link, run link) in MLflow's UI, both in its "Model training" pages.

    The runs link opens the experiment's training view (see `bertpooled.tracking.ui_view`): training runs only,
    mode/backbone/seed/accuracy/time/head-parameter columns, learning curves as the first charts.
    """
    base = ui_base()
    exp = run.info.experiment_id
    query = "workflowType=machine_learning"
    for _ in range(2):
        try:
            key = ensure_view(exp)
            query += f"&{ui_view.SHARE_URL_PARAM}={key}"
            break
        except Exception:
            # A link without the view is worth less than the run: it never fails the run that computed it.
            time.sleep(0.2)
    return (
        f"{base}/#/experiments/{exp}/runs?{query}",
        f"{base}/#/experiments/{exp}/runs/{run.info.run_id}?workflowType=machine_learning",
    )


def ui_base() -> str:
    """The UI's address: the tracking server itself, else where `mlflow ui` listens by default."""
    uri = mlflow.get_tracking_uri()
    return redact_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def tracking_uri() -> str:
    """The tracking store in use, credentials removed: MLflow's default is ./mlflow.db of the folder it started
    in, so loading `runs:/...` elsewhere needs this in MLFLOW_TRACKING_URI."""
    return redact_uri(mlflow.get_tracking_uri())


def ui_hint() -> str:
    """How to start a UI that shows the store the links point into (MLFLOW_TRACKING_URI honoured)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return "served by the tracking server"
    return f"start the UI with `mlflow ui --backend-store-uri {redact_uri(uri)}`"


def ensure_view(experiment_id: str, state: dict | None = None, kind: str = "train") -> str:
    """Store a view (`ui_view`; the training view unless another `state` is given) as the experiment tag MLflow's
    UI reads; its share key for the URL. Also marks the experiment as model development (unless something else
    already said what it is), so MLflow 3 opens its "Model training" pages rather than the GenAI ones.
    """
    client = MlflowClient()
    key, tag, value = ui_view.view_tag(state or ui_view.training_view_state(), kind)
    tags = client.get_experiment(experiment_id).tags
    if tags.get(tag) != value:
        client.set_experiment_tag(experiment_id, tag, value)
    if ui_view.EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, ui_view.EXPERIMENT_KIND_TAG, ui_view.EXPERIMENT_KIND)
    return key


def get_run_or_error(run_id: str, missing: str):
    """The run `run_id`, or a one-line error: `missing` with {run_id} and {store} (the store's URI, redacted)."""
    client = MlflowClient()
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise BertpooledError(missing.format(run_id=run_id, store=redact_uri(client.tracking_uri))) from None


def last_run() -> tuple[str | None, bool]:
    """(the id of the run this process last started, whether it has a checkpoint); (None, False) when it started
    none. A store that cannot say counts as checkpointed: the id is still worth printing with --resume."""
    last = mlflow.last_active_run()
    if last is None:
        return None, False
    try:
        return last.info.run_id, CHECKPOINT_EPOCH_TAG in MlflowClient().get_run(last.info.run_id).data.tags
    except Exception:
        return last.info.run_id, True


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_params(params: dict[str, object]) -> None:
    mlflow.log_params(params)
