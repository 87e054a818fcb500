"""Which runs may be compared: their configs may differ only in the group keys and the seed.

Pairing a 10-epoch run with a 3-epoch one would credit the mode with the epochs' effect, so the builder
checks the logged configs (``params.config/*`` and the data digest) before computing any statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bertpooled.contract import CONFIG_PARAM_PREFIX, DATA_DIGEST_PARAM, PARENT_RUN_TAG
from bertpooled.errors import BertpooledError
from bertpooled.report.records import RunRecord

#: Config fields that may differ between paired runs: the seed (pairing is by seed), the data path (the
#: data itself is compared by its digest, `data/digest`), settings the config documents as having no
#: effect on results or costs, and `precompute_mb`, which changes no result and whose effect on time the
#: report marks itself (`train_features` cache hits, `contract.CACHED_PHASES`).
_FREE_CONFIG_FIELDS = ("seed", "data", "description", "eval_batch_size", "precompute_mb")
#: Config fields a group-by key decides: `mode` sets the pooling preset unless `pool` is given; `variant` (the
#: encoder runs' tag) spells out its features, fine-tuning, pooling and where the pooling sits.
_DERIVED_CONFIG_FIELDS = {
    "mode": ("pool",),
    "variant": (
        "features",
        "finetune",
        "pool",
        "pool_at",
        "keep_layers",
        "separate_cls",
        "init_from",
        "distill_from",
    ),
}
#: Config fields that name another run (the chain of runs, issue 29): each seed's student names its own seed's
#: teacher, so the ids differ by seed; they are compared as what they point at (`_chain_described`).
CHAIN_FIELDS = ("init_from", "distill_from")
#: Group keys that decide the whole config: a sweep's parent (`--group-by mlflow.parentRunId`). A sweep's
#: children share their config but the seed, so two sweeps may differ in anything, each keeping one config:
#: how each mode at its own tuned settings (`bertpooled tune`'s best configs) is compared with the other.
_WHOLE_CONFIG_KEYS = (PARENT_RUN_TAG,)


def _config_of(row: pd.Series) -> dict[str, str]:
    """A run's logged config (`params.config/*`) plus its data digest, as strings; unlogged fields left out."""
    config = {}
    prefix = f"params.{CONFIG_PARAM_PREFIX}"
    for column, value in row.items():
        name = column.removeprefix(prefix) if column.startswith(prefix) else None
        if column == f"params.{DATA_DIGEST_PARAM}":
            name = DATA_DIGEST_PARAM
        if name and name not in _FREE_CONFIG_FIELDS and value is not None and not pd.isna(value):
            config[name] = str(value)
    return config


def _chain_described(configs: dict[str, dict[str, str]], records: Sequence[RunRecord]) -> None:
    """Replace the run ids of the chain fields by what they point at: "<group> run, same seed" when the source
    run is in the comparison with the student's seed, "<group> run, seed S" when another, else "a run outside
    this comparison" (its id is in the run's params)."""
    where = {record.run_id: record for record in records}
    for record in records:
        config = configs[record.run_id]
        for name in CHAIN_FIELDS:
            value = config.get(name)
            if not value:
                continue
            run_id = value.removeprefix("runs:/").split("/")[0]
            source = where.get(run_id)
            if source is None:
                config[name] = "a run outside this comparison"
            else:
                seed = "same seed" if source.seed == record.seed else f"seed {source.seed}"
                config[name] = f"{source.group} run, {seed}"


def shared_configs(
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
    _chain_described(configs, records)
    logged = [set(config) for config in configs.values()]
    # A field some runs never logged (runs from before it existed) cannot be compared; it is named in the notes.
    unknown = sorted(set().union(*logged) - logged[0].intersection(*logged[1:]) - set(group_keys))
    if unknown:
        notes.append(f"config field(s) {', '.join(unknown)} not logged by every run (older runs?); not compared")
    fields = sorted(set.intersection(*logged) - set(group_keys))
    derived = {name for key in group_keys for name in _DERIVED_CONFIG_FIELDS.get(key, ())}
    if set(group_keys) & set(_WHOLE_CONFIG_KEYS):
        derived = set(fields)
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
        names = [entry.split(" ")[0] for entry in differing]
        raise BertpooledError(
            f"the selected runs differ in {'; '.join(differing)}, not only in {', '.join(group_keys)} and seed: "
            f"select comparable runs (--filter, --parent, --run-id) or group by those fields too "
            f"(--group-by {','.join([*group_keys, *names])})"
        )
    result: dict[str, dict[str, str]] = {}
    for record in records:
        result.setdefault(record.group, dict(configs[record.run_id]))
    return result


def comparable_sets(
    runs: pd.DataFrame, records: Sequence[RunRecord], group_keys: Sequence[str]
) -> list[list[RunRecord]]:
    """`records` split into sets that may be compared: the same config apart from the group keys (and what they
    decide) and the seed. Newest set first (by its latest start, else by the order of `runs`: newest first, as
    mlflow.search_runs lists them)."""
    rows = {str(row["run_id"]): row for _, row in runs.iterrows()}
    derived = {name for key in group_keys for name in _DERIVED_CONFIG_FIELDS.get(key, ())}
    configs = {record.run_id: _config_of(rows[record.run_id]) for record in records}
    _chain_described(configs, records)
    # Fields some runs never logged (older runs) do not split sets, as shared_configs does not compare them.
    common = set.intersection(*(set(config) for config in configs.values())) - set(group_keys) - derived
    sets: dict[tuple, list[RunRecord]] = {}
    for record in records:
        key = tuple(sorted((k, v) for k, v in configs[record.run_id].items() if k in common))
        sets.setdefault(key, []).append(record)
    order = {str(run_id): position for position, run_id in enumerate(runs["run_id"])}

    def newest(members: list[RunRecord]):
        if "start_time" in runs.columns:
            starts = [rows[m.run_id]["start_time"] for m in members]
            starts = [s for s in starts if s is not None and not pd.isna(s)]
            if starts:
                return (0, -pd.Timestamp(max(starts)).value)
        return (1, min(order[m.run_id] for m in members))

    return sorted(sets.values(), key=newest)


def selection_command(
    runs: pd.DataFrame, members: Sequence[RunRecord], group_keys: Sequence[str], baseline: str | None = "basic"
) -> str:
    """The compare-runs command that selects exactly `members`: `--parent` for one sweep's children, else `--run-id`;
    with the `--baseline` it needs to run as copied (when `members` have several groups and none is `baseline`)."""
    parent_column = "tags.mlflow.parentRunId"
    parents = set()
    if parent_column in runs.columns:
        by_id = runs.set_index(runs["run_id"].astype(str))[parent_column]
        parents = {by_id.get(m.run_id) for m in members}
    if len(parents) == 1 and all(isinstance(p, str) and p for p in parents):
        selection = f"--parent {next(iter(parents))}"
    else:
        selection = f"--run-id {','.join(m.run_id for m in members)}"
    group = "" if list(group_keys) == ["mode"] else f" --group-by {','.join(group_keys)}"
    values = sorted({m.group_values.get(group_keys[0], "") for m in members})
    if baseline is not None and baseline not in values and len(values) > 1:
        group += f" --baseline {values[0]}"
    return f"bertpooled compare-runs {selection}{group}"


def newest_comparable_set(
    runs: pd.DataFrame,
    records: list[RunRecord],
    group_keys: Sequence[str],
    notes: list[str],
    baseline: str | None = "basic",
) -> list[RunRecord]:
    """For compare-runs with no selection: when the runs hold several sets that may not be compared with each
    other (a 10-epoch quick-start run beside a 2-epoch sweep), the newest set that compares at least two
    groups (else the newest set); the others are named first in `notes`, each with its command."""
    try:
        shared_configs(runs, records, group_keys, [])
        return records  # all comparable: nothing to choose
    except BertpooledError:
        pass
    sets = comparable_sets(runs, records, group_keys)
    if len(sets) < 2:
        return records
    chosen = next((members for members in sets if len({m.group for m in members}) > 1), sets[0])
    others = [members for members in sets if members is not chosen]
    notes.insert(
        0,
        (
            f"the runs form {len(sets)} sets that cannot be compared with each other (their configs differ in more "
            f"than {', '.join(group_keys)} and seed): this report compares the newest set with more than one group, "
            f"{len(chosen)} run(s); the others: "
            + "; ".join(
                f"{len(members)} run(s): {selection_command(runs, members, group_keys, baseline)}" for members in others
            )
        ),
    )
    return chosen
