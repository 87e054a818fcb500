"""The runs-table view the printed MLflow UI link opens: which columns, which runs, which charts first.

MLflow 3's UI keeps a view as an experiment tag and opens it from the URL (its "Share" button does the
same): the tag `mlflow.sharedViewState.<key>` holds the page's state as JSON, and
`#/experiments/<id>/runs?viewStateShareKey=<key>` loads it (mlflow/server/js, `useSharedExperimentViewState`:
the search facets `searchFilter`/`orderByKey`/`orderByAsc` go to the URL, the `EXPERIMENT_PAGE_UI_STATE_FIELDS`
(selected columns, chart cards and sections) replace the page's UI state). This module builds that state;
`tracking` writes the tag. Pure data, no MLflow import, so tests can check it.
"""

from __future__ import annotations

import hashlib
import json

from bertpooled.contract import (
    ACCURACY,
    CONFIG_PARAM_PREFIX,
    KIND_TAG,
    KIND_TRAIN,
    KIND_TRIAL,
    PARAMS_BACKBONE,
    PARAMS_HEAD,
    PARAMS_HEAD_TRAINABLE,
    PHASES,
    PROTOCOL_TAG,
    QUALITY_METRICS,
    THROUGHPUT_TRAIN,
    TIME_EPOCH,
    TIME_GROUP_TRAIN,
    TIME_TOTAL,
    TIME_TRAIN,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TUNE_STATE_TAG,
    TUNE_STUDY_TAG,
    TUNE_TRIAL_TAG,
    VAL_ACCURACY,
    time_metric,
)

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
SHARE_URL_PARAM = "viewStateShareKey"
# Without this experiment tag MLflow 3 guesses the experiment's kind and may open its GenAI pages.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# What a user came for, left to right. Tags and params are strings, metrics numbers.
COLUMNS = (
    ("tags", "mode"),
    ("tags", "backbone"),
    ("params", f"{CONFIG_PARAM_PREFIX}seed"),
    ("tags", PROTOCOL_TAG),
    ("metrics", ACCURACY.key),
    ("metrics", TIME_TOTAL),
    ("metrics", PARAMS_HEAD),
    # The chain of runs (issue 29): which run a student started from and which taught it (empty otherwise).
    ("tags", "init_from"),
    ("tags", "distill_from"),
)
TRAINING_RUNS_FILTER = f"tags.`{KIND_TAG}` = '{KIND_TRAIN}'"
# Newest first by end time, not start time: MLflow's runs table nests children under their parent only when
# sorted by start time (or unsorted and unfiltered; `nestChildren` in mlflow/server/js's runs table), and then
# shows a sweep's parent, collapsed, in place of its children. Sorted by end time the table is flat: every
# training run, sweep children included, is a row and a series in the charts (benchmarks/ui_check/ui_check.py).
# Backquoted: the sort button's label is the name between the backquotes (`ExperimentViewRunsSortSelectorV2`:
# a key that is neither one of its attribute keys nor `kind.\`name\`` read "Sort: undefined").
ORDER_BY = "attributes.`end_time`"

# Chart sections in this order; any other metric prefix MLflow finds is appended after them.
SECTIONS = (
    "train",
    "test",
    "time",
    "params",
    "throughput",
    "cost",
    "latency",
    "memory",
    "data",
    "tokens",
    "features",
    "train_features",
    "teacher",
    "runtime",
    "process",
)
# Every final metric the runs log (once, at the last epoch's step): MLflow would draw each as a one-dot line
# chart, so each gets a bar per run. Listed ahead of time because the view is one state for every run; a
# metric a run did not log has no card (hideEmptyCharts).
FINAL_METRICS = (
    *(metric.key for metric in QUALITY_METRICS),
    TIME_TOTAL,
    TIME_TRAIN,
    *(time_metric(phase) for phase in PHASES if phase not in ("train", "total")),
    TIME_GROUP_TRAIN,
    PARAMS_HEAD,
    PARAMS_HEAD_TRAINABLE,
    PARAMS_BACKBONE,
    "params/backbone_trainable",
    "params/embeddings",
    THROUGHPUT_TRAIN,
    "throughput/infer_examples_per_s",
    "throughput/infer_examples_per_s_b256",
    "cost/backbone_flops_per_example",
    "cost/head_flops_per_example",
    "latency/p50_ms",
    "latency/p95_ms",
    "latency/batch256_p50_ms",
    "memory/peak_mb",
    "process/peak_mb",
    "data/train_examples",
    "data/test_examples",
    "tokens/cache_hit",
    "features/cache_hit",
    "train_features/cache_hit",
    "teacher/cache_hit",
    "runtime/threads",
)
# (metric, chart): learning curves first, then the final figures as one bar per run.
CHARTS = (
    (TRAIN_LOSS, "LINE"),
    (TRAIN_ACCURACY, "LINE"),
    *((metric.key, "BAR") for metric in QUALITY_METRICS),
    (TIME_EPOCH, "LINE"),
    *((metric, "BAR") for metric in FINAL_METRICS if metric not in {m.key for m in QUALITY_METRICS}),
)


# The runs table's own first columns (their ag-grid column ids, as MLflow 3.17's page has them), kept first.
LEADING_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo")


def _column_key(kind: str, name: str) -> str:
    """The UI's canonical column id (`makeCanonicalSortKey`): kind.`name`."""
    return f"{kind}.`{name}`"


def _uuid(text: str) -> str:
    # Stable ids keep the state, and so its share key, the same from run to run.
    return "bertpooled-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _chart(metric: str, kind: str) -> dict:
    section = metric.split("/", 1)[0]
    card: dict = {
        "uuid": _uuid(f"chart:{metric}"),
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": _uuid(f"section:{section}"),
        "deleted": False,
        # Not "generated": MLflow turns a generated bar chart of a stepped metric back into a line chart.
        "isGenerated": False,
        "displayName": metric,
        "metricKey": metric,
    }
    if kind == "LINE":
        card.update(
            {
                "selectedMetricKeys": [metric],
                "lineSmoothness": 0,
                "xAxisScaleType": "linear",
                "scaleType": "linear",
                "range": {},
                "xAxisKey": "step",
                "selectedXAxisMetricKey": "",
                "yAxisKey": "metric",
                "yAxisExpressions": [],
                "ignoreOutliers": False,
                "useGlobalXaxisKey": True,
                "useGlobalLineSmoothing": True,
            }
        )
    return card


def training_view_state() -> dict:
    """The experiment page's state: training runs only, newest first, the columns and charts above.

    Every UI-state field is given because the UI replaces its whole state with the shared one.
    """
    return {
        "searchFilter": TRAINING_RUNS_FILTER,
        "orderByKey": ORDER_BY,
        "orderByAsc": False,
        "selectedColumns": [_column_key(kind, name) for kind, name in COLUMNS],
        # The identifying columns first, after the run's name: MLflow's table otherwise groups them by kind
        # (metrics, then params, then tags), which put mode and backbone at the far right.
        "columnOrder": [*LEADING_COLUMNS, *(_column_key(kind, name) for kind, name in COLUMNS)],
        "columnWidths": {},
        "runsExpanded": {},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [_chart(metric, kind) for metric, kind in CHARTS],
        "compareRunSections": [
            {"uuid": _uuid(f"section:{name}"), "name": name, "display": True, "isReordered": True, "deleted": False}
            for name in SECTIONS
        ],
        "viewMaximized": False,
        "runListHidden": False,
        # Keeps the sections in the order above; MLflow otherwise sorts them by name.
        "isAccordionReordered": True,
        "groupBy": None,
        "groupsExpanded": {},
        "autoRefreshEnabled": True,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def view_tag(state: dict, kind: str = "train") -> tuple[str, str, str]:
    """(share key, experiment tag key, tag value) for a view state; the key is the digest of the state."""
    value = json.dumps(state, separators=(",", ":"), sort_keys=True)
    key = f"bertpooled-{kind}-" + hashlib.sha256(value.encode()).hexdigest()[:10]
    return key, SHARE_TAG_PREFIX + key, value


# The tuning view: one study's trials as rows, best validation accuracy first, state (COMPLETE, PRUNED, FAIL)
# beside it; then the searched values. Pruned and failed trials stay rows (MLflow shows their KILLED/FAILED
# status icon too); a failed trial has no val/accuracy and sorts last.
TUNING_COLUMNS = (
    ("tags", TUNE_TRIAL_TAG),
    ("tags", TUNE_STATE_TAG),
    ("metrics", VAL_ACCURACY),
    ("tags", "mode"),
)
TUNING_ORDER_BY = f"metrics.`{VAL_ACCURACY}`"
TUNING_SECTIONS = ("val", "train", "tune", "time", "data")


def _parallel_chart(params: list[str]) -> dict:
    """MLflow's parallel-coordinates card (`RunsChartsParallelCardConfig`): one line per trial through its values."""
    return {
        "uuid": _uuid("chart:parallel"),
        "type": "PARALLEL",
        "runsCountToCompare": 100,
        "metricSectionId": _uuid("section:val"),
        "deleted": False,
        "isGenerated": False,
        "selectedParams": params,
        "selectedMetrics": [VAL_ACCURACY],
        "showAllRuns": True,
    }


def tuning_view_state(study: str, searched: list[str]) -> dict:
    """The tuning experiment's page for study `study` whose space searched the config fields `searched`: its trials
    only, best val/accuracy first, trial/state/val/accuracy/mode then the searched values as columns; charts:
    val/accuracy per epoch (where the pruner stopped a trial), the searched values against it, the final score."""
    params = [f"{CONFIG_PARAM_PREFIX}{name}" for name in searched]
    columns = [*TUNING_COLUMNS, *(("params", name) for name in params)]
    charts = [
        _chart(VAL_ACCURACY, "LINE"),
        _parallel_chart(params),
        _chart("tune/value", "BAR"),
        _chart(TRAIN_LOSS, "LINE"),
        _chart(TIME_TRAIN, "BAR"),
    ]
    # The study's name (`--study` plus the mode) inside the filter's quotes: a quote in it escaped.
    study_filter = study.replace("'", "\\'")
    return {
        **training_view_state(),
        "searchFilter": f"tags.`{KIND_TAG}` = '{KIND_TRIAL}' AND tags.`{TUNE_STUDY_TAG}` = '{study_filter}'",
        "orderByKey": TUNING_ORDER_BY,
        "orderByAsc": False,
        "selectedColumns": [_column_key(kind, name) for kind, name in columns],
        "columnOrder": [*LEADING_COLUMNS, *(_column_key(kind, name) for kind, name in columns)],
        "compareRunCharts": charts,
        "compareRunSections": [
            {"uuid": _uuid(f"section:{name}"), "name": name, "display": True, "isReordered": True, "deleted": False}
            for name in TUNING_SECTIONS
        ],
    }
