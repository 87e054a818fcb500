"""Issue 13's GPU targets from a grouped sweep's runs: each mode's group training time and a seed's share of a step.

    python benchmarks/gpu/seeds_summary.py EXPERIMENT OUTPUT.md     # reads MLFLOW_TRACKING_URI

Run by `run_on_device.sh seeds` after `bertpooled sweep --group-seeds` (every child of a mode trained in one loop).
Per mode: S (tag `sweep/group_size`), the group's training seconds (`time/group_train_s`, the same on every child;
precomputing the features included),
steps = epochs x ceil(train examples / batch size), and a seed's share of a step = group seconds / steps / S.
The targets: a seed's share <= 0.5 ms, and both modes' group training together < 30 s (10 seeds each).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mlflow


def main(experiment: str, output: str) -> None:
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string="tags.`bertpooled.kind` = 'train'", output_format="list"
    )
    lines = [
        "# Seeds in one loop on the GPU (issue 13)",
        "",
        f"From {len(runs)} runs of experiment `{experiment}` (`benchmarks/gpu/run_on_device.sh seeds`).",
        "",
        "| mode | seeds (S) | device | precision | steps | group training s | a seed's share of a step (ms) | "
        "test accuracy, mean |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    total = 0.0
    for mode in sorted({r.data.tags.get("mode", "?") for r in runs}):
        mine = [r for r in runs if r.data.tags.get("mode") == mode]
        first = mine[0].data
        seeds = int(first.tags.get("sweep/group_size", "1"))
        group_s = first.metrics.get("time/group_train_s", math.nan)
        steps = int(first.params["config/epochs"]) * math.ceil(
            first.metrics["data/train_examples"] / int(first.params["config/batch_size"])
        )
        share_ms = 1e3 * group_s / steps / seeds
        accuracy = sum(r.data.metrics["test/accuracy"] for r in mine) / len(mine)
        total += group_s
        lines.append(
            f"| {mode} | {seeds} | {first.params.get('runtime/device', '?')} | "
            f"{first.params.get('runtime/precision', '?')} "
            f"| {steps:,} | {group_s:.1f} | {share_ms:.3f} | {accuracy:.4f} |"
        )
    lines += [
        "",
        f"Both modes' group training: {total:.1f} s (target < 30 s for 10 seeds x 2 modes); "
        "a seed's share of a step: target <= 0.5 ms.",
        "",
    ]
    Path(output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:3])
