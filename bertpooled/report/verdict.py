"""The verdict: one sentence per comparison saying what the tests found, then what it cost.

Wording only: the numbers come from ``bertpooled.report.pairing``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bertpooled.contract import CACHED_PHASES, HEADLINE_COSTS
from bertpooled.report.numbers import finite, fmt_p, fmt_signed, percent
from bertpooled.report.stats import PairedDifference

if TYPE_CHECKING:
    from bertpooled.report.records import McNemarPair, Report


def verdict(
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
    """The verdict on ``group`` against ``base``: significance (Holm-adjusted when ``holm_p`` is given), then costs.

    Over ~60 lines because it is one decision table (no shared seed, one seed, a constant difference,
    significant, not significant) whose sentences read best side by side.
    """
    ci = f"{percent(confidence)} CI"
    n = difference.n
    p_value = difference.p_value if holm_p is None else holm_p
    p_text = fmt_p(difference.p_value, prefix=True)
    if holm_p is not None:
        p_text += f", Holm-adjusted {fmt_p(holm_p)} over {n_comparisons} comparisons"
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
            f"{group} vs {base}: the same accuracy difference ({fmt_signed(difference.mean)} points) "
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
            f"{group} vs {base}: {fmt_signed(difference.mean)} points on one seed pair, untested: "
            f"{need_more} and the McNemar test was refused (see Notes)."
        )
    pair = mcnemar[0]
    evidence = f"exact McNemar {fmt_p(pair.p_value, prefix=True)}, {pair.b} vs {pair.c} discordant examples"
    if pair.significant:
        direction = "better" if pair.b > pair.c else "worse"
        return (
            f"{group} is {direction} than {base} by {abs(difference.mean):.1f} points on one seed "
            f"({evidence}); {need_more}, so rerun with more seeds before generalising."
        )
    return (
        f"{group} vs {base}: no significant difference at α={alpha:g} on one seed ({evidence}; "
        f"difference {fmt_signed(difference.mean)} points); {need_more}."
    )


def _cost_sentence(base: str, ratios: Mapping[str, float], cache_differs: Sequence[str] = ()) -> str:
    parts = [f"{label} {ratios[metric]:.2f}×" for metric, label in HEADLINE_COSTS if finite(ratios.get(metric))]
    sentence = f" Cost vs {base}: {', '.join(parts)}." if parts else ""
    if cache_differs:
        # A warm cache skips a phase: the ratio then measures the cache, not the mode.
        affected = [
            label
            for metric, label in HEADLINE_COSTS
            if any(metric in CACHED_PHASES[cache] for cache in cache_differs) and finite(ratios.get(metric))
        ]
        spared = [
            label
            for metric, label in HEADLINE_COSTS
            if metric.startswith("time/") and label not in affected and finite(ratios.get(metric))
        ]
        if affected:
            sentence += (
                f" The groups differ in {' and '.join(cache_differs)} cache hits, so {' and '.join(affected)} "
                f"compare{'s' if len(affected) == 1 else ''} cache states, not modes"
                + (f"; {' and '.join(spared)} does not depend on them." if spared else ".")
            )
    return sentence


def register_hint(report: Report) -> str:
    """The most accurate run of the report and the command that registers its model ("" with no run): a name
    MLflow's registry takes (`bertpooled-<group>`), alias `champion`."""
    runs = [run for run in report.runs if finite(run.accuracy)]
    if not runs:
        return ""
    best = max(runs, key=lambda run: run.accuracy)
    name = "bertpooled-" + re.sub(r"[^\w\-]+", "-", best.group).strip("-")
    return (
        f"most accurate run: {best.run_name} ({best.run_id}, group {best.group}, test accuracy {best.accuracy:.4f}); "
        f"register its model: bertpooled register {best.run_id} {name}@champion"
    )
