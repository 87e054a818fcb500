"""Runs that show RUNNING though nothing drives them, found and ended (`bertpooled runs end-abandoned`).

Two kinds, each told apart by what the tracking store holds, never by guessing from the time alone:

- **never started**: a run `mlflow run` created (it carries MLflow's project entry-point tag) whose command never
  ran: no heartbeat or owner of ours, no metric, no `config/*` param, older than a threshold. MLflow creates the
  run before it builds the environment, so a failed conda/uv/virtualenv build leaves it RUNNING for ever. It is
  ended FAILED.
- **owner gone**: a run whose heartbeat says its process is gone: from one read (`ownership.liveness`: its
  process is not on this machine any more, or its owner let it go), or, for an owner elsewhere, by watching its
  heartbeat on this machine's clock for the stale window (`ownership.watch_many`, all such runs in one window):
  a heartbeat that does not move has no process behind it. No two machines' clocks are compared. It is ended
  KILLED, as a run interrupted by Ctrl-C is, so `train --resume` continues it from its last checkpoint.

Each ended run keeps the reason in tag `error` (as every failed run here does) and tag `bertpooled.abandoned`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from bertpooled.contract import CONFIG_PARAM_PREFIX, ERROR_TAG, FAILED, HEARTBEAT_TAG, KILLED, OWNER_TAG
from bertpooled.errors import BertpooledError
from bertpooled.tracking.ownership import STALE_AFTER_S, liveness, watch_many

ABANDONED_TAG = "bertpooled.abandoned"
COMMAND = "bertpooled runs end-abandoned"
DEFAULT_OLDER_THAN_MIN = 60.0
PAGE_SIZE = 1000


@dataclass(frozen=True)
class Abandoned:
    """A RUNNING run nothing drives: the status it should end with and why."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str
    reason: str
    # The owner and heartbeat tags it was judged by: ending it is refused when either changed since (claimed).
    claim: tuple[str, str] = ("", "")
    watched: bool = False  # judged by watching its heartbeat, which one read cannot repeat


def why_abandoned(run: Run, older_than_s: float, now: float | None = None) -> tuple[str, str] | None:
    """(status to end it with, reason) for a RUNNING run nothing drives; None for any other run."""
    if run.info.status != "RUNNING":
        return None
    tags, now = run.data.tags, now or time.time()
    if HEARTBEAT_TAG in tags:
        # One read judges by no clock but this machine's processes (ownership.liveness): an owner elsewhere, or
        # one that cannot be told from one read, is left to `find`, which watches its heartbeat.
        alive, why = liveness(tags, run.info.status)
        return None if alive is not False else (KILLED, f"owner gone: {why}")
    ours = OWNER_TAG in tags or run.data.metrics or any(k.startswith(CONFIG_PARAM_PREFIX) for k in run.data.params)
    age_s = now - run.info.start_time / 1000
    if MLFLOW_PROJECT_ENTRY_POINT in tags and not ours and age_s > older_than_s:
        return FAILED, (
            f"never started: `mlflow run` created it {age_s / 60:.0f} min ago but its command never ran (the "
            "environment could not be built?)"
        )
    return None


def _claim(run: Run) -> tuple[str, str]:
    return run.data.tags.get(OWNER_TAG, ""), run.data.tags.get(HEARTBEAT_TAG, "")


def find(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    older_than_s: float,
    watch_s: float | None = None,
    now: float | None = None,
    on_watch: Callable[[int, float], None] | None = None,
) -> list[Abandoned]:
    """Every abandoned run of these experiments, oldest first. Runs that one read cannot judge (an owner
    elsewhere, or a live-looking process here) are watched together for `watch_s` seconds (the stale window)."""
    window = STALE_AFTER_S if watch_s is None else watch_s
    runs = get_results_from_paginated_fn(
        lambda max_results, page_token: client.search_runs(
            list(experiment_ids),
            "attributes.status = 'RUNNING'",
            max_results=max_results,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        ),
        PAGE_SIZE,
    )
    verdicts: dict[str, tuple[str, str]] = {}
    undecided = []
    for run in runs:
        verdict = why_abandoned(run, older_than_s, now)
        if verdict:
            verdicts[run.info.run_id] = verdict
        elif HEARTBEAT_TAG in run.data.tags and liveness(run.data.tags, run.info.status)[0] is None:
            undecided.append(run.info.run_id)
    if undecided and on_watch:
        on_watch(len(undecided), window)
    watched = watch_many(client, undecided, window) if undecided else {}
    verdicts |= {run_id: (KILLED, f"owner gone: {why}") for run_id, (alive, why) in watched.items() if not alive}
    return [
        Abandoned(
            run.info.run_id,
            run.info.run_name,
            run.info.experiment_id,
            *verdicts[run.info.run_id],
            claim=_claim(run),
            watched=run.info.run_id in watched,
        )
        for run in runs
        if run.info.run_id in verdicts
    ]


def experiments_to_search(client: MlflowClient, name: str | None) -> list[str]:
    """The id of experiment `name` (a one-line error when there is none), else of every active experiment."""
    if name:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise BertpooledError(f"no experiment named {name!r}: leave --experiment out to search them all")
        return [experiment.experiment_id]
    experiments = get_results_from_paginated_fn(
        lambda max_results, page_token: client.search_experiments(max_results=max_results, page_token=page_token),
        PAGE_SIZE,
    )
    return [e.experiment_id for e in experiments]


def end(client: MlflowClient, run: Abandoned, older_than_s: float) -> bool:
    """End one abandoned run with its status, the reason in tags `error` and `bertpooled.abandoned`; False when,
    read again just before, it is no longer abandoned (it ended, or a resume claimed it since it was found)."""
    now = client.get_run(run.run_id)
    if now.info.status != "RUNNING" or _claim(now) != run.claim:
        return False
    if not run.watched and why_abandoned(now, older_than_s) is None:
        return False
    reason = f"ended by `{COMMAND}`: {run.reason}"
    client.log_batch(run.run_id, tags=[RunTag(ERROR_TAG, reason), RunTag(ABANDONED_TAG, run.reason)])
    client.set_terminated(run.run_id, run.status)
    return True


def end_abandoned(
    experiment: str | None,
    older_than_s: float,
    apply: bool,
    watch_s: float | None = None,
    on_watch: Callable[[int, float], None] | None = None,
) -> list[tuple[Abandoned, bool]]:
    """The abandoned runs of `experiment` (else of every experiment), each with whether it was ended: with
    `apply`, each one still abandoned when read again; without, none (a dry run)."""
    client = MlflowClient()
    found = find(client, experiments_to_search(client, experiment), older_than_s, watch_s, on_watch=on_watch)
    return [(run, apply and end(client, run, older_than_s)) for run in found]
