"""Publish a comparison: fetch the runs (``bertpooled.tracking.store``), build the report, write its files
and log them as a comparison run (``bertpooled.tracking.comparisons``).

No MLflow here: every number comes from the pure :func:`bertpooled.report.build.build_report`, every
read and write of the tracking store goes through ``bertpooled.tracking``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bertpooled import files
from bertpooled.contract import COMPARISON_EXPERIMENT, DEFAULT_EXPERIMENT, HEADLINE_COSTS
from bertpooled.errors import BertpooledError, short_text
from bertpooled.report import render
from bertpooled.report.build import build_report
from bertpooled.report.html import render_html
from bertpooled.report.plots import accuracy_vs_time, learning_curves
from bertpooled.report.records import Report
from bertpooled.report.render import FORMATS
from bertpooled.tracking import comparisons, store
from bertpooled.tracking.runs import check_experiment_name

__all__ = [
    "COMPARISON_EXPERIMENT",
    "DEFAULT_EXPERIMENT",
    "compare_runs",
    "log_report",
    "write_report",
]


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
    files.write_text(paths["markdown"], render.to_markdown(report))
    files.write_text(paths["json"], render.to_json(report) + "\n")
    files.write_text(paths["csv"], render.to_csv(report))
    paths["accuracy_vs_time"] = accuracy_vs_time(report, output_dir / "accuracy_vs_time.png")
    paths["learning_curves"] = learning_curves(report, output_dir / "learning_curves.png")
    paths["html"] = output_dir / "report.html"
    files.write_text(
        paths["html"],
        render_html(
            report,
            {"Accuracy against total time": paths["accuracy_vs_time"], "Learning curves": paths["learning_curves"]},
        ),
    )
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


def log_report(report: Report, output_dir: str | Path, experiment: str = COMPARISON_EXPERIMENT, *, client=None) -> str:
    """Log ``output_dir``'s files as a comparison run named ``compare-<n>runs`` in ``experiment``.

    The run carries the verdicts as its MLflow note, the settings as params and a few summary metrics;
    ``client`` is a tracking client or URI (``None``: MLflow's default). Returns the new run's id.
    """
    verdicts = "\n".join(f"- {c.verdict}" for c in report.comparisons) or "- no comparison"
    return comparisons.log_comparison_run(
        client,
        experiment,
        run_name=f"compare-{len(report.runs)}runs",
        note=f"**Verdicts**\n\n{verdicts}\n",
        params={
            "group_by": ",".join(report.group_by),
            "baseline": str(report.baseline),
            "alpha": report.alpha,
            "confidence": report.confidence,
        },
        metrics=_summary_metrics(report),
        artifacts=output_dir,
    )


def compare_runs(
    *,
    format: str = "table",
    output: str | Path | None = None,
    group_by: Sequence[str] | str = ("mode",),
    baseline: str | None = "basic",
    experiment: str | None = None,
    parent: str | None = None,
    run_id: Sequence[str] | None = None,
    filter: str | None = None,
    tracking_uri: str | None = None,
    include_unfinished: bool = False,
    no_log: bool = False,
    comparison_experiment: str | None = None,
) -> Report:
    """Select runs, fetch predictions and histories, build the report, write and log it.

    Keyword arguments mirror ``bertpooled compare-runs`` options one to one.
    ``format`` is only validated here (render with ``bertpooled.report.render.render(report, format)``).
    With ``output`` the report files go there; unless ``no_log``, they are
    also logged as a comparison run in ``comparison_experiment`` (default
    `bertpooled-comparisons`, so that training experiments hold training runs
    only) whose id the returned report carries. With no ``experiment`` the
    runs of `bertpooled` are read, or, when it has no finished training run,
    those of the experiment holding the newest one (a note names it).
    """
    _check_arguments(format, output, experiment, None if no_log else comparison_experiment)
    # A report that is not logged only reads: the store is opened as it is, never created (nor its lock file).
    client = store.client_for(tracking_uri, read_only=no_log)
    runs, notes = store.select_runs(
        client,
        read_only=no_log,
        experiment=experiment,
        parent_run_id=parent,
        run_ids=list(run_id) if run_id else None,
        filter_string=filter,
        include_unfinished=include_unfinished,
    )
    run_ids = list(runs["run_id"])
    predictions, prediction_notes = store.load_predictions(client, run_ids)
    histories = store.load_histories(client, run_ids)
    report = build_report(
        runs,
        predictions,
        histories,
        group_by=group_by,
        baseline=baseline,
        include_unfinished=include_unfinished,
        notes=notes + prediction_notes,
        # With no selection at all, an experiment holding a quick-start run and a sweep still gives a report.
        newest_comparable_set=not (parent or run_id or filter),
    )
    if output is not None:
        write_report(report, output)
    if no_log:
        return report
    return _logged(report, output, comparison_experiment or COMPARISON_EXPERIMENT, client)


def _check_arguments(
    format: str, output: str | Path | None, experiment: str | None, comparison_experiment: str | None
) -> None:
    """The options that can be refused before any run is fetched."""
    if format not in FORMATS:
        raise BertpooledError(f"unknown report format {format!r}: pass --format one of {', '.join(FORMATS)}")
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        # Checked before the runs are fetched: the report files go into a folder.
        raise BertpooledError(f"--output {short_text(output)} exists and is not a folder: pass a folder's path")
    if experiment is not None:
        check_experiment_name(experiment, "--experiment")
    if comparison_experiment is not None:
        check_experiment_name(comparison_experiment, "--comparison-experiment")


def _logged(report: Report, output: str | Path | None, experiment: str, client) -> Report:
    """``report`` logged as a comparison run (its files from ``output``, else written to a temporary folder),
    carrying the run's id; a report with no runs is not logged and says so."""
    if not report.runs:
        return replace(report, notes=[*report.notes, "not logged as a comparison run: no runs to compare"])
    if output is not None:
        comparison_id = log_report(report, output, experiment, client=client)
    else:
        with tempfile.TemporaryDirectory(prefix="bertpooled-report-") as tmp:
            write_report(report, tmp)
            comparison_id = log_report(report, tmp, experiment, client=client)
    return replace(report, comparison_run_id=comparison_id)
