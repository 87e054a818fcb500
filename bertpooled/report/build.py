"""Turn tracked training runs into a comparison report: a pure function of its inputs.

``build_report`` takes the rows ``mlflow.search_runs`` returns, the per-example
test predictions and (optionally) the per-epoch metric histories, and returns a
:class:`Report`: per-group accuracy and cost, ratios and significance tests
against a baseline group, a verdict per group, the original study's numbers
beside the reproduced ones, and notes naming every run it skipped and why.
It reads no files and talks to no server; ``bertpooled.report.compare`` does the
fetching.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from bertpooled.errors import BertpooledError
from bertpooled.report.stats import McNemarResult, MeanCI, PairedDifference, holm, mcnemar_exact, mean_ci, paired_difference

__all__ = [
    "COST_PREFIXES",
    "FORMATS",
    "ORIGINAL_STUDY",
    "REQUIRED_METRICS",
    "Comparison",
    "GroupSummary",
    "McNemarPair",
    "OriginalResult",
    "Report",
    "RunRecord",
    "build_report",
]

# --- The MLflow contract this module reads -----------------------------------

#: Runs without these final metrics cannot be placed on the accuracy/compute
#: trade-off the project asks about, so the builder skips them.
REQUIRED_METRICS = ("test/accuracy", "time/total_s")
#: Metric-name prefixes treated as cost: every metric under them is summarised
#: (median per group) and compared (ratio to the baseline) without code changes.
COST_PREFIXES = ("time/", "throughput/", "params/", "cost/", "latency/", "memory/")
#: Contract metrics listed first, in this order; any other cost metric follows alphabetically.
_KNOWN_COST_ORDER = (
    "time/data_s",
    "time/tokenize_s",
    "time/features_s",
    "time/train_s",
    "time/eval_s",
    "time/total_s",
    "time/epoch_s",
    "time/train_s_per_epoch",
    "throughput/train_examples_per_s",
    "params/head",
    "params/head_trainable",
    "params/backbone",
)
#: The time each cache saves, by the name in its `<cache>/cache_hit` metric; total time includes them all.
CACHED_PHASES = {"tokens": ("time/tokenize_s", "time/total_s"), "features": ("time/features_s", "time/total_s")}
#: Logged per epoch; its last value beside the mean per epoch (TIME_PER_EPOCH) only confused the table.
_NOT_COSTS = ("time/epoch_s",)
#: Derived here, not logged: ``time/train_s`` divided by ``config/epochs``.
TIME_PER_EPOCH = "time/train_s_per_epoch"
_EXCLUDED_KINDS = ("sweep", "comparison")
#: Config fields that may differ between paired runs: the seed (pairing is by seed), the data path (the
#: data itself is compared by its digest, `data/digest`) and settings the config documents as having no
#: effect on results or costs.
_FREE_CONFIG_FIELDS = ("seed", "data", "description", "eval_batch_size")
#: Config fields a group-by key decides: `mode` sets the pooling preset unless `pool` is given; `variant` (the
#: encoder runs' tag) spells out its features, fine-tuning, pooling and where the pooling sits.
_DERIVED_CONFIG_FIELDS = {"mode": ("pool",), "variant": ("features", "finetune", "pool", "pool_at")}
_DATA_DIGEST = "params.data/digest"
_PREDICTION_COLUMNS = ("id", "label", "probability")
#: predictions/test.csv accuracy may differ from the logged metric by rounding only.
_PREDICTION_ACCURACY_TOLERANCE = 1e-3
FORMATS = ("table", "markdown", "json", "csv")
_MISSING = "—"


# --- The original study (docs/original.md), kept in one place ------------------


@dataclass(frozen=True)
class OriginalResult:
    """One row of the original study's results table."""

    mode: str  # this project's mode name
    original_name: str  # the name the original code used
    run: int
    accuracy: float
    wall_time_min: float
    head_params_keras: int
    head_params_pytorch: int


#: The results the original study reported (TensorFlow/Keras on a Colab GPU,
#: bert-base-uncased input embeddings, 3/4 of IMDB train, one wall-clock figure
#: per mode covering embedding, training and evaluation). Parameter counts are
#: the classifier head's; nn.LSTM's layout (lstm_bias=torch) keeps a second bias
#: vector, so the same layer counts 64 more there.
ORIGINAL_STUDY = (
    OriginalResult("basic", "basic_lstm", 1, 0.8144, 13.64, 50_257, 50_321),
    OriginalResult("pool", "pool", 1, 0.8156, 12.31, 25_681, 25_745),
    OriginalResult("basic", "basic_lstm", 2, 0.8250, 15.02, 50_257, 50_321),
    OriginalResult("pool", "pool", 2, 0.8048, 13.58, 25_681, 25_745),
)
_ORIGINAL_STUDY_CAVEAT = (
    "The original timed one wall-clock figure per mode (embedding, training and evaluation) "
    "on a Colab GPU with bert-base-uncased embeddings; reproduced times are the median "
    "time/total_s on this project's hardware and backbone, so compare their ratio, not their size. "
    "Original head parameters are Keras counts; this project's head has Keras's layout (one LSTM gate bias, "
    "lstm_bias=keras) and the same counts at the same width; runs with lstm_bias=torch train nn.LSTM's second "
    "bias vector and count 64 more (50,321 and 25,745 at width 768)."
)


# --- Report records -----------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One kept training run, reduced to what the report and plots use."""

    run_id: str
    run_name: str
    status: str
    group: str
    group_values: dict[str, str]
    seed: str | None
    mode: str | None
    backbone: str | None
    accuracy: float
    f1: float
    roc_auc: float
    costs: dict[str, float]
    #: Which caches this run found warm (`tokens/cache_hit`, `features/cache_hit` = 1): "tokens", "features".
    cache_hits: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupSummary:
    """Accuracy and cost of one group of runs (one value of the group-by keys)."""

    label: str
    values: dict[str, str]
    n_runs: int
    run_ids: list[str]
    seeds: list[str]
    accuracy: MeanCI
    f1_mean: float
    roc_auc_mean: float
    costs: dict[str, float]  # median per cost metric; NaN where no run logged it
    #: Per cache ("tokens", "features"), how many of the group's runs found it warm.
    cache_hits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class McNemarPair:
    """Exact McNemar test between one group run and the baseline run with the same seed.

    ``b`` counts test examples only the group's run got right, ``c`` those only
    the baseline's run got right.
    """

    seed: str
    run_id: str
    baseline_run_id: str
    b: int
    c: int
    n: int
    p_value: float
    significant: bool


@dataclass(frozen=True)
class Comparison:
    """One group against the baseline: cost ratios, accuracy difference, tests, verdict."""

    group: str
    baseline: str
    paired_seeds: list[str]
    accuracy_difference_points: PairedDifference  # 100 * (group - baseline), paired by seed
    ratios: dict[str, float]  # group median / baseline median per cost metric
    mcnemar: list[McNemarPair]
    mcnemar_refused: list[dict[str, str]]
    verdict: str
    #: Caches one group found warm more often than the other: their phases' time ratios measure the
    #: cache, not the mode (see `CACHED_PHASES`).
    cache_differs: list[str] = field(default_factory=list)
    #: The paired t-test's p-value after Holm's correction across all comparisons of the report
    #: (the raw p when there is one comparison); verdicts use this one.
    p_holm: float = math.nan

    @property
    def mcnemar_significant(self) -> int:
        """How many seed pairs the McNemar test found significant."""
        return sum(pair.significant for pair in self.mcnemar)


@dataclass(frozen=True)
class OriginalStudyRow:
    """A row of the original-study section: an original run or a reproduced group."""

    source: str
    mode: str
    n_runs: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    total_time_min: float
    head_params: float
    backbones: str


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`build_report`; render it with ``to_*`` or :meth:`render`."""

    group_by: tuple[str, ...]
    baseline: str | None
    alpha: float
    confidence: float
    runs: list[RunRecord]
    groups: list[GroupSummary]
    comparisons: list[Comparison]
    original_study: list[OriginalStudyRow]
    learning_curves: dict[str, dict[str, list[dict[str, float]]]]
    skipped: list[dict[str, str]]
    notes: list[str]
    cost_metrics: list[str]
    comparison_run_id: str | None = None
    #: Per group, the config its runs share (seed excluded); the same for every group but the group keys.
    group_configs: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- structured output --

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinities become ``None``)."""
        payload = {
            "schema": "bertpooled.report/1",
            "settings": {
                "group_by": list(self.group_by),
                "baseline": self.baseline,
                "alpha": self.alpha,
                "confidence": self.confidence,
            },
            "runs": [asdict(run) for run in self.runs],
            "groups": [asdict(group) for group in self.groups],
            "comparisons": [
                {**asdict(comparison), "mcnemar_significant": comparison.mcnemar_significant}
                for comparison in self.comparisons
            ],
            "original_study": {
                "caveat": _ORIGINAL_STUDY_CAVEAT,
                "rows": [asdict(row) for row in self.original_study],
            },
            "learning_curves": self.learning_curves,
            "cost_metrics": list(self.cost_metrics),
            "group_configs": self.group_configs,
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "comparison_run_id": self.comparison_run_id,
        }
        return _json_safe(payload)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_csv(self) -> str:
        """One CSV row per group: accuracy, cost medians and, for non-baseline groups,
        the comparison with the baseline."""
        by_group = {comparison.group: comparison for comparison in self.comparisons}
        rows = []
        for group in self.groups:
            row: dict[str, Any] = {"group": group.label}
            row.update({key: group.values.get(key) for key in self.group_by})
            row.update(
                {
                    "n_runs": group.n_runs,
                    "seeds": ";".join(group.seeds),
                    "accuracy_mean": group.accuracy.mean,
                    "accuracy_ci_low": group.accuracy.low,
                    "accuracy_ci_high": group.accuracy.high,
                    "f1_mean": group.f1_mean,
                    "roc_auc_mean": group.roc_auc_mean,
                }
            )
            row.update({f"median:{metric}": group.costs.get(metric) for metric in self.cost_metrics})
            comparison = by_group.get(group.label)
            diff = comparison.accuracy_difference_points if comparison else None
            row.update(
                {
                    "baseline": comparison.baseline if comparison else None,
                    "seed_pairs": diff.n if diff else None,
                    "accuracy_diff_points": diff.mean if diff else None,
                    "accuracy_diff_ci_low": diff.low if diff else None,
                    "accuracy_diff_ci_high": diff.high if diff else None,
                    "paired_t_p": diff.p_value if diff else None,
                    "paired_t_p_holm": comparison.p_holm if comparison else None,
                    "mcnemar_significant": comparison.mcnemar_significant if comparison else None,
                    "mcnemar_pairs": len(comparison.mcnemar) if comparison else None,
                }
            )
            row.update(
                {
                    f"ratio:{metric}": comparison.ratios.get(metric) if comparison else None
                    for metric in self.cost_metrics
                }
            )
            row["verdict"] = comparison.verdict if comparison else None
            rows.append(row)
        buffer = io.StringIO()
        # convert_dtypes keeps counts as integers in columns that are empty for the baseline row.
        pd.DataFrame(rows).convert_dtypes().to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()

    # -- human-readable output --

    def to_markdown(self) -> str:
        """The report as a Markdown document."""
        lines = ["# bertpooled comparison report", ""]
        for section in self._sections():
            lines += [f"## {section.title}", ""]
            for paragraph in section.paragraphs:
                lines += [paragraph, ""]
            for table in section.tables:
                lines += [_markdown_table(*table), ""]
            if section.bullets:
                lines += [f"- {bullet}" for bullet in section.bullets] + [""]
        return "\n".join(lines).rstrip() + "\n"

    def to_table(self) -> str:
        """The report as plain terminal text with aligned columns."""
        lines: list[str] = []
        for section in self._sections():
            lines += [section.title, "=" * len(section.title)]
            for paragraph in section.paragraphs:
                lines += [paragraph]
            for table in section.tables:
                lines += [_text_table(*table)]
            lines += [f"  * {bullet}" for bullet in section.bullets]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def render(self, format: str) -> str:  # noqa: A002 - mirrors the CLI's --format
        """The report in one of :data:`FORMATS` (``table``, ``markdown``, ``json``, ``csv``)."""
        renderers = {
            "table": self.to_table,
            "markdown": self.to_markdown,
            "json": self.to_json,
            "csv": self.to_csv,
        }
        if format not in renderers:
            raise BertpooledError(
                f"unknown report format {format!r}: pass --format one of {', '.join(FORMATS)}"
            )
        return renderers[format]()

    def sections(self) -> list[_Section]:
        """The report's sections in order (title, paragraphs, tables, bullets), for renderers such as HTML."""
        return self._sections()

    def _sections(self) -> list[_Section]:
        sections = [self._verdict_section(), self._groups_section()]
        if self.cost_metrics and self.groups:
            sections.append(self._costs_section())
        if self.comparisons:
            sections += [self._baseline_section(), self._mcnemar_section()]
        if self.group_configs:
            sections.append(self._config_section())
        sections.append(self._original_section())
        sections.append(_Section("Notes", bullets=list(self.notes) or ["none"]))
        return sections

    def _verdict_section(self) -> _Section:
        n_kept, n_skipped = len(self.runs), len(self.skipped)
        summary = (
            f"{n_kept} run(s) in {len(self.groups)} group(s) by {', '.join(self.group_by)}"
            f"{f'; {n_skipped} skipped (see Notes)' if n_skipped else ''}; "
            f"baseline: {self.baseline or 'none'}; α={self.alpha:g}; "
            f"{_percent(self.confidence)} intervals."
        )
        bullets = [comparison.verdict for comparison in self.comparisons]
        if not bullets:
            bullets = ["no comparison against a baseline (see Notes)"]
        return _Section("Verdicts", paragraphs=[summary], bullets=bullets)

    def _groups_section(self) -> _Section:
        ci = f"{_percent(self.confidence)} CI"
        headers = ["group", "runs", "seeds", "accuracy", ci, "F1", "ROC AUC",
                   "mean s/epoch", "total s", "head params", "warm caches"]
        rows = [
            [
                group.label,
                str(group.n_runs),
                # "s0,s1": the seed values, as in run names; a bare "0" read as "no seeds".
                ",".join(f"s{seed}" for seed in group.seeds) or _MISSING,
                _fmt_fraction(group.accuracy.mean),
                _fmt_interval(group.accuracy.low, group.accuracy.high, 4),
                _fmt_fraction(group.f1_mean),
                _fmt_fraction(group.roc_auc_mean),
                _fmt_number(group.costs.get(TIME_PER_EPOCH, math.nan)),
                _fmt_number(group.costs.get("time/total_s", math.nan)),
                _fmt_number(group.costs.get("params/head", math.nan)),
                ", ".join(f"{cache} {n}/{group.n_runs}" for cache, n in group.cache_hits.items()) or "none",
            ]
            for group in self.groups
        ]
        paragraphs = [] if rows else ["no runs to summarise"]
        if rows:
            paragraphs.append("seeds: the config/seed values of the group's runs; mean s/epoch: time/train_s / epochs; "
                              "warm caches: runs that found their token ids (or features) cached, whose tokenize "
                              "(features) time is then a cache read.")
        return _Section("Groups", paragraphs=paragraphs, tables=[(headers, rows)] if rows else [])

    def _costs_section(self) -> _Section:
        headers = ["metric (median)"] + [group.label for group in self.groups]
        rows = [
            [metric] + [_fmt_number(group.costs.get(metric, math.nan)) for group in self.groups]
            for metric in self.cost_metrics
        ]
        note = ("Medians per group. time/data_s and time/tokenize_s are mostly cache reads once the parsed archive "
                "and token ids are cached (the first run of a machine pays them), so compare modes by time/train_s.")
        return _Section("Costs", paragraphs=[note], tables=[(headers, rows)])

    def _baseline_section(self) -> _Section:
        ci = f"{_percent(self.confidence)} CI"
        accuracy_headers = ["group", "seed pairs", "Δ accuracy (points)", ci, "paired t p", "Holm p",
                            "McNemar significant"]
        accuracy_rows = [
            [
                comparison.group,
                str(comparison.accuracy_difference_points.n),
                _fmt_signed(comparison.accuracy_difference_points.mean),
                _fmt_interval(comparison.accuracy_difference_points.low,
                              comparison.accuracy_difference_points.high, 2, signed=True),
                _fmt_p(comparison.accuracy_difference_points.p_value),
                _fmt_p(comparison.p_holm),
                f"{comparison.mcnemar_significant} of {len(comparison.mcnemar)}",
            ]
            for comparison in self.comparisons
        ]
        ratio_headers = ["metric (ratio)"] + [
            f"{comparison.group} / {comparison.baseline}" for comparison in self.comparisons
        ]
        ratio_rows = [
            [metric] + [_fmt_ratio(comparison.ratios.get(metric, math.nan)) + self._cache_mark(comparison, metric)
                        for comparison in self.comparisons]
            for metric in self.cost_metrics
        ]
        paragraphs = [
            "Δ accuracy = 100 × (group − baseline), paired by config/seed; the interval and "
            "p-value come from a paired t-test across seeds.",
            "Ratios are group median / baseline median: below 1 means less of that cost "
            "(for throughput/ metrics, above 1 means faster).",
        ]
        if any(comparison.cache_differs for comparison in self.comparisons):
            paragraphs.append("(cache): the two groups found this phase's cache warm in different numbers of "
                              "runs, so this ratio measures the cache, not the group.")
        tables = [(accuracy_headers, accuracy_rows)]
        if ratio_rows:
            tables.append((ratio_headers, ratio_rows))
        return _Section("Against the baseline", paragraphs=paragraphs, tables=tables)

    @staticmethod
    def _cache_mark(comparison: Comparison, metric: str) -> str:
        affected = {m for cache in comparison.cache_differs for m in CACHED_PHASES[cache]}
        return " (cache)" if metric in affected else ""

    def _mcnemar_section(self) -> _Section:
        headers = ["group", "seed", "only group right", "only baseline right", "examples",
                   "exact p", f"significant at α={self.alpha:g}"]
        rows = [
            [comparison.group, pair.seed, str(pair.b), str(pair.c), str(pair.n),
             _fmt_p(pair.p_value), "yes" if pair.significant else "no"]
            for comparison in self.comparisons
            for pair in comparison.mcnemar
        ]
        paragraphs = ["Exact McNemar test per seed pair on the per-example test predictions."]
        if not rows:
            paragraphs.append("No seed pair could be tested (see Notes).")
        return _Section("McNemar per seed pair", paragraphs=paragraphs,
                        tables=[(headers, rows)] if rows else [])

    def _config_section(self) -> _Section:
        """The settings every group shares, then those the group keys decide, one column per group."""
        labels = list(self.group_configs)
        names = sorted({name for config in self.group_configs.values() for name in config})
        shared = [n for n in names if len({c.get(n) for c in self.group_configs.values()}) == 1]
        by_group = [n for n in names if n not in shared]
        paragraphs = ["Runs are paired only when their configs differ in nothing but the group keys and the seed. "
                      "Shared by every group: " + ", ".join(f"{n}={self.group_configs[labels[0]][n]}" for n in shared) + "."]
        tables = []
        if by_group:
            tables.append((["config"] + labels, [[n] + [self.group_configs[g].get(n, _MISSING) for g in labels]
                                                 for n in by_group]))
        return _Section("Config", paragraphs=paragraphs, tables=tables)

    def _original_section(self) -> _Section:
        headers = ["source", "mode", "runs", "accuracy", "accuracy CI", "total min",
                   "head params", "backbone"]
        rows = [
            [
                row.source,
                row.mode,
                str(row.n_runs),
                _fmt_fraction(row.accuracy),
                _fmt_interval(row.accuracy_low, row.accuracy_high, 4),
                _fmt_number(row.total_time_min),
                _fmt_number(row.head_params),
                row.backbones,
            ]
            for row in self.original_study
        ]
        return _Section("Original study", paragraphs=[_ORIGINAL_STUDY_CAVEAT],
                        tables=[(headers, rows)])


@dataclass
class _Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


# --- The builder --------------------------------------------------------------


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
    """
    group_keys = _normalise_group_by(group_by)
    if not 0.0 < alpha < 1.0:
        raise BertpooledError(f"alpha must lie strictly between 0 and 1, got {alpha}: pass e.g. 0.05")
    if not 0.0 < confidence < 1.0:
        raise BertpooledError(
            f"confidence must lie strictly between 0 and 1, got {confidence}: pass e.g. 0.95"
        )
    if baseline == "":
        baseline = None
    report_notes = list(notes)
    if len(runs) and "run_id" not in runs.columns:
        raise BertpooledError(
            "the runs table has no run_id column: pass the frame mlflow.search_runs returns"
        )
    if len(runs):
        _check_group_columns(runs, group_keys)

    cost_columns = _cost_metric_columns(runs)
    records, skipped, pred_notes = _screen_runs(
        runs, predictions, group_keys, cost_columns, include_unfinished
    )
    report_notes += pred_notes
    if skipped:
        reasons = pd.Series([entry["category"] for entry in skipped]).value_counts()
        breakdown = ", ".join(f"{count} {category}" for category, count in reasons.items())
        report_notes.append(
            f"kept {len(records)} of the {len(runs)} runs given to the report; "
            f"skipped {len(skipped)} ({breakdown})"
        )
        report_notes += [
            f"skipped {entry['run_name']} ({entry['run_id']}): {entry['reason']}" for entry in skipped
        ]
    if not records:
        report_notes.append("no runs left to report: check the selection and the notes above")
    group_configs = _group_configs(runs, records, group_keys, report_notes)

    cost_metrics = _ordered_cost_metrics(
        metric for record in records for metric, value in record.costs.items() if _finite(value)
    )
    groups = _summarise_groups(records, group_keys, baseline, cost_metrics, confidence)
    comparisons, comparison_notes = _compare_groups(
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
        original_study=_original_study_rows(records, confidence),
        learning_curves=_learning_curves(records, histories),
        skipped=[{k: v for k, v in entry.items() if k != "category"} for entry in skipped],
        notes=report_notes,
        cost_metrics=cost_metrics,
        group_configs=group_configs,
    )


def _config_of(row: pd.Series) -> dict[str, str]:
    """A run's logged config (`params.config/*`) plus its data digest, as strings; unlogged fields left out."""
    config = {}
    for column, value in row.items():
        name = column.removeprefix("params.config/") if column.startswith("params.config/") else None
        if column == _DATA_DIGEST:
            name = "data/digest"
        if name and name not in _FREE_CONFIG_FIELDS and value is not None and not pd.isna(value):
            config[name] = str(value)
    return config


def _group_configs(
    runs: pd.DataFrame, records: Sequence[RunRecord], group_keys: Sequence[str], notes: list[str]
) -> dict[str, dict[str, str]]:
    """Each group's shared config; refuses runs whose configs differ in more than the group keys and seed.

    Pairing a 10-epoch run with a 3-epoch one would credit the mode with the epochs' effect, so any such
    difference is one line naming the fields, before any statistics are computed.
    """
    if not records:
        return {}
    rows = {str(row["run_id"]): row for _, row in runs.iterrows()}
    configs = {record.run_id: _config_of(rows[record.run_id]) for record in records}
    logged = [set(config) for config in configs.values()]
    # A field some runs never logged (runs from before it existed) cannot be compared; it is named in the notes.
    unknown = sorted(set().union(*logged) - set.intersection(*logged) - set(group_keys))
    if unknown:
        notes.append(f"config field(s) {', '.join(unknown)} not logged by every run (older runs?); not compared")
    fields = sorted(set.intersection(*logged) - set(group_keys))
    derived = {name for key in group_keys for name in _DERIVED_CONFIG_FIELDS.get(key, ())}
    differing = []
    for name in fields:
        if name in derived:
            # Decided by the group key: one value per group is expected, several within a group are not.
            by_group: dict[str, set[str]] = {}
            for record in records:
                by_group.setdefault(record.group, set()).add(configs[record.run_id][name])
            if any(len(values) > 1 for values in by_group.values()):
                differing.append(f"{name} ({', '.join(sorted(set().union(*by_group.values())))})")
            continue
        values = {configs[record.run_id][name] for record in records}
        if len(values) > 1:
            differing.append(f"{name} ({', '.join(sorted(values))})")
    if differing:
        raise BertpooledError(
            f"the selected runs differ in {'; '.join(differing)}, not only in {', '.join(group_keys)} and seed: "
            f"select comparable runs (--filter, --parent, --run-id) or group by those fields too "
            f"(--group-by {','.join(group_keys)},{differing[0].split(' ')[0]})"
        )
    result: dict[str, dict[str, str]] = {}
    for record in records:
        result.setdefault(record.group, dict(configs[record.run_id]))
    return result


def _normalise_group_by(group_by: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(group_by, str):
        group_by = [group_by]
    # The CLI may pass "mode,model" as one value; accept both spellings.
    keys = tuple(key.strip() for item in group_by for key in str(item).split(",") if key.strip())
    if not keys:
        raise BertpooledError("group_by is empty: pass --group-by mode (or another config key)")
    return keys


def _key_columns(key: str) -> tuple[str, ...]:
    return (f"params.config/{key}", f"params.{key}", f"tags.{key}")


def _check_group_columns(runs: pd.DataFrame, group_keys: Sequence[str]) -> None:
    for key in group_keys:
        if not any(column in runs.columns for column in _key_columns(key)):
            available = sorted(
                column.removeprefix("params.config/")
                for column in runs.columns
                if column.startswith("params.config/")
            )
            raise BertpooledError(
                f"cannot group by {key!r}: the runs have no params.config/{key}, params.{key} "
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def _cost_metric_columns(runs: pd.DataFrame) -> list[str]:
    return [
        column.removeprefix("metrics.")
        for column in runs.columns
        if column.startswith("metrics.") and column.removeprefix("metrics.").startswith(COST_PREFIXES)
        and column.removeprefix("metrics.") not in _NOT_COSTS
    ]


def _ordered_cost_metrics(metrics: Iterable[str]) -> list[str]:
    present = set(metrics)
    known = [metric for metric in _KNOWN_COST_ORDER if metric in present]
    return known + sorted(present - set(known))


def _run_name(row: pd.Series) -> str:
    name = row.get("tags.mlflow.runName")
    if isinstance(name, str) and name:
        return name
    return str(row.get("run_id"))[:8]


def _prediction_problem(frame: pd.DataFrame | None) -> str | None:
    if frame is None:
        return "no predictions/test.csv artifact"
    missing = [column for column in _PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        return f"predictions/test.csv lacks column(s) {', '.join(missing)}"
    if frame.empty:
        return "predictions/test.csv is empty"
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

        def skip(category: str, reason: str) -> None:
            skipped.append({"run_id": run_id, "run_name": name, "reason": reason, "category": category})

        kind = row.get("tags.bertpooled.kind")
        status = str(row.get("status", "FINISHED"))
        values = {key: _lookup(row, key) for key in group_keys}
        missing_metrics = [metric for metric in REQUIRED_METRICS if not _finite(_metric(row, metric))]
        if kind in _EXCLUDED_KINDS:
            skip("not training runs", f"tagged bertpooled.kind={kind}, not a training run")
        elif status != "FINISHED" and not include_unfinished:
            skip("unfinished", f"status {status}, not FINISHED; pass --include-unfinished to keep it")
        elif any(value is None for value in values.values()):
            key = next(key for key, value in values.items() if value is None)
            skip("missing group key", f"no value for group key {key!r} "
                 f"(looked in {', '.join(_key_columns(key))})")
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
    train_s = costs.get("time/train_s", math.nan)
    costs[TIME_PER_EPOCH] = train_s / epochs if _finite(train_s) and _finite(epochs) and epochs > 0 else math.nan
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
        accuracy=_metric(row, "test/accuracy"),
        f1=_metric(row, "test/f1"),
        roc_auc=_metric(row, "test/roc_auc"),
        costs=costs,
        cache_hits=[cache for cache in CACHED_PHASES if _metric(row, f"{cache}/cache_hit") == 1.0],
    )


def _prediction_accuracy_mismatch(frame: pd.DataFrame, logged: float) -> str | None:
    # A disagreement means the artifact and the metric describe different
    # evaluations, which would make the McNemar test contradict the t-test.
    predicted = (frame["probability"].astype(float) >= 0.5).astype(int)
    accuracy = float((predicted == frame["label"].astype(int)).mean())
    if abs(accuracy - logged) > _PREDICTION_ACCURACY_TOLERANCE:
        return (
            f"predictions/test.csv gives accuracy {accuracy:.4f} but test/accuracy is "
            f"{logged:.4f}; the McNemar test uses the predictions"
        )
    return None


def _seed_order(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def _median(values: Iterable[float]) -> float:
    finite = [value for value in values if _finite(value)]
    return float(np.median(finite)) if finite else math.nan


def _mean(values: Iterable[float]) -> float:
    finite = [value for value in values if _finite(value)]
    return float(np.mean(finite)) if finite else math.nan


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
        seeds = sorted({m.seed for m in members if m.seed is not None}, key=_seed_order)
        groups.append(
            GroupSummary(
                label=label,
                values=dict(members[0].group_values),
                n_runs=len(members),
                run_ids=[m.run_id for m in members],
                seeds=seeds,
                accuracy=mean_ci([m.accuracy for m in members], confidence),
                f1_mean=_mean(m.f1 for m in members),
                roc_auc_mean=_mean(m.roc_auc for m in members),
                costs={metric: _median(m.costs.get(metric, math.nan) for m in members)
                       for metric in cost_metrics},
                cache_hits={cache: sum(cache in m.cache_hits for m in members) for cache in CACHED_PHASES
                            if any(cache in m.cache_hits for m in members)},
            )
        )
    return groups


def _runs_by_seed(members: Sequence[RunRecord], label: str, notes: list[str]) -> dict[str, RunRecord]:
    by_seed: dict[str, RunRecord] = {}
    for record in members:
        if record.seed is None:
            notes.append(f"{record.run_name} ({record.run_id}) in {label} has no config/seed; "
                         "it counts in group statistics but cannot be paired")
            continue
        if record.seed in by_seed:
            # mlflow.search_runs lists newest first, so the first row kept is the latest run.
            notes.append(f"{label} has several runs with seed {record.seed}; pairing uses "
                         f"{by_seed[record.seed].run_name} and leaves {record.run_name} unpaired")
            continue
        by_seed[record.seed] = record
    return by_seed


def _compare_groups(
    groups: Sequence[GroupSummary],
    records: Sequence[RunRecord],
    predictions: Mapping[str, pd.DataFrame],
    group_keys: Sequence[str],
    baseline: str | None,
    alpha: float,
    confidence: float,
    cost_metrics: Sequence[str],
) -> tuple[list[Comparison], list[str]]:
    notes: list[str] = []
    if not groups:
        return [], notes
    if baseline is None:
        notes.append("no baseline chosen, so no comparison section; pass --baseline basic to compare")
        return [], notes
    first_key = group_keys[0]
    baselines = {
        tuple(group.values[key] for key in group_keys[1:]): group
        for group in groups
        if group.values[first_key] == baseline
    }
    if not baselines:
        values = sorted({group.values[first_key] for group in groups})
        raise BertpooledError(
            f"baseline {first_key}={baseline!r} is not among the groups: pass --baseline one of {', '.join(values)}"
        )

    members: dict[str, list[RunRecord]] = {}
    for record in records:
        members.setdefault(record.group, []).append(record)
    seed_maps = {group.label: _runs_by_seed(members[group.label], group.label, notes) for group in groups}

    comparisons = []
    for group in groups:
        if group.values[first_key] == baseline:
            continue
        rest = tuple(group.values[key] for key in group_keys[1:])
        base = baselines.get(rest)
        if base is None:
            notes.append(f"{group.label} has no baseline group with {first_key}={baseline} "
                         "and the same other keys; it is not compared")
            continue
        comparisons.append(
            _compare_pair(group, base, seed_maps[group.label], seed_maps[base.label],
                          predictions, alpha, confidence, cost_metrics, notes)
        )
    if len(comparisons) > 1:
        # Several groups against one baseline: each verdict uses its Holm-adjusted p-value.
        adjusted = holm([c.accuracy_difference_points.p_value for c in comparisons])
        seeds = {group.label: group.seeds for group in groups}
        comparisons = [
            replace(c, p_holm=p, verdict=_verdict(c.group, c.baseline, c.accuracy_difference_points, c.mcnemar,
                                                 alpha, confidence, c.ratios, seeds[c.group], seeds[c.baseline],
                                                 holm_p=p, n_comparisons=len(comparisons),
                                                 cache_differs=c.cache_differs))
            for c, p in zip(comparisons, adjusted)
        ]
        notes.append(f"{len(comparisons)} groups are compared with the baseline; the paired t-tests' p-values are "
                     "Holm-corrected across them (column 'Holm p'), and the verdicts use the corrected ones")
    else:
        comparisons = [replace(c, p_holm=c.accuracy_difference_points.p_value) for c in comparisons]
    return comparisons, notes


def _compare_pair(
    group: GroupSummary,
    base: GroupSummary,
    group_seeds: Mapping[str, RunRecord],
    base_seeds: Mapping[str, RunRecord],
    predictions: Mapping[str, pd.DataFrame],
    alpha: float,
    confidence: float,
    cost_metrics: Sequence[str],
    notes: list[str],
) -> Comparison:
    seeds = sorted(set(group_seeds) & set(base_seeds), key=_seed_order)
    difference = paired_difference(
        [100.0 * group_seeds[seed].accuracy for seed in seeds],
        [100.0 * base_seeds[seed].accuracy for seed in seeds],
        confidence,
    )
    ratios = {
        metric: _ratio(group.costs.get(metric, math.nan), base.costs.get(metric, math.nan))
        for metric in cost_metrics
    }
    tested: list[McNemarPair] = []
    refused: list[dict[str, str]] = []
    for seed in seeds:
        run, base_run = group_seeds[seed], base_seeds[seed]
        outcome = _mcnemar_for_pair(predictions[run.run_id], predictions[base_run.run_id])
        if isinstance(outcome, str):
            refused.append({"seed": seed, "run_id": run.run_id,
                            "baseline_run_id": base_run.run_id, "reason": outcome})
            notes.append(f"McNemar refused for {group.label} vs {base.label}, seed {seed} "
                         f"({run.run_name} vs {base_run.run_name}): {outcome}")
            continue
        tested.append(McNemarPair(seed, run.run_id, base_run.run_id, outcome.b, outcome.c,
                                  outcome.n, outcome.p_value, outcome.p_value < alpha))
    cache_differs = [cache for cache in CACHED_PHASES
                     if group.cache_hits.get(cache, 0) / group.n_runs != base.cache_hits.get(cache, 0) / base.n_runs]
    verdict = _verdict(group.label, base.label, difference, tested, alpha, confidence, ratios,
                       group.seeds, base.seeds, cache_differs=cache_differs)
    return Comparison(group.label, base.label, seeds, difference, ratios, tested, refused, verdict, cache_differs)


def _ratio(value: float, reference: float) -> float:
    if not (_finite(value) and _finite(reference)) or reference == 0:
        return math.nan
    return value / reference


def _mcnemar_for_pair(group_frame: pd.DataFrame, base_frame: pd.DataFrame) -> McNemarResult | str:
    # Returns the reason as text when the two runs' predictions cannot be paired example by example.
    group_frame = group_frame.assign(id=group_frame["id"].astype(str))
    base_frame = base_frame.assign(id=base_frame["id"].astype(str))
    for name, frame in (("the group run", group_frame), ("the baseline run", base_frame)):
        duplicates = int(frame["id"].duplicated().sum())
        if duplicates:
            return f"{name}'s predictions repeat {duplicates} test id(s)"
    group_ids, base_ids = set(group_frame["id"]), set(base_frame["id"])
    if group_ids != base_ids:
        return (
            f"the test ids differ ({len(group_ids)} vs {len(base_ids)} examples, "
            f"{len(group_ids & base_ids)} shared); rerun both on the same test split "
            "(same data digest and test subset)"
        )
    joined = group_frame.merge(base_frame, on="id", suffixes=("_group", "_base"))
    disagree = int((joined["label_group"].astype(int) != joined["label_base"].astype(int)).sum())
    if disagree:
        return f"the labels of {disagree} shared test id(s) disagree; the runs used different data"
    correct_group = (joined["probability_group"].astype(float) >= 0.5).astype(int) == joined["label_group"].astype(int)
    correct_base = (joined["probability_base"].astype(float) >= 0.5).astype(int) == joined["label_base"].astype(int)
    return mcnemar_exact(correct_group.to_numpy(), correct_base.to_numpy())


# --- Verdict wording ------------------------------------------------------------


def _verdict(
    group: str,
    base: str,
    difference: PairedDifference,
    mcnemar: Sequence[McNemarPair],
    alpha: float,
    confidence: float,
    ratios: Mapping[str, float],
    group_seeds: Sequence[str],
    base_seeds: Sequence[str],
    holm_p: float | None = None,
    n_comparisons: int = 1,
    cache_differs: Sequence[str] = (),
) -> str:
    ci = f"{_percent(confidence)} CI"
    n = difference.n
    p_value = difference.p_value if holm_p is None else holm_p
    p_text = _fmt_p(difference.p_value, prefix=True)
    if holm_p is not None:
        p_text += f", Holm-adjusted {_fmt_p(holm_p)} over {n_comparisons} comparisons"
    significant = sum(pair.significant for pair in mcnemar)
    if mcnemar:
        plural = "s" if len(mcnemar) != 1 else ""
        mcnemar_text = f"McNemar significant in {significant} of {len(mcnemar)} seed pair{plural}"
    else:
        mcnemar_text = "McNemar not run on any seed pair (see Notes)"
    if n == 0:
        sentence = (
            f"{group} vs {base}: not compared, no seed appears in both groups "
            f"({group} seeds: {', '.join(group_seeds) or 'none'}; {base} seeds: "
            f"{', '.join(base_seeds) or 'none'}); run both with the same seeds."
        )
    elif n == 1:
        sentence = _one_seed_verdict(group, base, difference, mcnemar, alpha)
    elif math.isnan(difference.p_value):
        sentence = (
            f"{group} vs {base}: the same accuracy difference ({_fmt_signed(difference.mean)} points) "
            f"on all {n} seeds, so a t-test is undefined; {mcnemar_text}."
        )
    elif p_value < alpha:
        direction = "better" if difference.mean > 0 else "worse"
        sentence = (
            f"{group} is {direction} than {base} by {abs(difference.mean):.1f} points "
            f"({ci} [{difference.low:+.1f}, {difference.high:+.1f}], paired t-test "
            f"{p_text} over {n} seeds); {mcnemar_text}."
        )
    else:
        sentence = (
            f"{group} vs {base}: no significant difference at α={alpha:g} (paired t-test "
            f"{p_text} over {n} seeds); {ci} of the difference "
            f"[{difference.low:+.1f}, {difference.high:+.1f}] points; {mcnemar_text}."
        )
    return sentence + _cost_sentence(base, ratios, cache_differs)


def _one_seed_verdict(
    group: str, base: str, difference: PairedDifference, mcnemar: Sequence[McNemarPair], alpha: float
) -> str:
    need_more = "a CI across seeds needs ≥2 seeds"
    if not mcnemar:
        return (
            f"{group} vs {base}: {_fmt_signed(difference.mean)} points on one seed pair, untested: "
            f"{need_more} and the McNemar test was refused (see Notes)."
        )
    pair = mcnemar[0]
    evidence = f"exact McNemar {_fmt_p(pair.p_value, prefix=True)}, {pair.b} vs {pair.c} discordant examples"
    if pair.significant:
        direction = "better" if pair.b > pair.c else "worse"
        return (
            f"{group} is {direction} than {base} by {abs(difference.mean):.1f} points on one seed "
            f"({evidence}); {need_more}, so rerun with more seeds before generalising."
        )
    return (
        f"{group} vs {base}: no significant difference at α={alpha:g} on one seed ({evidence}; "
        f"difference {_fmt_signed(difference.mean)} points); {need_more}."
    )


def _cost_sentence(base: str, ratios: Mapping[str, float], cache_differs: Sequence[str] = ()) -> str:
    labelled = (("time/total_s", "total time"), ("time/train_s", "training time"),
                ("params/head", "head parameters"))
    parts = [f"{label} {ratios[metric]:.2f}×" for metric, label in labelled if _finite(ratios.get(metric))]
    sentence = f" Cost vs {base}: {', '.join(parts)}." if parts else ""
    if cache_differs and parts:
        # A warm cache skips a phase: the ratio then measures the cache, not the mode.
        sentence += (f" The groups differ in {' and '.join(cache_differs)} cache hits, so total time compares "
                     "cache states, not modes; training time does not depend on them.")
    return sentence


# --- Original study and learning curves ----------------------------------------


def _original_study_rows(records: Sequence[RunRecord], confidence: float) -> list[OriginalStudyRow]:
    rows = []
    for original in ORIGINAL_STUDY:
        rows.append(
            OriginalStudyRow(
                source=f"original run {original.run} ({original.original_name})",
                mode=original.mode,
                n_runs=1,
                accuracy=original.accuracy,
                accuracy_low=math.nan,
                accuracy_high=math.nan,
                total_time_min=original.wall_time_min,
                head_params=float(original.head_params_keras),
                backbones="bert-base-uncased",
            )
        )
    by_mode: dict[str, list[RunRecord]] = {}
    # Grouping need not use mode, but the original study is organised by it.
    for record in records:
        by_mode.setdefault(record.mode or "?", []).append(record)
    original_modes = [original.mode for original in ORIGINAL_STUDY]
    for mode in sorted(by_mode, key=lambda m: (m not in original_modes, m)):
        members = by_mode[mode]
        accuracy = mean_ci([m.accuracy for m in members], confidence)
        rows.append(
            OriginalStudyRow(
                source="reproduced",
                mode=mode,
                n_runs=len(members),
                accuracy=accuracy.mean,
                accuracy_low=accuracy.low,
                accuracy_high=accuracy.high,
                total_time_min=_median(m.costs.get("time/total_s", math.nan) for m in members) / 60.0,
                head_params=_median(m.costs.get("params/head", math.nan) for m in members),
                # A local folder's path is long and machine-specific; its last part names it.
                backbones=", ".join(sorted({(m.backbone or "?").rstrip("/").rsplit("/", 1)[-1]
                                            for m in members})),
            )
        )
    return rows


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
            {"step": int(step), "mean": float(mean), "n": int(count)}
            for step, mean, count in part[["step", "mean", "count"]].itertuples(index=False)
        ]
    return curves


# --- Formatting -------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _fmt_fraction(value: float) -> str:
    return f"{value:.4f}" if _finite(value) else _MISSING


def _fmt_signed(value: float) -> str:
    return f"{value:+.2f}" if _finite(value) else _MISSING


def _fmt_interval(low: float, high: float, digits: int, signed: bool = False) -> str:
    if not (_finite(low) and _finite(high)):
        return _MISSING
    sign = "+" if signed else ""
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}×" if _finite(value) else _MISSING


def _fmt_number(value: float) -> str:
    if not _finite(value):
        return _MISSING
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:.1f}" if not float(value).is_integer() else f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _fmt_p(value: float, prefix: bool = False) -> str:
    if not _finite(value):
        return _MISSING
    if value < 0.001:
        return "p<0.001" if prefix else "<0.001"
    text = f"{value:.2f}" if value >= 0.01 else f"{value:.3f}"
    return f"p={text}" if prefix else text


def _escape_markdown(cell: str) -> str:
    return cell.replace("|", r"\|")


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = _numeric_columns(rows, len(headers))
    lines = ["| " + " | ".join(_escape_markdown(h) for h in headers) + " |",
             "|" + "|".join("---:" if numeric[i] else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(_escape_markdown(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = _numeric_columns(rows, len(headers))
    widths = [max([len(headers[i])] + [len(row[i]) for row in rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths])] + [line(row) for row in rows])


_NUMERIC_CELL = re.compile(r"^[<>]?[+\-−]?[\d,]*\.?\d+(e[+\-]?\d+)?×?$|^" + re.escape(_MISSING) + "$")


def _numeric_columns(rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    # Right-align a column only when every cell is a number, so labels stay left-aligned.
    return [
        bool(rows) and all(_NUMERIC_CELL.match(row[i]) for row in rows)
        and not all(row[i] == _MISSING for row in rows)
        for i in range(width)
    ]

