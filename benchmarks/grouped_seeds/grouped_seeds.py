"""Seeds grouped in one training loop vs one seed alone, and the fixed-cost candidates of issue 13, on CPU.

    python benchmarks/grouped_seeds/grouped_seeds.py                    # -> a Markdown table on stdout
    python benchmarks/grouped_seeds/grouped_seeds.py --compile   # also torch.compile of the forward (slow to compile)

Synthetic data shaped like the default protocol: MiniLM's embedding layer (30,522 x 384 word table, 512
positions, LayerNorm; random values: time does not depend on them), batch 32, max_len 128, LSTM(16), Adam
(lr 1e-3, eps 1e-7), BCE with logits. A "step" is what `run.fit.fit` does per batch: gather the batch's ids,
frozen features, forward, loss, zero_grad, backward, optimizer step; for a group, S seeds each with their own
rows (`bertpooled.run.grouped.group_step`). Each cell is the median over `--repeats` timings of `--steps` steps,
after warm-up, in ms per step; "per seed" divides a group's step by S.

Rows:
- alone, fused Adam: the current `fit` path, one seed.
- alone, foreach Adam: the same with Adam(foreach=True) instead of fused.
- alone, cached features: the frozen features (embedding layer + pooling) precomputed for every row once,
  the step gathers them (the cache here holds `--cache-rows` rows; gathers from it are as cache-cold as from
  the full 18,750-row cache would be).
- group S, per_seed / block recurrence, fused / foreach Adam, cached features: the same for S seeds at once.
- features only: the frozen features of one batch of 32 (no grad) vs gathering them from the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe
from common.synthetic import HIDDEN, MAX_LEN, Data, median_ms

from bertpooled.model.heads import PooledLSTMClassifier
from bertpooled.model.pooling import PoolSpec
from bertpooled.run import grouped

TRAIN_ROWS = 18_750
MODES = {"basic": "none", "pool": "avg:2x2"}


def adam(params, optimizer: str) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=1e-3, eps=1e-7, fused=optimizer == "fused", foreach=optimizer == "foreach")


def alone_step(d: Data, pool: str, optimizer: str = "fused", compiled: bool = False):
    model = d.model(pool, 0)
    net = torch.compile(model) if compiled else model
    opt = adam(model.head.parameters(), optimizer)
    batches = d.batches(1)

    def step():
        idx = next(batches)[0]
        loss = F.binary_cross_entropy_with_logits(net(d.ids[idx], d.lengths[idx]), d.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def cache_for(d: Data, model: PooledLSTMClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (rows, T', in) and head lengths of every row, computed once (what a per-run cache holds)."""
    features = grouped.FrozenFeatures(model)
    with torch.no_grad():
        parts = [features(d.ids[i : i + 256], d.lengths[i : i + 256]) for i in range(0, d.rows, 256)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def alone_cached_step(d: Data, pool: str, cache):
    model = d.model(pool, 0)
    opt = adam(model.head.parameters(), "fused")
    x_all, len_all = cache
    batches = d.batches(1)

    def step():
        idx = next(batches)[0]
        loss = F.binary_cross_entropy_with_logits(model.head(x_all[idx], len_all[idx]), d.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def group_of(d: Data, pool: str, seeds: int, recurrence: str) -> grouped.SeedGroup:
    return grouped.SeedGroup([d.model(pool, s) for s in range(seeds)], list(range(seeds)), recurrence).train()


def group_step(
    d: Data, pool: str, seeds: int, recurrence: str = "per_seed", optimizer: str = "fused", compiled: bool = False
):
    group = group_of(d, pool, seeds, recurrence)
    net = torch.compile(group) if compiled else group
    opt = adam([p for _, p in group.head.head_parameters()], optimizer)
    batches = d.batches(seeds)

    def step():
        idx = next(batches)
        logits = net(d.ids[idx], d.lengths[idx])
        losses = torch.stack([F.binary_cross_entropy_with_logits(logits[s], d.labels[idx[s]]) for s in range(seeds)])
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()

    return step


def group_cached_step(d: Data, pool: str, seeds: int, cache):
    group = group_of(d, pool, seeds, "per_seed")
    opt = adam([p for _, p in group.head.head_parameters()], "fused")
    x_all, len_all = cache
    batches = d.batches(seeds)

    def step():
        idx = next(batches)
        logits = group.head(x_all[idx], len_all[idx])
        losses = torch.stack([F.binary_cross_entropy_with_logits(logits[s], d.labels[idx[s]]) for s in range(seeds)])
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()

    return step


def features_step(d: Data, pool: str):
    features = grouped.FrozenFeatures(d.model(pool, 0))
    batches = d.batches(1)

    @torch.no_grad()
    def step():
        idx = next(batches)[0]
        features(d.ids[idx], d.lengths[idx])

    return step


def gather_step(d: Data, cache):
    x_all, len_all = cache
    batches = d.batches(1)

    def step():
        idx = next(batches)[0]
        x_all[idx], len_all[idx]

    return step


def cache_mb(pool: str, bytes_per: int) -> float:
    spec = PoolSpec.parse(pool)
    return TRAIN_ROWS * spec.out_len(MAX_LEN) * spec.out_hidden(HIDDEN) * bytes_per / 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing (a group's step is S seeds' step)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rows", type=int, default=1024, help="synthetic rows (and rows of the feature cache)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile(model) of the forward pass")
    parser.add_argument("--skip-block", action="store_true", help="leave out the block recurrence (slow on CPU)")
    args = parser.parse_args()
    return args


def measure(args, d: Data, threads: list[int]) -> tuple[dict[str, dict], dict[str, float]]:
    """Every candidate step timed per (mode, threads): ms per step by row name, and compile seconds."""
    S = args.seeds
    rows: dict[str, dict] = {}
    compile_s: dict[str, float] = {}

    def cell(name: str, key, make, divide: int = 1):
        step = make()
        if "compile" in name:
            start = time.perf_counter()
            step()
            compile_s[f"{name}, {key[0]}"] = time.perf_counter() - start
        ms = median_ms(step, args.steps, args.repeats, args.warmup)
        rows.setdefault(name, {})[key] = ms
        if divide > 1:
            rows.setdefault(f"{name}, per seed", {})[key] = ms / divide
        print(f"  {name} [{key[0]}, {key[1]} thr]: {ms:.2f} ms", file=sys.stderr, flush=True)

    for t in threads:
        torch.set_num_threads(t)
        for mode, pool in MODES.items():
            key = (mode, t)
            cache = cache_for(d, d.model(pool, 0))
            cell("alone, fused Adam (current fit)", key, lambda pool=pool: alone_step(d, pool))
            cell("alone, foreach Adam", key, lambda pool=pool: alone_step(d, pool, "foreach"))
            cell("alone, cached features", key, lambda pool=pool, cache=cache: alone_cached_step(d, pool, cache))
            cell(f"group S={S}, per_seed, fused Adam", key, lambda pool=pool: group_step(d, pool, S), S)
            cell(
                f"group S={S}, per_seed, foreach Adam",
                key,
                lambda pool=pool: group_step(d, pool, S, optimizer="foreach"),
                S,
            )
            cell(
                f"group S={S}, per_seed, cached features",
                key,
                lambda pool=pool, cache=cache: group_cached_step(d, pool, S, cache),
                S,
            )
            if not args.skip_block:
                cell(f"group S={S}, block recurrence", key, lambda pool=pool: group_step(d, pool, S, "block"), S)
            if args.compile and t == threads[0]:
                cell("alone, torch.compile(model)", key, lambda pool=pool: alone_step(d, pool, compiled=True))
                cell(
                    f"group S={S}, torch.compile(group)",
                    key,
                    lambda pool=pool: group_step(d, pool, S, compiled=True),
                    S,
                )
            cell("features of one batch (no grad)", key, lambda pool=pool: features_step(d, pool))
            cell("gather one batch from the cache", key, lambda cache=cache: gather_step(d, cache))
            cache = None  # free it before the next configuration builds its own

    return rows, compile_s


def print_report(args, rows: dict[str, dict], compile_s: dict[str, float], threads: list[int], loads) -> None:
    S = args.seeds
    load_before, load_after = loads
    columns = [(mode, t) for t in threads for mode in MODES]
    print(f"- machine: {describe()}")
    print(
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)} (a shared machine: other jobs run beside this)"
    )
    print(
        f"- command: `python benchmarks/grouped_seeds/grouped_seeds.py --seeds {S} --steps {args.steps} "
        f"--repeats {args.repeats} "
        f"--threads {args.threads} --rows {args.rows}{' --compile' if args.compile else ''}`; "
        f"ms per training step, medians of {args.repeats} timings of {args.steps} steps\n"
    )
    print("| ms per step | " + " | ".join(f"{m}, {t} thr" for m, t in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(f"{cells[c]:.2f}" if c in cells else "" for c in columns) + " |")
    if compile_s:
        print(
            "\ntorch.compile, first step (compile included): "
            + "; ".join(f"{k}: {v:.1f} s" for k, v in compile_s.items())
        )
    print(
        f"\nFeature cache for {TRAIN_ROWS:,} training rows x {MAX_LEN} tokens x {HIDDEN}: "
        + "; ".join(
            f"{mode} ({pool}) fp32 {cache_mb(pool, 4):,.0f} MiB, bf16 {cache_mb(pool, 2):,.0f} MiB"
            for mode, pool in MODES.items()
        )
    )


def main() -> None:
    args = parse_args()
    d = Data(args.rows)
    load_before = os.getloadavg()
    threads = [int(t) for t in args.threads.split(",")]
    rows, compile_s = measure(args, d, threads)
    load_after = os.getloadavg()
    print_report(args, rows, compile_s, threads, (load_before, load_after))


if __name__ == "__main__":
    main()
