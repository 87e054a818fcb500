"""The fidelity study's table: one row per (features, padding, LSTM bias) variant, from compare-runs reports.

    # 1. one sweep per variant (the full default protocol, 5 seeds x basic/pool), each ending in compare-runs:
    for v in "embedding_layer read keras" "embedding_layer mask keras" "embeddings read keras" \
             "embeddings mask keras" "embedding_layer read torch"; do
      set -- $v
      bertpooled sweep --config default --modes basic,pool --seeds 5 --parallel 2 --experiment fidelity \
          --set features=$1 --set padding=$2 --set lstm_bias=$3 --output report-$1-$2-$3 --format markdown
      cp report-$1-$2-$3/report.json benchmarks/original_fidelity/$1-$2-$3.json
    done
    # 2. the table
    python benchmarks/original_fidelity/original_fidelity.py benchmarks/original_fidelity/*.json

Each JSON is the `report.json` compare-runs wrote for one sweep (groups by mode, baseline basic).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = [
    "embedding_layer-read-keras",
    "embedding_layer-mask-keras",
    "embeddings-read-keras",
    "embeddings-mask-keras",
    "embedding_layer-read-torch",
]
LABELS = {
    "embedding_layer": "embedding layer",
    "embeddings": "word table",
    "read": "read",
    "mask": "mask",
    "keras": "one (Keras)",
    "torch": "two (nn.LSTM)",
}


def ci(acc: dict) -> str:
    return f"{acc['mean']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}]"


def row(name: str, report: dict) -> str:
    features, padding, bias = name.split("-")
    groups = {g["label"]: g for g in report["groups"]}
    basic, pool = groups["basic"], groups["pool"]
    (comparison,) = [c for c in report["comparisons"] if c["group"] == "pool"]
    diff = comparison["accuracy_difference_points"]
    mcnemar = f"{comparison['mcnemar_significant']} of {len(comparison['mcnemar'])}"
    train_b, train_p = basic["costs"]["time/train_s"], pool["costs"]["time/train_s"]
    faithful = " **(the original's)**" if name == "embedding_layer-read-keras" else ""
    return (
        f"| {LABELS[features]}{faithful} | {LABELS[padding]} | {LABELS[bias]} | {basic['n_runs']}+{pool['n_runs']} | "
        f"{ci(basic['accuracy'])} | {ci(pool['accuracy'])} | "
        f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}] | {diff['p_value']:.3g} | {mcnemar} | "
        f"{train_b:.1f} | {train_p:.1f} | {train_p / train_b:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args()
    reports = {path.stem: json.loads(path.read_text()) for path in args.reports}
    print(
        "| features | padding | LSTM bias | runs | basic accuracy [95% CI] | pool accuracy [95% CI] | "
        "pool - basic, points [95% CI] | paired t p | McNemar p<0.05 | basic train s | pool train s | pool/basic |"
    )
    print("|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|")
    for name in sorted(reports, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        print(row(name, reports[name]))


if __name__ == "__main__":
    main()
