"""A sweep in the tracking store: its experiment, its parent run, and the child runs nested under it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from bertpooled.contract import (
    ERROR_TAG,
    KIND_SWEEP,
    KIND_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    SWEEP_KEY_TAG,
)
from bertpooled.errors import BertpooledError
from bertpooled.tracking import ownership
from bertpooled.tracking.runs import ending, get_run_or_error


def find_parent(run_id: str, from_mlflow_run: bool) -> Run:
    """The sweep parent `run_id` (or the run `mlflow run -e sweep` just created); one-line errors otherwise."""
    run = get_run_or_error(
        run_id,
        "unknown sweep parent run {run_id!r} at {store}: pass --resume-parent with the "
        "id a sweep printed, or leave it out to start a new sweep",
    )
    if run.info.lifecycle_stage == "deleted":
        raise BertpooledError(
            f"sweep parent run {run_id} is deleted: restore it (mlflow runs restore) or start a new sweep"
        )
    kind = run.data.tags.get(KIND_TAG)
    # A run `mlflow run -e sweep` just created has no kind yet; anything else must be a sweep parent.
    if kind != KIND_SWEEP and not (from_mlflow_run and kind is None):
        raise BertpooledError(
            f"run {run_id} is a {kind or 'plain'} run, not a sweep parent: pass --resume-parent with a sweep's id"
        )
    return run


def children(
    parent_id: str, experiment_id: str | None = None, *, key: str | None = None, running: bool = False
) -> list[Run]:
    """The parent's child runs (all pages), optionally only those of one grid cell or only those RUNNING."""
    if experiment_id is None:
        experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'"
    if key is not None:
        query += f" and tags.`{SWEEP_KEY_TAG}` = '{key}'"
    if running:
        query += " and attributes.status = 'RUNNING'"
    return mlflow.search_runs([experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY, output_format="list")


def children_by_key(parent: Run) -> dict[str, list[Run]]:
    """The parent's child runs grouped by their grid cell (tag sweep/key)."""
    found: dict[str, list[Run]] = {}
    for run in children(parent.info.run_id, parent.info.experiment_id):
        key = run.data.tags.get(SWEEP_KEY_TAG)
        if key:
            found.setdefault(key, []).append(run)
    return found


@contextmanager
def parent_run(
    parent_id: str | None, experiment_id: str, tags: dict[str, str], where: Callable[[], str]
) -> Iterator[str]:
    """The sweep's parent run, new or resumed (its id is yielded), active for the block; it ends as a training
    run does (`runs.ending`), its `error` tag saying `where` (the child or phase) the sweep stopped."""
    # The parent's own run id stays out of the children's environment: start_run would resume it.
    os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_experiment(experiment_id=experiment_id)
    run = mlflow.start_run(run_id=parent_id, run_name=tags[RUN_NAME_TAG], tags=tags)
    ownership.keep_alive(run.info.run_id)  # a resume of the sweep refuses it while this process drives it
    try:
        with ending(run.info.run_id, where=where):
            yield run.info.run_id
    finally:
        ownership.let_go(run.info.run_id)


def end_child(run_id: str, status: str, reason: str) -> None:
    """End a child run from outside it (its worker gone), saying why in its `error` tag."""
    client = MlflowClient()
    client.set_tag(run_id, ERROR_TAG, reason)
    client.set_terminated(run_id, status)


def end_if_running(run_id: str, status: str, reason: str) -> bool:
    """End `run_id` with `status` and `reason` as its `error` tag, if it is still RUNNING; whether it was."""
    client = MlflowClient()
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    end_child(run_id, status, reason)
    return True


def set_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, value)


def get_run(run_id: str) -> Run:
    return MlflowClient().get_run(run_id)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def use_tracking_uri(uri: str) -> None:
    """In a worker (a process or a Ray task): log where the driver logs, and never into the driver's own run."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(uri)
