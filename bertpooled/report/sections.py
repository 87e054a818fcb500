"""What the human-readable report says, section by section: titles, paragraphs, tables (as cells) and bullets.

Format-free: ``bertpooled.report.render`` lays these out as text or Markdown and ``bertpooled.report.html``
as a page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bertpooled import contract
from bertpooled.contract import CACHED_PHASES, PARAMS_HEAD, TIME_PER_EPOCH, TIME_TOTAL
from bertpooled.report.numbers import (
    MIN_RATIO_SECONDS,
    MISSING,
    fmt_fraction,
    fmt_interval,
    fmt_number,
    fmt_p,
    fmt_ratio,
    fmt_signed,
    percent,
)
from bertpooled.report.original import ORIGINAL_STUDY_CAVEAT, protocol_differences
from bertpooled.report.records import Comparison, Report

#: A table as (headers, rows of cells).
Table = tuple[list[str], list[list[str]]]


@dataclass
class Section:
    """One section of the report: a title, then paragraphs, tables and bullets, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def sections(report: Report) -> list[Section]:
    """The report's sections in order; those with nothing to say are left out."""
    found = [_verdict_section(report), _groups_section(report)]
    if report.cost_metrics and report.groups:
        found.append(_costs_section(report))
    if report.comparisons:
        found += [_baseline_section(report), _mcnemar_section(report)]
    if report.group_configs:
        found.append(_config_section(report))
    found.append(_original_section(report))
    found.append(Section("Notes", bullets=list(report.notes) or ["none"]))
    return found


def _verdict_section(report: Report) -> Section:
    n_kept, n_skipped = len(report.runs), len(report.skipped)
    summary = (
        f"{n_kept} run(s) in {len(report.groups)} group(s) by {', '.join(report.group_by)}"
        f"{f'; {n_skipped} skipped (see Notes)' if n_skipped else ''}; "
        f"baseline: {report.baseline or 'none'}; α={report.alpha:g}; "
        f"{percent(report.confidence)} intervals."
    )
    bullets = [comparison.verdict for comparison in report.comparisons]
    if not bullets:
        bullets = ["no comparison against a baseline (see Notes)"]
    return Section("Verdicts", paragraphs=[summary], bullets=bullets)


def _groups_section(report: Report) -> Section:
    ci = f"{percent(report.confidence)} CI"
    means = contract.quality_means()
    headers = [
        "group",
        "runs",
        "seeds",
        "accuracy",
        ci,
        *(metric.label for metric in means),
        "mean s/epoch",
        "total s",
        "head params",
        "warm caches",
    ]
    rows = [
        [
            group.label,
            str(group.n_runs),
            # "s0,s1": the seed values, as in run names; a bare "0" read as "no seeds".
            ",".join(f"s{seed}" for seed in group.seeds) or MISSING,
            fmt_fraction(group.accuracy.mean),
            fmt_interval(group.accuracy.low, group.accuracy.high, 4),
            *(fmt_fraction(group.quality_means.get(metric.name, math.nan)) for metric in means),
            fmt_number(group.costs.get(TIME_PER_EPOCH, math.nan)),
            fmt_number(group.costs.get(TIME_TOTAL, math.nan)),
            fmt_number(group.costs.get(PARAMS_HEAD, math.nan)),
            ", ".join(f"{cache} {n}/{group.n_runs}" for cache, n in group.cache_hits.items()) or "none",
        ]
        for group in report.groups
    ]
    paragraphs = [] if rows else ["no runs to summarise"]
    if rows:
        paragraphs.append(
            "seeds: the config/seed values of the group's runs; mean s/epoch: time/train_s / epochs; "
            "warm caches: runs that found their token ids (or features) cached, whose tokenize "
            "(features) time is then a cache read."
        )
    return Section("Groups", paragraphs=paragraphs, tables=[(headers, rows)] if rows else [])


def _costs_section(report: Report) -> Section:
    headers = ["metric (median)"] + [group.label for group in report.groups]
    rows = [
        [metric] + [fmt_number(group.costs.get(metric, math.nan)) for group in report.groups]
        for metric in report.cost_metrics
    ]
    note = (
        "Medians per group. time/data_s and time/tokenize_s are mostly cache reads once the parsed archive "
        "and token ids are cached (the first run of a machine pays them), so compare modes by time/train_s."
    )
    return Section("Costs", paragraphs=[note], tables=[(headers, rows)])


def _baseline_section(report: Report) -> Section:
    ci = f"{percent(report.confidence)} CI"
    accuracy_headers = ["group", "seed pairs", "Δ accuracy (points)", ci, "paired t p", "Holm p", "McNemar significant"]
    accuracy_rows = [
        [
            comparison.group,
            str(comparison.accuracy_difference_points.n),
            fmt_signed(comparison.accuracy_difference_points.mean),
            fmt_interval(
                comparison.accuracy_difference_points.low, comparison.accuracy_difference_points.high, 2, signed=True
            ),
            fmt_p(comparison.accuracy_difference_points.p_value),
            fmt_p(comparison.p_holm),
            f"{comparison.mcnemar_significant} of {len(comparison.mcnemar)}",
        ]
        for comparison in report.comparisons
    ]
    ratio_headers = ["metric (ratio)"] + [
        f"{comparison.group} / {comparison.baseline}" for comparison in report.comparisons
    ]
    ratio_rows = [
        [metric]
        + [
            fmt_ratio(comparison.ratios.get(metric, math.nan)) + _cache_mark(comparison, metric)
            for comparison in report.comparisons
        ]
        for metric in report.cost_metrics
    ]
    paragraphs = [
        "Δ accuracy = 100 × (group − baseline), paired by config/seed; the interval and "
        "p-value come from a paired t-test across seeds.",
        "Ratios are group median / baseline median: below 1 means less of that cost "
        "(for throughput/ metrics, above 1 means faster). No ratio (-) where a phase took under "
        f"{MIN_RATIO_SECONDS * 1000:.0f} ms on either side, nor between the parameter counts of different model "
        "families (TF-IDF coefficients against LSTM weights).",
    ]
    if any(comparison.cache_differs for comparison in report.comparisons):
        paragraphs.append(
            "(cache): the two groups found this phase's cache warm in different numbers of "
            "runs, so this ratio measures the cache, not the group."
        )
    tables = [(accuracy_headers, accuracy_rows)]
    if ratio_rows:
        tables.append((ratio_headers, ratio_rows))
    return Section("Against the baseline", paragraphs=paragraphs, tables=tables)


def _cache_mark(comparison: Comparison, metric: str) -> str:
    affected = {m for cache in comparison.cache_differs for m in CACHED_PHASES[cache]}
    return " (cache)" if metric in affected else ""


def _mcnemar_section(report: Report) -> Section:
    headers = [
        "group",
        "seed",
        "only group right",
        "only baseline right",
        "examples",
        "exact p",
        f"significant at α={report.alpha:g}",
    ]
    rows = [
        [
            comparison.group,
            pair.seed,
            str(pair.b),
            str(pair.c),
            str(pair.n),
            fmt_p(pair.p_value),
            "yes" if pair.significant else "no",
        ]
        for comparison in report.comparisons
        for pair in comparison.mcnemar
    ]
    paragraphs = ["Exact McNemar test per seed pair on the per-example test predictions."]
    if not rows:
        paragraphs.append("No seed pair could be tested (see Notes).")
    return Section("McNemar per seed pair", paragraphs=paragraphs, tables=[(headers, rows)] if rows else [])


def _config_section(report: Report) -> Section:
    """The settings every group shares, then those the group keys decide, one column per group."""
    configs = report.group_configs
    labels = list(configs)
    names = sorted({name for config in configs.values() for name in config})
    shared = [n for n in names if len({c.get(n) for c in configs.values()}) == 1]
    by_group = [n for n in names if n not in shared]
    paragraphs = [
        "Runs are paired only when their configs differ in nothing but the group keys and the seed. "
        "Shared by every group: " + ", ".join(f"{n}={configs[labels[0]][n]}" for n in shared) + "."
    ]
    tables = []
    if by_group:
        tables.append((["config", *labels], [[n] + [configs[g].get(n, MISSING) for g in labels] for n in by_group]))
    return Section("Config", paragraphs=paragraphs, tables=tables)


def _original_section(report: Report) -> Section:
    headers = ["source", "mode", "runs", "accuracy", "accuracy CI", "total min", "head params", "backbone"]
    rows = [
        [
            row.source,
            row.mode,
            str(row.n_runs),
            fmt_fraction(row.accuracy),
            fmt_interval(row.accuracy_low, row.accuracy_high, 4),
            fmt_number(row.total_time_min),
            fmt_number(row.head_params),
            row.backbones,
        ]
        for row in report.original_study
    ]
    paragraphs = [ORIGINAL_STUDY_CAVEAT]
    differs = protocol_differences(report.group_configs)
    if differs:
        paragraphs.append(
            f"The reproduced rows did not follow the original's protocol ({differs}; the original: 10 epochs, 3/4 "
            "of the training data, 128 tokens): they are not a reproduction of its numbers."
        )
    return Section("Original study", paragraphs=paragraphs, tables=[(headers, rows)])
