"""Where one training step of the original's head goes, by operator, on CPU (issue 13).

    python benchmarks/step_profile/step_profile.py              # basic and pool, 1 thread -> Markdown on stdout
    python benchmarks/step_profile/step_profile.py --threads 2
    python benchmarks/step_profile/step_profile.py --compile    # also torch.compile of the precomputed pool step

Synthetic data shaped like the default protocol (`common/synthetic.py`'s `Data`: MiniLM's embedding layer, batch 32,
max_len 128, LSTM(16), fused Adam), the step `run.fit.fit` runs per batch: gather the batch's token ids,
the frozen features (per batch, or gathered from features precomputed for every row, `run.precompute.before_training`),
forward, loss, backward, Adam. First the median wall time per step over `--repeats` timings of `--steps`
steps; then `torch.profiler`'s self CPU time per operator over `--steps` steps, in ms per step (the profiler
adds its own overhead: compare rows, not the sum with the wall time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe
from common.synthetic import Data, median_ms

from bertpooled.run import precompute, runtime


def step_fn(data: Data, pool: str, ahead: bool, compiled: bool = False):
    model = data.model(pool, 0)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3, eps=1e-7, fused=True)
    inputs, lengths, net = data.ids, data.lengths, model
    if ahead:
        inputs, lengths = precompute.train_features(model.features, data.ids, data.lengths, 1 << 30, 128)
        net = model.classify
    if compiled:
        net = torch.compile(net)
    perm = torch.randperm(data.rows)
    state = {"i": 0}

    def step() -> None:
        b = state["i"] % (data.rows // 32)
        state["i"] += 1
        idx = perm[b * 32 : (b + 1) * 32]
        logits = net(inputs[idx], lengths[idx])
        loss = F.binary_cross_entropy_with_logits(logits, data.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument(
        "--compile", action="store_true", help="only: torch.compile of the precomputed pool forward vs eager"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime.keep_freed_memory()  # as a run does
    data = Data(args.rows)
    print(
        f"- machine: {describe()}\n- torch threads: {args.threads}; "
        "command: `python benchmarks/step_profile/step_profile.py"
        f"{f' --threads {args.threads}' if args.threads != 1 else ''}{' --compile' if args.compile else ''}`\n"
    )
    if args.compile:
        for compiled in (False, True):
            step = step_fn(data, "avg:2x2", True, compiled)
            start = time.perf_counter()
            step()
            first = time.perf_counter() - start
            wall = median_ms(step, args.steps, args.repeats, warmup=5)
            print(
                f"- pool, precomputed, {'torch.compile' if compiled else 'eager'}: first step {first:.1f} s, "
                f"then {wall:.2f} ms per step (median of {args.repeats} x {args.steps} steps)"
            )
        return
    for label, pool, ahead in (
        ("basic", "none", False),
        ("pool", "avg:2x2", False),
        ("pool, precomputed", "avg:2x2", True),
    ):
        step = step_fn(data, pool, ahead)
        wall = median_ms(step, args.steps, args.repeats, warmup=10)
        with torch.profiler.profile() as prof:
            for _ in range(args.steps):
                step()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        print(f"### {label}: {wall:.2f} ms per step (median of {args.repeats} x {args.steps} steps)\n")
        print("| operator | self CPU ms per step | calls per step |\n|---|---:|---:|")
        for event in ops:
            print(
                f"| `{event.key}` | {event.self_cpu_time_total / 1e3 / args.steps:.2f} | "
                f"{event.count / args.steps:.0f} |"
            )
        print()


if __name__ == "__main__":
    main()
