"""A tuning study in the tracking store: its parent run, one child run per trial (state as Optuna ends it), the
best trial's config and the study's plots; and where the study's own Optuna storage lives beside the store."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow.tracking import MlflowClient

from bertpooled.config.files import MAX_CONFIG_BYTES
from bertpooled.contract import (
    ERROR_TAG,
    FAILED,
    FINISHED,
    KILLED,
    KIND_TAG,
    KIND_TRIAL,
    KIND_TUNE,
    NOTE_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    TUNE_EXPERIMENT,
    TUNE_STATE_TAG,
)
from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.tracking import ui_view
from bertpooled.tracking.runs import end_run, ending, ensure_view, get_run_or_error, ui_base

OPTUNA_FILE = "optuna.db"
# Optuna keeps its own alembic_version table: in the tracking store's PostgreSQL database it would meet
# MLflow's, so the study's tables live in a schema of their own there.
PG_SCHEMA = "bertpooled_optuna"


def study_storage(storage: str | None = None) -> tuple[str, dict]:
    """(URL, engine kwargs) of the Optuna storage: `storage` if given, else beside the tracking store: an SQLite
    file next to an SQLite store or a local ./mlruns, the same PostgreSQL (schema bertpooled_optuna) as a
    PostgreSQL store; a tracking server over HTTP needs `storage` (its database is not reachable from here)."""
    uri = storage or mlflow.get_tracking_uri()
    scheme = urlsplit(uri).scheme.split("+")[0]
    if storage is not None and scheme != "postgresql":
        return storage, {}
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not path or path == ":memory:":
            raise BertpooledError(
                "the tracking store is an in-memory SQLite database: pass --storage sqlite:///optuna.db"
            )
        return f"sqlite:///{Path(path).expanduser().resolve().parent / OPTUNA_FILE}", {}
    if scheme in ("", "file"):
        folder = Path(uri.removeprefix("file://") if scheme else uri).expanduser().resolve()
        return f"sqlite:///{folder.parent / OPTUNA_FILE}", {}
    if scheme == "postgresql":
        _ensure_schema(uri)
        return uri, {"connect_args": {"options": f"-csearch_path={PG_SCHEMA}"}}
    raise BertpooledError(
        f"the tracking store {redact_uri(uri)} is a server: pass --storage with a database URL every worker reaches "
        "(sqlite:///optuna.db on one machine, the team's postgresql://... otherwise)"
    )


def _ensure_schema(uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
    finally:
        engine.dispose()


def download_config(uri: str) -> Path:
    """A config file logged with a run, `runs:/<run id>/<path>` (what `bertpooled tune` prints for a study's best
    config), downloaded to a folder of this process's; the YAML is then read by `config.files.read_yaml`, with its
    bounds. Checked first: the run exists, the path is a file, and it is no larger than a config may be."""
    run_id, _, path = uri.removeprefix("runs:/").strip("/").partition("/")
    if not run_id or not path:
        raise BertpooledError(f"--config {uri}: a run's config file is runs:/<run id>/<path>, e.g. best_config.yaml")
    run = get_run_or_error(
        run_id, "--config " + uri + ": no run {run_id} in {store}: set MLFLOW_TRACKING_URI to its store"
    )
    client = MlflowClient()
    folder = path.rpartition("/")[0]
    found = {info.path: info for info in client.list_artifacts(run.info.run_id, folder or None)}.get(path)
    if found is None or found.is_dir:
        raise BertpooledError(f"--config {uri}: run {run_id} has no file {path}: pass the URI bertpooled tune printed")
    if (found.file_size or 0) > MAX_CONFIG_BYTES:
        raise BertpooledError(
            f"--config {uri} is over {MAX_CONFIG_BYTES // 1024} KiB: a config is a few key: value lines"
        )
    target = tempfile.mkdtemp(prefix="bertpooled-config-")
    atexit.register(shutil.rmtree, target, True)  # kept while this process runs: a sweep reads it per child
    return Path(client.download_artifacts(run.info.run_id, path, target))


def trials_link(experiment_id: str, study: str, searched: list[str]) -> str:
    """The MLflow UI link to the study's tuning view (its trials as rows, best val/accuracy first; see
    `ui_view.tuning_view_state`), the view stored first; the plain runs page when the store refuses the tag."""
    link = f"{ui_base()}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    try:
        key = ensure_view(experiment_id, ui_view.tuning_view_state(study, searched), "tune")
    except mlflow.exceptions.MlflowException:
        return link  # a link without the view is worth less than the study: it never fails the study
    return f"{link}&{ui_view.SHARE_URL_PARAM}={key}"


def use_experiment(name: str | None) -> str:
    """The experiment a new study's runs go to (created when missing): `name`, else bertpooled-tuning."""
    return mlflow.set_experiment(name or TUNE_EXPERIMENT).experiment_id


def find_study_parent(run_id: str) -> str:
    """The experiment id of an earlier study's parent run, or a one-line error when it is gone."""
    run = get_run_or_error(
        run_id,
        "the study's parent run {run_id!r} is not in {store}: resume against the tracking "
        "store the study started in, or start a new study with another --study name",
    )
    if run.info.lifecycle_stage == "deleted":
        raise BertpooledError(
            f"the study's parent run {run_id} is deleted: restore it (mlflow runs restore) or start a new study"
        )
    return run.info.experiment_id


@contextmanager
def study_run(
    parent_id: str | None, experiment_id: str, name: str, tags: dict[str, str], launcher_id: str | None = None
) -> Iterator[str]:
    """A study's parent run, new or resumed (its id is yielded), active for the block; it ends as every run here
    does (`runs.ending`). `launcher_id`: the run `mlflow run -e tune` made, which the study nests under."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # start_run would otherwise continue the launcher's run
    mlflow.set_experiment(experiment_id=experiment_id)
    extra = {PARENT_RUN_TAG: launcher_id} if launcher_id and not parent_id else {}
    run = mlflow.start_run(
        run_id=parent_id,
        run_name=None if parent_id else name,
        tags={KIND_TAG: KIND_TUNE, RUN_NAME_TAG: name, **tags, **extra},
    )
    with ending(run.info.run_id):
        yield run.info.run_id


@contextmanager
def trial_run(
    parent_id: str, name: str, tags: dict[str, str], description: str, pruned: tuple[type[BaseException], ...]
) -> Iterator[mlflow.ActiveRun]:
    """One trial as a child run of the study's parent (yielded), ending as its Optuna trial does:
    COMPLETE = FINISHED; PRUNED = KILLED, renamed `<name>-pruned`, the reason as its note; FAIL = FAILED (or
    KILLED on Ctrl-C) with the error as tag `error`. Tag `tune/state` holds Optuna's name for the state."""
    experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    run = mlflow.start_run(run_name=name, experiment_id=experiment_id, nested=True, parent_run_id=parent_id)
    run_id = run.info.run_id
    mlflow.set_tags(
        {KIND_TAG: KIND_TRIAL, RUN_NAME_TAG: name, TUNE_STATE_TAG: "RUNNING", NOTE_TAG: description, **tags}
    )
    try:
        yield run
    except pruned as exc:
        try:
            mlflow.set_tags(
                {TUNE_STATE_TAG: "PRUNED", RUN_NAME_TAG: f"{name}-pruned", NOTE_TAG: f"{description}; {exc}"}
            )
            mlflow.end_run(KILLED)
        except Exception:
            end_run(run_id, KILLED, str(exc))
        raise
    except KeyboardInterrupt:
        _set_state(run_id, "FAIL")
        end_run(run_id, KILLED, "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as exc:
        _set_state(run_id, "FAIL")
        end_run(run_id, FAILED, ((str(exc).splitlines() or [""])[0] or type(exc).__name__)[:5000])
        raise
    else:
        mlflow.set_tag(TUNE_STATE_TAG, "COMPLETE")
        mlflow.end_run(FINISHED)


def _set_state(run_id: str, state: str) -> None:
    with suppress(Exception):
        MlflowClient().set_tag(run_id, TUNE_STATE_TAG, state)


def end_orphaned_trials(run_ids: list[str]) -> list[str]:
    """End FAILED the trial runs still RUNNING whose trial Optuna has already failed (a worker killed outright,
    its trial failed by Optuna's heartbeat check): returns the ids ended."""
    client, ended = MlflowClient(), []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            continue
        if run.info.status == "RUNNING":
            client.set_tag(run_id, TUNE_STATE_TAG, "FAIL")
            client.set_tag(run_id, ERROR_TAG, "its worker stopped without ending it (the study failed the trial)")
            client.set_terminated(run_id, FAILED)
            ended.append(run_id)
    return ended


def log_params(params: dict[str, object]) -> None:
    mlflow.log_params(params)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def parent_params(run_id: str) -> dict[str, str]:
    return dict(MlflowClient().get_run(run_id).data.params)
