"""Evaluation (the forward pass over test rows, no grad) per 1,000 rows at several batch sizes, on CPU.

    python benchmarks/seed_protocol/eval_batch.py   # basic and pool, batches 512, 128, 32 -> Markdown on stdout

Synthetic data shaped like the default protocol (`common/synthetic.py`'s `Data`: MiniLM's embedding layer, max_len 128,
LSTM(16)), the model in eval mode as `run.measure.predict_inputs` runs it, 1 thread. Each cell is the best of
`--repeats` passes over `--rows` rows, in ms per 1,000 rows; the last column says whether the logits are bitwise
those of the first size (512). This is why `eval_batch_size: 0` (auto) means 128 rows on CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe
from common.synthetic import Data

from bertpooled.run import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="512,128,32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime.keep_freed_memory()  # as a run does
    data = Data(args.rows)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"- machine: {describe()}\n- command: `python benchmarks/seed_protocol/eval_batch.py`\n")
    print("| mode | batch | ms per 1,000 rows | same as the first size |\n|---|---:|---:|---|")
    for mode, pool in (("basic", "none"), ("pool", "avg:2x2")):
        model = data.model(pool, 0).eval()
        first = None
        for size in sizes:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                with torch.no_grad():
                    logits = torch.cat(
                        [model(data.ids[i : i + size], data.lengths[i : i + size]) for i in range(0, args.rows, size)]
                    )
                best = min(best, time.perf_counter() - start)
            first = logits if first is None else first
            print(
                f"| {mode} | {size} | {best / args.rows * 1e6:.0f} | "
                f"{'bitwise' if torch.equal(logits, first) else 'no'} |"
            )


if __name__ == "__main__":
    main()
