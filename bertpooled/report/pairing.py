"""Each group against its baseline group: runs paired by seed, the paired t-test, exact McNemar per seed
pair, cost ratios and Holm's correction across several comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pandas as pd

from bertpooled.contract import CACHED_PHASES, THRESHOLD
from bertpooled.errors import BertpooledError
from bertpooled.report.numbers import MIN_RATIO_SECONDS, finite, seed_order
from bertpooled.report.records import Comparison, GroupSummary, McNemarPair, RunRecord
from bertpooled.report.stats import McNemarResult, holm, mcnemar_exact, paired_difference
from bertpooled.report.verdict import verdict


def compare_groups(
    groups: Sequence[GroupSummary],
    records: Sequence[RunRecord],
    predictions: Mapping[str, pd.DataFrame],
    group_keys: Sequence[str],
    baseline: str | None,
    alpha: float,
    confidence: float,
    cost_metrics: Sequence[str],
) -> tuple[list[Comparison], list[str]]:
    """Compare every group whose first key is not ``baseline`` with the baseline group sharing its other keys.

    Returns the comparisons and notes (runs left unpaired, groups without a baseline, refused tests).
    """
    notes: list[str] = []
    if not groups:
        return [], notes
    if baseline is None:
        notes.append("no baseline chosen, so no comparison section; pass --baseline basic to compare")
        return [], notes
    first_key = group_keys[0]
    hint = missing_baseline(groups, group_keys, baseline)
    if hint:
        notes.append(hint)
        return [], notes
    baselines = _baseline_groups(groups, group_keys, baseline)
    members: dict[str, list[RunRecord]] = {}
    for record in records:
        members.setdefault(record.group, []).append(record)
    seed_maps = {group.label: _runs_by_seed(members[group.label], group.label, notes) for group in groups}

    comparisons = []
    for group in groups:
        if group.values[first_key] == baseline:
            continue
        base = baselines.get(tuple(group.values[key] for key in group_keys[1:]))
        if base is None:
            notes.append(
                f"{group.label} has no baseline group with {first_key}={baseline} "
                "and the same other keys; it is not compared"
            )
            continue
        comparisons.append(
            _compare_pair(
                group,
                base,
                seed_maps[group.label],
                seed_maps[base.label],
                predictions,
                alpha,
                confidence,
                cost_metrics,
                notes,
            )
        )
    return _holm_adjusted(comparisons, groups, alpha, confidence, notes), notes


def missing_baseline(groups: Sequence[GroupSummary], group_keys: Sequence[str], baseline: str | None) -> str:
    """One group and no baseline group (a first `make run`, pool only): the line saying how to train a baseline,
    which the group's report ends with instead of an error at the end of the stated flow; else ""."""
    if baseline is None or not groups:
        return ""
    first_key = group_keys[0]
    values = sorted({group.values[first_key] for group in groups})
    if baseline in values or len(values) > 1:
        return ""
    group = values[0]
    if first_key == "mode":
        how = (
            f"train one with `make run MODE={baseline}` (or `mlflow run . --env-manager local --experiment-name "
            f"bertpooled -P mode={baseline}`), then run compare-runs again"
        )
    else:
        how = f"train runs with {first_key}={baseline} too, or pass --baseline {group}"
    return f"no {first_key}={baseline} runs to compare {group} with: {how}"


def _baseline_groups(
    groups: Sequence[GroupSummary], group_keys: Sequence[str], baseline: str
) -> dict[tuple[str, ...], GroupSummary]:
    """The baseline groups by the values of their other keys; a baseline no group has is the user's error."""
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
    return baselines


def _holm_adjusted(
    comparisons: list[Comparison], groups: Sequence[GroupSummary], alpha: float, confidence: float, notes: list[str]
) -> list[Comparison]:
    """Several groups against one baseline: each verdict uses its Holm-adjusted p-value; one keeps its raw p."""
    if len(comparisons) <= 1:
        return [replace(c, p_holm=c.accuracy_difference_points.p_value) for c in comparisons]
    adjusted = holm([c.accuracy_difference_points.p_value for c in comparisons])
    seeds = {group.label: group.seeds for group in groups}
    comparisons = [
        replace(
            c,
            p_holm=p,
            verdict=verdict(
                c.group,
                c.baseline,
                c.accuracy_difference_points,
                c.mcnemar,
                alpha,
                confidence,
                c.ratios,
                seeds[c.group],
                seeds[c.baseline],
                holm_p=p,
                n_comparisons=len(comparisons),
                cache_differs=c.cache_differs,
            ),
        )
        for c, p in zip(comparisons, adjusted, strict=True)
    ]
    notes.append(
        f"{len(comparisons)} groups are compared with the baseline; the paired t-tests' p-values are "
        "Holm-corrected across them (column 'Holm p'), and the verdicts use the corrected ones"
    )
    return comparisons


def _runs_by_seed(members: Sequence[RunRecord], label: str, notes: list[str]) -> dict[str, RunRecord]:
    by_seed: dict[str, RunRecord] = {}
    for record in members:
        if record.seed is None:
            notes.append(
                f"{record.run_name} ({record.run_id}) in {label} has no config/seed; "
                "it counts in group statistics but cannot be paired"
            )
            continue
        if record.seed in by_seed:
            # mlflow.search_runs lists newest first, so the first row kept is the latest run.
            notes.append(
                f"{label} has several runs with seed {record.seed}; pairing uses "
                f"{by_seed[record.seed].run_name} and leaves {record.run_name} unpaired"
            )
            continue
        by_seed[record.seed] = record
    return by_seed


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
    seeds = sorted(set(group_seeds) & set(base_seeds), key=seed_order)
    difference = paired_difference(
        [100.0 * group_seeds[seed].accuracy for seed in seeds],
        [100.0 * base_seeds[seed].accuracy for seed in seeds],
        confidence,
    )
    ratios = {metric: _cost_ratio(metric, group, base) for metric in cost_metrics}
    tested: list[McNemarPair] = []
    refused: list[dict[str, str]] = []
    for seed in seeds:
        run, base_run = group_seeds[seed], base_seeds[seed]
        outcome = _mcnemar_for_pair(predictions[run.run_id], predictions[base_run.run_id])
        if isinstance(outcome, str):
            refused.append({"seed": seed, "run_id": run.run_id, "baseline_run_id": base_run.run_id, "reason": outcome})
            notes.append(
                f"McNemar refused for {group.label} vs {base.label}, seed {seed} "
                f"({run.run_name} vs {base_run.run_name}): {outcome}"
            )
            continue
        tested.append(
            McNemarPair(
                seed,
                run.run_id,
                base_run.run_id,
                outcome.b,
                outcome.c,
                outcome.n,
                outcome.p_value,
                outcome.p_value < alpha,
            )
        )
    cache_differs = [
        cache
        for cache in CACHED_PHASES
        if group.cache_hits.get(cache, 0) / group.n_runs != base.cache_hits.get(cache, 0) / base.n_runs
    ]
    sentence = verdict(
        group.label,
        base.label,
        difference,
        tested,
        alpha,
        confidence,
        ratios,
        group.seeds,
        base.seeds,
        cache_differs=cache_differs,
    )
    return Comparison(group.label, base.label, seeds, difference, ratios, tested, refused, sentence, cache_differs)


def model_family(values: Mapping[str, str]) -> str:
    """The kind of model a group's runs train: TF-IDF + logistic regression (`reference`) or the LSTM head."""
    return "tfidf" if values.get("mode") == "reference" else "lstm"


def _cost_ratio(metric: str, group: GroupSummary, base: GroupSummary) -> float:
    """group / baseline, where both sides measured something comparable; NaN (no ratio) for a phase under
    MIN_RATIO_SECONDS on either side and for parameter counts of different model families."""
    value, reference = group.costs.get(metric, math.nan), base.costs.get(metric, math.nan)
    if metric.startswith("time/") and min(value, reference) < MIN_RATIO_SECONDS:
        return math.nan
    if metric.startswith("params/") and model_family(group.values) != model_family(base.values):
        return math.nan
    return _ratio(value, reference)


def _ratio(value: float, reference: float) -> float:
    if not (finite(value) and finite(reference)) or reference == 0:
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
    correct_group = (joined["probability_group"].astype(float) >= THRESHOLD).astype(int) == joined[
        "label_group"
    ].astype(int)
    correct_base = (joined["probability_base"].astype(float) >= THRESHOLD).astype(int) == joined["label_base"].astype(
        int
    )
    return mcnemar_exact(correct_group.to_numpy(), correct_base.to_numpy())
