"""The report's four formats: aligned text and Markdown (from its sections, through a small table engine),
and JSON and CSV (from its records)."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from bertpooled import contract
from bertpooled.errors import BertpooledError
from bertpooled.report.numbers import MISSING
from bertpooled.report.original import ORIGINAL_STUDY_CAVEAT
from bertpooled.report.records import Report
from bertpooled.report.sections import sections

FORMATS = ("table", "markdown", "json", "csv")
#: The JSON document's schema name and version.
SCHEMA = "bertpooled.report/1"


# --- Structured output ----------------------------------------------------------


def to_dict(report: Report) -> dict[str, Any]:
    """A JSON-safe dict (NaN and infinities become ``None``)."""
    payload = {
        "schema": SCHEMA,
        "settings": {
            "group_by": list(report.group_by),
            "baseline": report.baseline,
            "alpha": report.alpha,
            "confidence": report.confidence,
        },
        # Quality metrics as fields of their own (`f1`, `f1_mean`), beside accuracy, as the CSV has them.
        "runs": [_flatten(asdict(run), "quality", "") for run in report.runs],
        "groups": [_flatten(asdict(group), "quality_means", "_mean") for group in report.groups],
        "comparisons": [
            {**asdict(comparison), "mcnemar_significant": comparison.mcnemar_significant}
            for comparison in report.comparisons
        ],
        "original_study": {
            "caveat": ORIGINAL_STUDY_CAVEAT,
            "rows": [asdict(row) for row in report.original_study],
        },
        "learning_curves": report.learning_curves,
        "cost_metrics": list(report.cost_metrics),
        "group_configs": report.group_configs,
        "skipped": list(report.skipped),
        "notes": list(report.notes),
        "comparison_run_id": report.comparison_run_id,
    }
    return _json_safe(payload)


def to_json(report: Report) -> str:
    """:func:`to_dict` as indented JSON text."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False)


def to_csv(report: Report) -> str:
    """One CSV row per group: accuracy, cost medians and, for non-baseline groups, the comparison with the
    baseline."""
    by_group = {comparison.group: comparison for comparison in report.comparisons}
    rows = []
    for group in report.groups:
        row: dict[str, Any] = {"group": group.label}
        row.update({key: group.values.get(key) for key in report.group_by})
        row.update(
            {
                "n_runs": group.n_runs,
                "seeds": ";".join(group.seeds),
                "accuracy_mean": group.accuracy.mean,
                "accuracy_ci_low": group.accuracy.low,
                "accuracy_ci_high": group.accuracy.high,
            }
        )
        row.update({f"{metric.name}_mean": group.quality_means.get(metric.name) for metric in contract.quality_means()})
        row.update({f"median:{metric}": group.costs.get(metric) for metric in report.cost_metrics})
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
            {f"ratio:{metric}": comparison.ratios.get(metric) if comparison else None for metric in report.cost_metrics}
        )
        row["verdict"] = comparison.verdict if comparison else None
        rows.append(row)
    buffer = io.StringIO()
    # convert_dtypes keeps counts as integers in columns that are empty for the baseline row.
    pd.DataFrame(rows).convert_dtypes().to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _flatten(record: dict[str, Any], key: str, suffix: str) -> dict[str, Any]:
    """``record`` with the mapping under ``key`` spliced in its place, each name given ``suffix``."""
    flat: dict[str, Any] = {}
    for name, value in record.items():
        if name == key:
            flat.update({f"{inner}{suffix}": item for inner, item in value.items()})
        else:
            flat[name] = value
    return flat


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


# --- Human-readable output ---------------------------------------------------------


def to_markdown(report: Report) -> str:
    """The report as a Markdown document."""
    lines = ["# bertpooled comparison report", ""]
    for section in sections(report):
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [markdown_table(*table), ""]
        if section.bullets:
            lines += [f"- {bullet}" for bullet in section.bullets] + [""]
    return "\n".join(lines).rstrip() + "\n"


def to_table(report: Report) -> str:
    """The report as plain terminal text with aligned columns."""
    lines: list[str] = []
    for section in sections(report):
        lines += [section.title, "=" * len(section.title)]
        for paragraph in section.paragraphs:
            lines += [paragraph]
        for table in section.tables:
            lines += [text_table(*table)]
        lines += [f"  * {bullet}" for bullet in section.bullets]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(report: Report, format: str) -> str:
    """The report in one of :data:`FORMATS` (``table``, ``markdown``, ``json``, ``csv``)."""
    renderers = {"table": to_table, "markdown": to_markdown, "json": to_json, "csv": to_csv}
    if format not in renderers:
        raise BertpooledError(f"unknown report format {format!r}: pass --format one of {', '.join(FORMATS)}")
    return renderers[format](report)


# --- The table engine -----------------------------------------------------------------


def _escape_markdown(cell: str) -> str:
    return cell.replace("|", r"\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; all-number columns are right-aligned."""
    numeric = _numeric_columns(rows, len(headers))
    lines = [
        "| " + " | ".join(_escape_markdown(h) for h in headers) + " |",
        "|" + "|".join("---:" if numeric[i] else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(_escape_markdown(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: a header, a rule and the rows, each column padded to its widest cell."""
    numeric = _numeric_columns(rows, len(headers))
    widths = [max([len(headers[i])] + [len(row[i]) for row in rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths])] + [line(row) for row in rows])


_NUMERIC_CELL = re.compile(r"^[<>]?[+\-−]?[\d,]*\.?\d+(e[+\-]?\d+)?×?$|^" + re.escape(MISSING) + "$")


def _numeric_columns(rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    # Right-align a column only when every cell is a number, so labels stay left-aligned.
    return [
        bool(rows) and all(_NUMERIC_CELL.match(row[i]) for row in rows) and not all(row[i] == MISSING for row in rows)
        for i in range(width)
    ]
