"""Fetch tracked runs from MLflow, build a report, write it and log it as a comparison run.

This module only talks to MLflow (public ``MlflowClient`` APIs) and the file
system; every number in the report comes from the pure
:func:`bertpooled.report.build.build_report`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bertpooled.contract import HEADLINE_COSTS, HISTORY_KEYS, counts_as_training
from bertpooled.errors import BertpooledError
from bertpooled.report.plots import accuracy_vs_time, learning_curves
from bertpooled.report.build import build_report
from bertpooled.report.records import Report
from bertpooled.report.render import FORMATS
from bertpooled.report.html import render_html
from bertpooled.tracking.runs import DEFAULT_EXPERIMENT, KIND_TAG, PREDICTIONS_PATH, check_tracking_reachable, redact_uri

#: Where comparison runs go by default: their own experiment keeps the training experiments' tables and
#: charts to training runs.
COMPARISON_EXPERIMENT = "bertpooled-comparisons"

__all__ = [
    "COMPARISON_EXPERIMENT",
    "DEFAULT_EXPERIMENT",
    "HISTORY_KEYS",
    "PREDICTIONS_ARTIFACT",
    "compare_runs",
    "load_histories",
    "load_predictions",
    "log_comparison_run",
    "select_runs",
    "write_report",
]

PREDICTIONS_ARTIFACT = PREDICTIONS_PATH
# MLflow's defaults retry a dead server for minutes; a report should fail in
# seconds instead. Values the user already exported win.
_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_PAGE_SIZE = 1000


# --- Connection ---------------------------------------------------------------


def _client(client_or_uri: MlflowClient | str | None) -> MlflowClient:
    if isinstance(client_or_uri, MlflowClient):
        return client_or_uri
    return MlflowClient(tracking_uri=client_or_uri or None)


@contextmanager
def _bounded_http() -> Iterator[None]:
    added = {name: value for name, value in _HTTP_LIMITS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _mlflow_error(error: MlflowException, doing: str) -> BertpooledError:
    message = str(error.message if hasattr(error, "message") else error).splitlines()[0]
    return BertpooledError(f"MLflow failed while {doing}: {message}; check --tracking-uri and the ids")


# --- Selecting runs -------------------------------------------------------------


def _search_all(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str) -> list[Run]:
    found: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE_SIZE,
            order_by=["attributes.start_time DESC"],
            page_token=page_token,
        )
        found.extend(page)
        page_token = page.token
        if not page_token:
            return found


def _runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    # The columns mlflow.search_runs(output_format="pandas") returns, built from the
    # client's Run objects so the tracking URI needs no global mlflow.set_tracking_uri.
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
        raise _mlflow_error(error, f"reading run {run_id}") from None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def select_runs(
    client: MlflowClient | str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run_id: str | None = None,
    run_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    include_unfinished: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """Find the training runs to compare; return them as a ``search_runs``-shaped frame and notes.

    ``client`` is an ``MlflowClient`` or a tracking URI (``None``: MLflow's
    default). Without ``run_ids`` or ``parent_run_id`` every active run of
    ``experiment`` is a candidate; ``run_ids`` and ``parent_run_id`` (a sweep
    parent's children) narrow the candidates and are looked up wherever they
    live; ``filter_string`` (MLflow search syntax) narrows them further.
    Sweep parents and comparison runs are left out, as are runs not FINISHED
    unless ``include_unfinished``; the notes name what was left out.

    Raises BertpooledError for an unknown experiment or run id, a filter that
    matches nothing, invalid filter syntax, or an unreachable tracking server.
    """
    client = _client(client)
    check_tracking_reachable(client.tracking_uri)
    with _bounded_http():
        try:
            candidates, scope = _find_candidates(client, experiment, parent_run_id, run_ids, filter_string)
        except MlflowException as error:
            if error.error_code == "INVALID_PARAMETER_VALUE" and filter_string:
                raise BertpooledError(
                    f"invalid --filter {filter_string!r}: {str(error.message).splitlines()[0]}; "
                    "use MLflow search syntax, e.g. \"params.`config/mode` = 'pool'\""
                ) from None
            raise _mlflow_error(error, "searching runs") from None

    notes: list[str] = []
    kept: list[Run] = []
    excluded_kinds: dict[str, int] = {}
    unfinished: list[Run] = []
    explicit = set(run_ids or ())
    for run in candidates:
        kind = run.data.tags.get(KIND_TAG)
        if not counts_as_training(kind):
            excluded_kinds[kind] = excluded_kinds.get(kind, 0) + 1
            if run.info.run_id in explicit:
                hint = " (pass it as --parent to compare its children)" if kind == "sweep" else ""
                notes.append(f"left out {run.info.run_name} ({run.info.run_id}): a {kind} run, "
                             f"not a training run{hint}")
            continue
        if run.info.status != "FINISHED" and not include_unfinished:
            unfinished.append(run)
            notes.append(f"skipped {run.info.run_name} ({run.info.run_id}): status {run.info.status}, "
                         "not FINISHED; pass --include-unfinished to keep it")
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
    return _runs_frame(kept), notes


def _find_candidates(
    client: MlflowClient,
    experiment: str,
    parent_run_id: str | None,
    run_ids: Sequence[str] | None,
    filter_string: str | None,
) -> tuple[list[Run], str]:
    clauses: list[str] = []
    experiment_ids: list[str] = []
    scopes: list[str] = []
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
        clauses.append(f"tags.`mlflow.parentRunId` = {_quote(parent_run_id)}")
        scopes.append(f"the children of run {parent.info.run_name} ({parent_run_id})")
    if not experiment_ids:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            known = [e.name for e in client.search_experiments(max_results=20)]
            raise BertpooledError(
                f"unknown experiment {experiment!r} at {redact_uri(client.tracking_uri)}: pass --experiment one of "
                f"{', '.join(known) or '(none yet: train first)'}"
            )
        experiment_ids.append(found.experiment_id)
        scopes.append(f"experiment {experiment!r}")
    if filter_string:
        clauses.append(filter_string)
    scope = " among ".join(scopes)
    runs = _search_all(client, list(dict.fromkeys(experiment_ids)), " AND ".join(clauses))
    if not runs:
        if filter_string:
            raise BertpooledError(
                f"--filter {filter_string!r} matched no runs in {scope}: check the names and values, "
                "e.g. \"params.`config/mode` = 'pool'\""
            )
        if parent_run_id:
            raise BertpooledError(f"{scope}: none found; is {parent_run_id} a sweep parent? "
                                  "pass --parent with a sweep run's id")
        raise BertpooledError(f"no runs in {scope}: train first, or pass --experiment with another name")
    return runs, scope


# --- Loading artifacts and histories ----------------------------------------------


def load_predictions(
    client: MlflowClient | str | None, run_ids: Iterable[str]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Download each run's ``predictions/test.csv``; return ``{run_id: frame}`` and notes.

    A run without the artifact is simply absent from the mapping (the report
    names it among the skipped runs); one whose file cannot be read is absent
    too, with a note saying why. ``id`` is read as text.
    """
    client = _client(client)
    folder, name = PREDICTIONS_ARTIFACT.rsplit("/", 1)
    predictions: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    with _bounded_http(), tempfile.TemporaryDirectory(prefix="bertpooled-predictions-") as tmp:
        for run_id in run_ids:
            try:
                listed = {item.path for item in client.list_artifacts(run_id, folder)}
                if PREDICTIONS_ARTIFACT not in listed:
                    continue
                local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, os.path.join(tmp, run_id))
                predictions[run_id] = pd.read_csv(local, dtype={"id": str})
            except MlflowException as error:
                notes.append(f"could not download {PREDICTIONS_ARTIFACT} of run {run_id}: "
                             f"{str(error.message).splitlines()[0]}")
            except (OSError, ValueError, pd.errors.ParserError) as error:
                notes.append(f"could not read {PREDICTIONS_ARTIFACT} of run {run_id}: {error}")
    return predictions, notes


def load_histories(
    client: MlflowClient | str | None,
    run_ids: Iterable[str],
    keys: Sequence[str] = HISTORY_KEYS,
) -> dict[str, pd.DataFrame]:
    """Fetch per-epoch metric histories: ``{run_id: frame(key, step, value)}``.

    Keys a run never logged are simply absent from its frame.
    """
    client = _client(client)
    histories: dict[str, pd.DataFrame] = {}
    with _bounded_http():
        for run_id in run_ids:
            rows = []
            for key in keys:
                try:
                    history = client.get_metric_history(run_id, key)
                except MlflowException as error:
                    raise _mlflow_error(error, f"reading {key} of run {run_id}") from None
                rows += [{"key": key, "step": metric.step, "value": metric.value} for metric in history]
            histories[run_id] = pd.DataFrame(rows, columns=["key", "step", "value"])
    return histories


# --- Writing and logging -------------------------------------------------------------


def write_report(report: Report, output_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json``, ``report.csv``, the two PNG plots and ``report.html`` (one
    self-contained page with the plots embedded); return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": output_dir / "report.md",
        "json": output_dir / "report.json",
        "csv": output_dir / "report.csv",
    }
    paths["markdown"].write_text(report.to_markdown(), encoding="utf-8")
    paths["json"].write_text(report.to_json() + "\n", encoding="utf-8")
    paths["csv"].write_text(report.to_csv(), encoding="utf-8")
    paths["accuracy_vs_time"] = accuracy_vs_time(report, output_dir / "accuracy_vs_time.png")
    paths["learning_curves"] = learning_curves(report, output_dir / "learning_curves.png")
    paths["html"] = output_dir / "report.html"
    paths["html"].write_text(render_html(report, {"Accuracy against total time": paths["accuracy_vs_time"],
                                                  "Learning curves": paths["learning_curves"]}), encoding="utf-8")
    return paths


def _metric_key(*parts: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and spaces only.
    return re.sub(r"[^\w\-./ ]", "_", "/".join(parts))


def _summary_metrics(report: Report) -> dict[str, float]:
    metrics = {
        "compare/n_runs": float(len(report.runs)),
        "compare/n_groups": float(len(report.groups)),
        "compare/n_skipped": float(len(report.skipped)),
    }
    for group in report.groups:
        metrics[_metric_key("group", group.label, "accuracy_mean")] = group.accuracy.mean
    for comparison in report.comparisons:
        prefix = ("vs", comparison.baseline, comparison.group)
        difference = comparison.accuracy_difference_points
        metrics[_metric_key(*prefix, "accuracy_diff_points")] = difference.mean
        metrics[_metric_key(*prefix, "paired_t_p")] = difference.p_value
        metrics[_metric_key(*prefix, "mcnemar_significant_pairs")] = float(comparison.mcnemar_significant)
        for metric, _ in HEADLINE_COSTS:
            metrics[_metric_key(*prefix, "ratio", metric)] = comparison.ratios.get(metric, float("nan"))
    return {key: value for key, value in metrics.items() if value == value and abs(value) != float("inf")}


def log_comparison_run(
    report: Report,
    output_dir: str | Path,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    client: MlflowClient | str | None = None,
) -> str:
    """Log ``output_dir``'s files as artifacts of a new run tagged ``bertpooled.kind=comparison``.

    The run is named ``compare-<n>runs``, carries the verdicts as its MLflow
    note, the settings as params and a few summary metrics; the experiment is
    created if missing. Returns the new run's id.
    """
    client = _client(client)
    check_tracking_reachable(client.tracking_uri)
    with _bounded_http():
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            verdicts = "\n".join(f"- {c.verdict}" for c in report.comparisons) or "- no comparison"
            run = client.create_run(
                experiment_id,
                run_name=f"compare-{len(report.runs)}runs",
                tags={
                    KIND_TAG: "comparison",
                    "mlflow.note.content": f"**Verdicts**\n\n{verdicts}\n",
                },
            )
        except MlflowException as error:
            raise _mlflow_error(error, "creating the comparison run") from None
        run_id = run.info.run_id
        try:
            client.log_param(run_id, "group_by", ",".join(report.group_by))
            client.log_param(run_id, "baseline", str(report.baseline))
            client.log_param(run_id, "alpha", report.alpha)
            client.log_param(run_id, "confidence", report.confidence)
            timestamp = int(time.time() * 1000)
            for key, value in _summary_metrics(report).items():
                client.log_metric(run_id, key, value, timestamp=timestamp, step=0)
            client.log_artifacts(run_id, str(output_dir))
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def compare_runs(
    *,
    format: str = "table",  # noqa: A002 - the CLI's --format, passed through by name
    output: str | Path | None = None,
    group_by: Sequence[str] | str = ("mode",),
    baseline: str | None = "basic",
    experiment: str = DEFAULT_EXPERIMENT,
    parent: str | None = None,
    run_id: Sequence[str] | None = None,
    filter: str | None = None,  # noqa: A002 - the CLI's --filter, passed through by name
    tracking_uri: str | None = None,
    include_unfinished: bool = False,
    no_log: bool = False,
    comparison_experiment: str | None = None,
) -> Report:
    """Select runs, fetch predictions and histories, build the report, write and log it.

    Keyword arguments mirror ``bertpooled compare-runs`` options one to one.
    ``format`` is only validated here (render with ``report.render(format)``).
    With ``output`` the report files go there; unless ``no_log``, they are
    also logged as a comparison run in ``comparison_experiment`` (default
    `bertpooled-comparisons`, so that training experiments hold training runs
    only) whose id the returned report carries.
    """
    if format not in FORMATS:
        raise BertpooledError(f"unknown report format {format!r}: pass --format one of {', '.join(FORMATS)}")
    client = _client(tracking_uri)
    runs, notes = select_runs(
        client,
        experiment=experiment,
        parent_run_id=parent,
        run_ids=list(run_id) if run_id else None,
        filter_string=filter,
        include_unfinished=include_unfinished,
    )
    run_ids = list(runs["run_id"])
    predictions, prediction_notes = load_predictions(client, run_ids)
    histories = load_histories(client, run_ids)
    report = build_report(
        runs,
        predictions,
        histories,
        group_by=group_by,
        baseline=baseline,
        include_unfinished=include_unfinished,
        notes=notes + prediction_notes,
    )
    if output is not None:
        write_report(report, output)
    if no_log:
        return report
    if not report.runs:
        return replace(report, notes=report.notes + ["not logged as a comparison run: no runs to compare"])
    log_experiment = comparison_experiment or COMPARISON_EXPERIMENT
    if output is not None:
        comparison_id = log_comparison_run(report, output, log_experiment, client=client)
    else:
        with tempfile.TemporaryDirectory(prefix="bertpooled-report-") as tmp:
            write_report(report, tmp)
            comparison_id = log_comparison_run(report, tmp, log_experiment, client=client)
    return replace(report, comparison_run_id=comparison_id)
