"""Turn tracked training runs into a comparison report: a pure function of its inputs.

``build_report`` takes the rows ``mlflow.search_runs`` returns, the per-example
test predictions and (optionally) the per-epoch metric histories, and returns a
:class:`~bertpooled.report.records.Report`: per-group accuracy and cost, ratios and
significance tests against a baseline group (``bertpooled.report.pairing``), a verdict
per group, the original study's numbers beside the reproduced ones, and notes naming
every run it skipped and why. It reads no files and talks to no server;
``bertpooled.report.compare`` does the fetching through ``bertpooled.tracking``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from bertpooled import contract
from bertpooled.contract import (
    ACCURACY,
    CACHED_PHASES,
    CONFIG_PARAM_PREFIX,
    COST_PREFIXES,
    FINISHED,
    KIND_TAG,
    KNOWN_COST_ORDER,
    NOT_COSTS,
    PREDICTION_COLUMNS,
    PREDICTIONS_PATH,
    REQUIRED_METRICS,
    RUN_NAME_TAG,
    THRESHOLD,
    TIME_PER_EPOCH,
    TIME_TRAIN,
    cache_hit_metric,
    counts_as_training,
)
from bertpooled.errors import BertpooledError
from bertpooled.report import configs
from bertpooled.report.configs import shared_configs
from bertpooled.report.numbers import finite, mean, median, seed_order
from bertpooled.report.original import original_study_rows
from bertpooled.report.pairing import compare_groups, missing_baseline
from bertpooled.report.records import GroupSummary, Report, RunRecord
from bertpooled.report.stats import mean_ci

__all__ = ["build_report"]

#: predictions/test.csv accuracy may differ from the logged metric by rounding only.
_PREDICTION_ACCURACY_TOLERANCE = 1e-3


def build_report(
    runs: pd.DataFrame,
    predictions: Mapping[str, pd.DataFrame],
    histories: Mapping[str, pd.DataFrame] | None = None,
    *,
    group_by: Sequence[str] | str = ("mode",),
    baseline: str | None = "basic",
    alpha: float = 0.05,
    confidence: float = 0.95,
    include_unfinished: bool = False,
    notes: Iterable[str] = (),
    newest_comparable_set: bool = False,
) -> Report:
    """Summarise training runs by group and compare each group with a baseline group.

    ``runs`` has the shape of ``mlflow.search_runs(output_format="pandas")``.
    A group key ``k`` is read from ``params.config/k``, else ``params.k``, else
    ``tags.k``. ``baseline`` names a value of the first group key; each other
    group is compared with the baseline group that shares its remaining keys.
    ``predictions[run_id]`` holds the run's ``predictions/test.csv`` (``id``,
    ``label``, ``probability``); ``histories[run_id]`` its per-epoch metrics
    (``key``, ``step``, ``value``).

    Rows are skipped, and named in the report's notes, when they are sweep or
    comparison runs, not FINISHED (unless ``include_unfinished``), lack a group
    key, lack a metric in :data:`REQUIRED_METRICS`, or have no usable
    predictions. ``notes`` are caller notes (e.g. from fetching) put first.
    ``newest_comparable_set``: see :func:`bertpooled.report.configs.newest_comparable_set`.
    """
    group_keys = _normalise_group_by(group_by)
    _check_settings(runs, group_keys, alpha, confidence)
    baseline = baseline or None  # "" (an empty option) is no baseline
    report_notes = list(notes)
    records, skipped = _kept_runs(
        runs, predictions, group_keys, include_unfinished, newest_comparable_set, report_notes, baseline
    )
    group_configs = shared_configs(runs, records, group_keys, report_notes)
    cost_metrics = _ordered_cost_metrics(m for record in records for m, value in record.costs.items() if finite(value))
    groups = _summarise_groups(records, group_keys, baseline, cost_metrics, confidence)
    comparisons, comparison_notes = compare_groups(
        groups, records, predictions, group_keys, baseline, alpha, confidence, cost_metrics
    )
    report_notes += comparison_notes
    return Report(
        group_by=group_keys,
        baseline=baseline,
        alpha=alpha,
        confidence=confidence,
        runs=records,
        groups=groups,
        comparisons=comparisons,
        original_study=original_study_rows(records, confidence),
        learning_curves=_learning_curves(records, histories),
        skipped=[{k: v for k, v in entry.items() if k != "category"} for entry in skipped],
        notes=report_notes,
        cost_metrics=cost_metrics,
        group_configs=group_configs,
        next_step=missing_baseline(groups, group_keys, baseline),
    )


def _kept_runs(
    runs: pd.DataFrame,
    predictions: Mapping[str, pd.DataFrame],
    group_keys: Sequence[str],
    include_unfinished: bool,
    newest_comparable_set: bool,
    notes: list[str],
    baseline: str | None,
) -> tuple[list[RunRecord], list[dict[str, str]]]:
    """The runs the report keeps and those it skips; what it noticed on the way is appended to ``notes``."""
    records, skipped, prediction_notes = _screen_runs(
        runs, predictions, group_keys, _cost_metric_columns(runs), include_unfinished
    )
    notes += prediction_notes + _skip_notes(len(runs), records, skipped)
    if newest_comparable_set:
        records = configs.newest_comparable_set(runs, records, group_keys, notes, baseline)
    return records, skipped


def _check_settings(runs: pd.DataFrame, group_keys: Sequence[str], alpha: float, confidence: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise BertpooledError(f"alpha must lie strictly between 0 and 1, got {alpha}: pass e.g. 0.05")
    if not 0.0 < confidence < 1.0:
        raise BertpooledError(f"confidence must lie strictly between 0 and 1, got {confidence}: pass e.g. 0.95")
    if len(runs) and "run_id" not in runs.columns:
        raise BertpooledError("the runs table has no run_id column: pass the frame mlflow.search_runs returns")
    if len(runs):
        _check_group_columns(runs, group_keys)


def _skip_notes(n_runs: int, records: Sequence[RunRecord], skipped: Sequence[dict[str, str]]) -> list[str]:
    """How many runs were kept, then one note per skipped run saying why."""
    notes = []
    if skipped:
        reasons = pd.Series([entry["category"] for entry in skipped]).value_counts()
        breakdown = ", ".join(f"{count} {category}" for category, count in reasons.items())
        notes.append(
            f"kept {len(records)} of the {n_runs} runs given to the report; skipped {len(skipped)} ({breakdown})"
        )
        notes += [f"skipped {entry['run_name']} ({entry['run_id']}): {entry['reason']}" for entry in skipped]
    if not records:
        notes.append("no runs left to report: check the selection and the notes above")
    return notes


def _normalise_group_by(group_by: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(group_by, str):
        group_by = [group_by]
    # The CLI may pass "mode,model" as one value; accept both spellings.
    keys = tuple(key.strip() for item in group_by for key in str(item).split(",") if key.strip())
    if not keys:
        raise BertpooledError("group_by is empty: pass --group-by mode (or another config key)")
    return keys


def _key_columns(key: str) -> tuple[str, ...]:
    return (f"params.{CONFIG_PARAM_PREFIX}{key}", f"params.{key}", f"tags.{key}")


def _check_group_columns(runs: pd.DataFrame, group_keys: Sequence[str]) -> None:
    for key in group_keys:
        if not any(column in runs.columns for column in _key_columns(key)):
            prefix = f"params.{CONFIG_PARAM_PREFIX}"
            available = sorted(column.removeprefix(prefix) for column in runs.columns if column.startswith(prefix))
            raise BertpooledError(
                f"cannot group by {key!r}: the runs have no {prefix}{key}, params.{key} "
                f"or tags.{key}; pass --group-by one of: {', '.join(available) or 'mode'}"
            )


def _lookup(row: pd.Series, key: str) -> str | None:
    for column in _key_columns(key):
        value = row.get(column)
        if value is not None and not pd.isna(value) and str(value) != "":
            return str(value)
    return None


def _metric(row: pd.Series, name: str) -> float:
    value = row.get(f"metrics.{name}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _cost_metric_columns(runs: pd.DataFrame) -> list[str]:
    return [
        column.removeprefix("metrics.")
        for column in runs.columns
        if column.startswith("metrics.")
        and column.removeprefix("metrics.").startswith(COST_PREFIXES)
        and column.removeprefix("metrics.") not in NOT_COSTS
    ]


def _ordered_cost_metrics(metrics: Iterable[str]) -> list[str]:
    present = set(metrics)
    known = [metric for metric in KNOWN_COST_ORDER if metric in present]
    return known + sorted(present - set(known))


def _run_name(row: pd.Series) -> str:
    name = row.get(f"tags.{RUN_NAME_TAG}")
    if isinstance(name, str) and name:
        return name
    return str(row.get("run_id"))[:8]


def _prediction_problem(frame: pd.DataFrame | None) -> str | None:
    if frame is None:
        return f"no {PREDICTIONS_PATH} artifact"
    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        return f"{PREDICTIONS_PATH} lacks column(s) {', '.join(missing)}"
    if frame.empty:
        return f"{PREDICTIONS_PATH} is empty"
    return None


def _screen_runs(
    runs: pd.DataFrame,
    predictions: Mapping[str, pd.DataFrame],
    group_keys: Sequence[str],
    cost_columns: Sequence[str],
    include_unfinished: bool,
) -> tuple[list[RunRecord], list[dict[str, str]], list[str]]:
    records: list[RunRecord] = []
    skipped: list[dict[str, str]] = []
    notes: list[str] = []
    for _, row in runs.iterrows():
        run_id = str(row["run_id"])
        name = _run_name(row)

        # run_id and name bound now (B023), though skip is only called within this iteration.
        def skip(category: str, reason: str, run_id: str = run_id, name: str = name) -> None:
            skipped.append({"run_id": run_id, "run_name": name, "reason": reason, "category": category})

        kind = row.get(f"tags.{KIND_TAG}")
        status = str(row.get("status", FINISHED))
        values = {key: _lookup(row, key) for key in group_keys}
        missing_metrics = [metric for metric in REQUIRED_METRICS if not finite(_metric(row, metric))]
        if not counts_as_training(kind):
            skip("not training runs", f"tagged {KIND_TAG}={kind}, not a training run")
        elif status != FINISHED and not include_unfinished:
            skip("unfinished", f"status {status}, not {FINISHED}; pass --include-unfinished to keep it")
        elif any(value is None for value in values.values()):
            key = next(key for key, value in values.items() if value is None)
            skip("missing group key", f"no value for group key {key!r} (looked in {', '.join(_key_columns(key))})")
        elif missing_metrics:
            skip("missing contract metrics", f"missing contract metric(s) {', '.join(missing_metrics)}")
        elif (problem := _prediction_problem(predictions.get(run_id))) is not None:
            skip("missing predictions", problem)
        else:
            record = _run_record(row, run_id, name, status, values, cost_columns)
            records.append(record)
            mismatch = _prediction_accuracy_mismatch(predictions[run_id], record.accuracy)
            if mismatch:
                notes.append(f"{name} ({run_id}): {mismatch}")
    return records, skipped, notes


def _run_record(
    row: pd.Series,
    run_id: str,
    name: str,
    status: str,
    values: dict[str, str | None],
    cost_columns: Sequence[str],
) -> RunRecord:
    costs = {metric: _metric(row, metric) for metric in cost_columns}
    try:
        epochs = float(_lookup(row, "epochs") or "nan")
    except ValueError:
        epochs = math.nan
    train_s = costs.get(TIME_TRAIN, math.nan)
    costs[TIME_PER_EPOCH] = train_s / epochs if finite(train_s) and finite(epochs) and epochs > 0 else math.nan
    label = "/".join(str(value) for value in values.values())
    return RunRecord(
        run_id=run_id,
        run_name=name,
        status=status,
        group=label,
        group_values={key: str(value) for key, value in values.items()},
        seed=_lookup(row, "seed"),
        mode=_lookup(row, "mode"),
        backbone=_lookup(row, "model") or _lookup(row, "backbone"),
        accuracy=_metric(row, ACCURACY.key),
        quality={metric.name: _metric(row, metric.key) for metric in contract.quality_means()},
        costs=costs,
        cache_hits=[cache for cache in CACHED_PHASES if _metric(row, cache_hit_metric(cache)) == 1.0],
    )


def _prediction_accuracy_mismatch(frame: pd.DataFrame, logged: float) -> str | None:
    # A disagreement means the artifact and the metric describe different
    # evaluations, which would make the McNemar test contradict the t-test.
    predicted = (frame["probability"].astype(float) >= THRESHOLD).astype(int)
    accuracy = float((predicted == frame["label"].astype(int)).mean())
    if abs(accuracy - logged) > _PREDICTION_ACCURACY_TOLERANCE:
        return (
            f"{PREDICTIONS_PATH} gives accuracy {accuracy:.4f} but {ACCURACY.key} is "
            f"{logged:.4f}; the McNemar test uses the predictions"
        )
    return None


def _summarise_groups(
    records: Sequence[RunRecord],
    group_keys: Sequence[str],
    baseline: str | None,
    cost_metrics: Sequence[str],
    confidence: float,
) -> list[GroupSummary]:
    by_label: dict[str, list[RunRecord]] = {}
    for record in records:
        by_label.setdefault(record.group, []).append(record)

    def order(label: str) -> tuple[int, str]:
        first = by_label[label][0].group_values[group_keys[0]]
        return (0 if first == baseline else 1, label)

    groups = []
    for label in sorted(by_label, key=order):
        members = by_label[label]
        seeds = sorted({m.seed for m in members if m.seed is not None}, key=seed_order)
        groups.append(
            GroupSummary(
                label=label,
                values=dict(members[0].group_values),
                n_runs=len(members),
                run_ids=[m.run_id for m in members],
                seeds=seeds,
                accuracy=mean_ci([m.accuracy for m in members], confidence),
                quality_means={
                    metric.name: mean(m.quality.get(metric.name, math.nan) for m in members)
                    for metric in contract.quality_means()
                },
                costs={metric: median(m.costs.get(metric, math.nan) for m in members) for metric in cost_metrics},
                cache_hits={
                    cache: sum(cache in m.cache_hits for m in members)
                    for cache in CACHED_PHASES
                    if any(cache in m.cache_hits for m in members)
                },
            )
        )
    return groups


def _learning_curves(
    records: Sequence[RunRecord], histories: Mapping[str, pd.DataFrame] | None
) -> dict[str, dict[str, list[dict[str, float]]]]:
    if not histories:
        return {}
    frames = []
    for record in records:
        history = histories.get(record.run_id)
        if history is None or history.empty:
            continue
        frames.append(history[["key", "step", "value"]].assign(group=record.group))
    if not frames:
        return {}
    combined = pd.concat(frames, ignore_index=True)
    summary = combined.groupby(["group", "key", "step"])["value"].agg(["mean", "count"]).reset_index()
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for (group, key), part in summary.groupby(["group", "key"], sort=True):
        curves.setdefault(str(group), {})[str(key)] = [
            {"step": int(step), "mean": float(average), "n": int(count)}
            for step, average, count in part[["step", "mean", "count"]].itertuples(index=False)
        ]
    return curves
