"""Reads from the tracking store: is it reachable, which runs to compare, their predictions and histories.

The one place the report side talks to MLflow to read (``tracking/comparisons.py`` writes its comparison
run): one reachability probe, one paged run search, one rule for which runs count (``contract``), and
bounded HTTP retries so that a dead server fails a report in seconds. Only public ``MlflowClient`` APIs
are used, on a client bound to the given tracking URI (no global ``mlflow.set_tracking_uri``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn

from bertpooled.contract import (
    ERROR_TAG,
    FINISHED,
    HISTORY_KEYS,
    KIND_SWEEP,
    KIND_TAG,
    PARENT_RUN_TAG,
    PREDICTIONS_PATH,
    counts_as_training,
)
from bertpooled.errors import BertpooledError, redact_uri, short_text
from bertpooled.tracking import abandoned
from bertpooled.tracking.experiments import experiment_to_read
from bertpooled.tracking.probe import check_tracking_reachable

__all__ = [
    "bounded_http",
    "client_for",
    "load_histories",
    "load_predictions",
    "mlflow_error",
    "search_all_runs",
    "select_runs",
]

# MLflow's defaults retry a dead server for minutes; a report should fail in
# seconds instead. Values the user already exported win.
_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_PAGE_SIZE = 1000


# --- Connection -----------------------------------------------------------------------------


def client_for(client_or_uri: MlflowClient | str | None, read_only: bool = False) -> MlflowClient:
    """An ``MlflowClient`` as given, or one bound to the tracking URI (``None``: MLflow's default). ``read_only``:
    for a command that only reads, a local store must exist already (none is created; see the probe)."""
    if isinstance(client_or_uri, MlflowClient):
        return client_or_uri
    # Probed first: MLflow's client opens its store when it is made, and retries a dead database for minutes.
    check_tracking_reachable(client_or_uri or None, read_only=read_only)
    return MlflowClient(tracking_uri=client_or_uri or None)


@contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP retries and timeouts cut to seconds while inside; variables the user set are kept."""
    added = {name: value for name, value in _HTTP_LIMITS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def mlflow_error(error: MlflowException, doing: str) -> BertpooledError:
    """An MLflow failure as this project's one-line error."""
    message = str(error.message if hasattr(error, "message") else error).splitlines()[0]
    return BertpooledError(f"MLflow failed while {doing}: {message}; check --tracking-uri and the ids")


# --- Searching ------------------------------------------------------------------------------------


def search_all_runs(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    order_by: Sequence[str] = ("attributes.start_time DESC",),
) -> list[Run]:
    """Every active run matching ``filter_string``, newest first: all pages, through MLflow's own pager."""

    def page(max_results: int, page_token: str | None):
        return client.search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=list(order_by),
            page_token=page_token,
        )

    return get_results_from_paginated_fn(page, _PAGE_SIZE)


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as the frame ``mlflow.search_runs(output_format="pandas")`` returns (``metrics.*``, ``params.*``,
    ``tags.*`` columns), built from a client's Run objects."""
    rows = []
    for run in runs:
        info = run.info
        row = {
            "run_id": info.run_id,
            "experiment_id": info.experiment_id,
            "status": info.status,
            "artifact_uri": info.artifact_uri,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
        }
        row.update({f"metrics.{key}": value for key, value in run.data.metrics.items()})
        row.update({f"params.{key}": value for key, value in run.data.params.items()})
        row.update({f"tags.{key}": value for key, value in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _get_run(client: MlflowClient, run_id: str, role: str, option: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise BertpooledError(
                f"unknown {role} {run_id!r} at {redact_uri(client.tracking_uri)}: pass {option} with an id "
                "shown by `mlflow ui` or `mlflow runs list`"
            ) from None
        raise mlflow_error(error, f"reading run {run_id}") from None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def select_runs(
    client: MlflowClient | str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    run_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    include_unfinished: bool = False,
    read_only: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """Find the training runs to compare; return them as a ``search_runs``-shaped frame and notes.

    ``client`` is an ``MlflowClient`` or a tracking URI (``None``: MLflow's
    default). Without ``run_ids`` or ``parent_run_id`` every active run of
    ``experiment`` is a candidate; with no ``experiment`` either, those of
    ``bertpooled``, unless the newest training runs are elsewhere (see
    :func:`bertpooled.tracking.experiments.experiment_to_read`); ``run_ids`` and ``parent_run_id`` (a sweep
    parent's children) narrow the candidates and are looked up wherever they
    live; ``filter_string`` (MLflow search syntax) narrows them further.
    Sweep parents and comparison runs are left out, as are runs not FINISHED
    unless ``include_unfinished``; the notes name what was left out.

    Raises BertpooledError for an unknown experiment or run id, a filter that
    matches nothing, invalid filter syntax, or an unreachable tracking server.
    """
    client = client_for(client, read_only)
    check_tracking_reachable(client.tracking_uri, read_only=read_only)
    with bounded_http():
        try:
            candidates, scope, found_notes = _find_candidates(client, experiment, parent_run_id, run_ids, filter_string)
        except MlflowException as error:
            if error.error_code == "INVALID_PARAMETER_VALUE" and filter_string:
                raise BertpooledError(
                    f"invalid --filter {filter_string!r}: {str(error.message).splitlines()[0]}; "
                    "use MLflow search syntax, e.g. \"params.`config/mode` = 'pool'\""
                ) from None
            raise mlflow_error(error, "searching runs") from None
    kept, notes = _training_runs(candidates, set(run_ids or ()), include_unfinished, scope)
    return runs_frame(kept), found_notes + notes


def _training_runs(
    candidates: Sequence[Run], explicit: set[str], include_unfinished: bool, scope: str
) -> tuple[list[Run], list[str]]:
    """The candidates that count (``contract.counts_as_training``, FINISHED unless asked), with notes on the rest."""
    notes: list[str] = []
    kept: list[Run] = []
    excluded_kinds: dict[str | None, int] = {}  # by kind tag (None: untagged)
    unfinished: list[Run] = []
    for run in candidates:
        kind = run.data.tags.get(KIND_TAG)
        if not counts_as_training(kind):
            excluded_kinds[kind] = excluded_kinds.get(kind, 0) + 1
            if run.info.run_id in explicit:
                hint = " (pass it as --parent to compare its children)" if kind == KIND_SWEEP else ""
                notes.append(
                    f"left out {run.info.run_name} ({run.info.run_id}): a {kind} run, not a training run{hint}"
                )
            continue
        if run.info.status != FINISHED and not include_unfinished:
            unfinished.append(run)
            notes.append(f"skipped {run.info.run_name} ({run.info.run_id}): {_why_unfinished(run)}")
            continue
        kept.append(run)
    if excluded_kinds:
        counts = ", ".join(f"{count} {kind} run(s)" for kind, count in sorted(excluded_kinds.items()))
        notes.append(f"left out {counts}: they are not training runs")
    if not kept:
        hint = "; pass --include-unfinished to compare them anyway" if unfinished else ""
        raise BertpooledError(
            f"no finished training runs in {scope} ({len(candidates)} run(s) found, "
            f"{len(unfinished)} unfinished, {sum(excluded_kinds.values())} sweep/comparison){hint}"
        )
    return kept, notes


def _why_unfinished(run: Run) -> str:
    """Why a run that did not finish is skipped: nothing drives it (`runs end-abandoned` ends it), or how it
    ended (tag `error`), or only its status."""
    verdict = abandoned.why_abandoned(run, abandoned.DEFAULT_OLDER_THAN_MIN * 60)
    if verdict:
        return f"status RUNNING, but {verdict[1]}; `{abandoned.COMMAND} --apply` ends it {verdict[0]}"
    error = (run.data.tags.get(ERROR_TAG) or "").strip()
    ended = f" ({short_text(error, 160)})" if error else ""
    # An owner elsewhere cannot be judged from one read; end-abandoned watches its heartbeat.
    watch = f" (if nothing drives it, `{abandoned.COMMAND}` finds it)" if run.info.status == "RUNNING" else ""
    return f"status {run.info.status}{ended}, not {FINISHED}; pass --include-unfinished to keep it{watch}"


def _find_candidates(
    client: MlflowClient,
    experiment: str | None,
    parent_run_id: str | None,
    run_ids: Sequence[str] | None,
    filter_string: str | None,
) -> tuple[list[Run], str, list[str]]:
    clauses: list[str] = []
    experiment_ids: list[str] = []
    scopes: list[str] = []
    notes: list[str] = []
    if run_ids:
        unique_ids = list(dict.fromkeys(run_ids))
        for run_id in unique_ids:
            run = _get_run(client, run_id, "run id", "--run-id")
            experiment_ids.append(run.info.experiment_id)
        clauses.append(f"attributes.run_id IN ({', '.join(_quote(run_id) for run_id in unique_ids)})")
        scopes.append(f"the {len(unique_ids)} given run id(s)")
    if parent_run_id:
        parent = _get_run(client, parent_run_id, "parent run", "--parent")
        experiment_ids.append(parent.info.experiment_id)
        clauses.append(f"tags.`{PARENT_RUN_TAG}` = {_quote(parent_run_id)}")
        scopes.append(f"the children of run {parent.info.run_name} ({parent_run_id})")
    if not experiment_ids:
        if experiment is None:
            experiment, notes = experiment_to_read(client, filter_string)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            known = [e.name for e in client.search_experiments(max_results=20)]
            raise BertpooledError(
                f"unknown experiment {short_text(repr(experiment))} at {redact_uri(client.tracking_uri)}: pass "
                "--experiment one of "
                f"{', '.join(known) or '(none yet: train first)'}"
            )
        experiment_ids.append(found.experiment_id)
        scopes.append(f"experiment {experiment!r}")
    if filter_string:
        clauses.append(filter_string)
    scope = " among ".join(scopes)
    runs = search_all_runs(client, list(dict.fromkeys(experiment_ids)), " AND ".join(clauses))
    if not runs:
        if filter_string:
            raise BertpooledError(
                f"--filter {filter_string!r} matched no runs in {scope}: check the names and values, "
                "e.g. \"params.`config/mode` = 'pool'\""
            )
        if parent_run_id:
            raise BertpooledError(
                f"{scope}: none found; is {parent_run_id} a sweep parent? pass --parent with a sweep run's id"
            )
        raise BertpooledError(f"no runs in {scope}: train first, or pass --experiment with another name")
    return runs, scope, notes


# --- Artifacts and histories ----------------------------------------------------------------------


def load_predictions(
    client: MlflowClient | str | None, run_ids: Iterable[str]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Download each run's ``predictions/test.csv``; return ``{run_id: frame}`` and notes.

    A run without the artifact is simply absent from the mapping (the report
    names it among the skipped runs); one whose file cannot be read is absent
    too, with a note saying why. ``id`` is read as text.
    """
    client = client_for(client)
    folder = PREDICTIONS_PATH.rsplit("/", 1)[0]
    predictions: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    with bounded_http(), tempfile.TemporaryDirectory(prefix="bertpooled-predictions-") as tmp:
        for run_id in run_ids:
            try:
                listed = {item.path for item in client.list_artifacts(run_id, folder)}
                if PREDICTIONS_PATH not in listed:
                    continue
                local = client.download_artifacts(run_id, PREDICTIONS_PATH, os.path.join(tmp, run_id))
                frame = pd.read_csv(local, dtype={"id": str})
                problem = unusable_predictions(frame)
                if problem:
                    notes.append(f"{PREDICTIONS_PATH} of run {run_id} is unusable ({problem}): the run is left out")
                    continue
                predictions[run_id] = frame
            except MlflowException as error:
                notes.append(
                    f"could not download {PREDICTIONS_PATH} of run {run_id}: {str(error.message).splitlines()[0]}"
                )
            except (OSError, ValueError, pd.errors.ParserError) as error:
                notes.append(f"could not read {PREDICTIONS_PATH} of run {run_id}: {error}")
    return predictions, notes


def unusable_predictions(frame: pd.DataFrame) -> str:
    """What makes a predictions file unusable for the paired tests ("" when nothing does): every value is checked,
    so an edited or damaged file is a note, not a traceback deep in the statistics."""
    missing = [c for c in ("id", "label", "probability") if c not in frame.columns]
    if missing:
        return f"no column {', '.join(missing)}"
    probability = pd.to_numeric(frame["probability"], errors="coerce")
    bad = frame["probability"][probability.isna() | ~probability.between(0.0, 1.0)]
    if len(bad):
        return (
            f"{len(bad)} probabilit{'y' if len(bad) == 1 else 'ies'} not a number in [0, 1], e.g. "
            f"{str(bad.iloc[0])[:20]!r}"
        )
    label = pd.to_numeric(frame["label"], errors="coerce")
    if not label.isin([0, 1]).all():
        return "labels other than 0 and 1"
    if frame["id"].isna().any() or frame["id"].duplicated().any():
        return "missing or repeated ids"
    return ""


def load_histories(
    client: MlflowClient | str | None,
    run_ids: Iterable[str],
    keys: Sequence[str] = HISTORY_KEYS,
) -> dict[str, pd.DataFrame]:
    """Fetch per-epoch metric histories: ``{run_id: frame(key, step, value)}``.

    Keys a run never logged are simply absent from its frame.
    """
    client = client_for(client)
    histories: dict[str, pd.DataFrame] = {}
    with bounded_http():
        for run_id in run_ids:
            rows = []
            for key in keys:
                try:
                    history = client.get_metric_history(run_id, key)
                except MlflowException as error:
                    raise mlflow_error(error, f"reading {key} of run {run_id}") from None
                rows += [{"key": key, "step": metric.step, "value": metric.value} for metric in history]
            histories[run_id] = pd.DataFrame(rows, columns=["key", "step", "value"])
    return histories
