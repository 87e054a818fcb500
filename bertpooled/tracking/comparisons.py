"""Writes of the report side: the comparison run that holds a report, and the pointer to it.

``bertpooled.report.compare`` decides what to log (name, note, params, metrics, files); this module
only logs it, through the same client, probe and bounded HTTP as ``tracking/store.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bertpooled.contract import COMPARISON_RUN_TAG, FAILED, FINISHED, KIND_COMPARISON, KIND_TAG, NOTE_TAG, RUN_NAME_TAG
from bertpooled.tracking.probe import check_tracking_reachable
from bertpooled.tracking.store import bounded_http, client_for, mlflow_error

__all__ = ["log_comparison_run", "point_launcher_at"]


def log_comparison_run(
    client: MlflowClient | str | None,
    experiment: str,
    *,
    run_name: str,
    note: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    artifacts: str | Path,
) -> str:
    """Log ``artifacts``' files, ``params`` and ``metrics`` (step 0) as a new run tagged
    ``bertpooled.kind=comparison`` with ``note`` as its MLflow note, in ``experiment`` (created if missing).

    The run ends FINISHED, or FAILED when logging fails; returns its id.
    """
    client = client_for(client)
    check_tracking_reachable(client.tracking_uri)
    with bounded_http():
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run = client.create_run(experiment_id, run_name=run_name, tags={KIND_TAG: KIND_COMPARISON, NOTE_TAG: note})
        except MlflowException as error:
            raise mlflow_error(error, "creating the comparison run") from None
        run_id = run.info.run_id
        try:
            for key, value in params.items():
                client.log_param(run_id, key, value)
            timestamp = int(time.time() * 1000)
            for key, value in metrics.items():
                client.log_metric(run_id, key, value, timestamp=timestamp, step=0)
            client.log_artifacts(run_id, str(artifacts))
        except BaseException:
            client.set_terminated(run_id, status=FAILED)
            raise
        client.set_terminated(run_id, status=FINISHED)
    return run_id


def point_launcher_at(client: MlflowClient | str | None, launcher_run_id: str, comparison_run_id: str) -> None:
    """Tag the run `mlflow run -e compare` made for the command as a comparison that points at the report's run.

    compare-runs then leaves it out like any comparison run.
    """
    client = client_for(client)
    client.set_tag(launcher_run_id, KIND_TAG, KIND_COMPARISON)
    client.set_tag(launcher_run_id, COMPARISON_RUN_TAG, comparison_run_id)
    client.set_tag(launcher_run_id, RUN_NAME_TAG, "compare (mlflow run)")
    client.set_tag(launcher_run_id, NOTE_TAG, f"The report is logged in comparison run {comparison_run_id}.")
