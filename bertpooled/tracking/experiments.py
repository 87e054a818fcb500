"""Which experiment a run is in, said when it is not the one compare-runs reads by default; and which experiment a
bare compare-runs reads: `bertpooled`, or where the newest training runs are when it has none (a run `mlflow run`
put into MLflow's `Default` without --experiment-name)."""

from __future__ import annotations

import shlex

from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn

from bertpooled.contract import (
    COMPARISON_EXPERIMENT,
    DEFAULT_EXPERIMENT,
    FINISHED,
    KIND_TAG,
    TUNE_EXPERIMENT,
    counts_as_training,
)

PAGE_SIZE = 1000


def experiment_line(experiment_id: str) -> str:
    """A closing line for a run outside the experiment compare-runs reads by default ("" inside it): where the
    run is, and the compare-runs command that finds it. MLflow's `Default` is named as such: `mlflow run`
    without --experiment-name puts runs there, and nothing else would say so."""
    try:
        name = MlflowClient().get_experiment(experiment_id).name
    except Exception:
        return ""  # a closing line is worth less than the run: it never fails the run that finished
    if name == DEFAULT_EXPERIMENT:
        return ""
    command = f"bertpooled compare-runs --experiment {shlex.quote(name)}"
    if name == Experiment.DEFAULT_EXPERIMENT_NAME:
        return (
            f"experiment: Default (MLflow's own: `mlflow run` without --experiment-name, or no experiment chosen), "
            f"not {DEFAULT_EXPERIMENT}: compare its runs with `{command}`"
        )
    return f"experiment: {name}: compare its runs with `{command}`"


def _newest_training_run(client: MlflowClient, filter_string: str | None) -> Run | None:
    """The newest finished training run of any experiment but the comparisons' and the studies' (one page of the
    newest runs is read: older ones cannot be the newest)."""
    experiments = get_results_from_paginated_fn(
        lambda max_results, page_token: client.search_experiments(max_results=max_results, page_token=page_token),
        PAGE_SIZE,
    )
    ids = [e.experiment_id for e in experiments if e.name not in (COMPARISON_EXPERIMENT, TUNE_EXPERIMENT)]
    if not ids:
        return None
    clauses = [f"attributes.status = '{FINISHED}'", *([filter_string] if filter_string else [])]
    runs = client.search_runs(ids, " AND ".join(clauses), max_results=200, order_by=["attributes.start_time DESC"])
    return next((run for run in runs if counts_as_training(run.data.tags.get(KIND_TAG))), None)


def experiment_to_read(client: MlflowClient, filter_string: str | None) -> tuple[str, list[str]]:
    """Bare compare-runs: `bertpooled`, unless it has no finished training run and another experiment has (a run
    `mlflow run` put into `Default` without --experiment-name): then the experiment of the newest one. The notes
    name the experiment read when it is not `bertpooled`, or where newer training runs are."""
    newest = _newest_training_run(client, filter_string)
    if newest is None:
        return DEFAULT_EXPERIMENT, []
    elsewhere = client.get_experiment(newest.info.experiment_id).name
    if elsewhere == DEFAULT_EXPERIMENT:
        return DEFAULT_EXPERIMENT, []
    command = f"bertpooled compare-runs --experiment {shlex.quote(elsewhere)}"
    named = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    clauses = [f"attributes.status = '{FINISHED}'", *([filter_string] if filter_string else [])]
    ours = client.search_runs([named.experiment_id], " AND ".join(clauses), max_results=200) if named else []
    if any(counts_as_training(r.data.tags.get(KIND_TAG)) for r in ours):
        return DEFAULT_EXPERIMENT, [
            f"the newest training run, {newest.info.run_name}, is in experiment {elsewhere!r}, not "
            f"{DEFAULT_EXPERIMENT!r}: `{command}` compares the runs there"
        ]
    return elsewhere, [
        f"experiment {DEFAULT_EXPERIMENT!r} has no finished training run: this report compares experiment "
        f"{elsewhere!r}, which holds the newest ({command}; pass --experiment to choose another)"
    ]
