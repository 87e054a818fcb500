"""bf16 against fp32 on this CPU: a MiniLM forward pass and a fine-tuning step, 1 and all threads (issue 20).

    python benchmarks/bf16/bf16_cpu.py [--repeats 5] [--compile]     # -> a Markdown table on stdout (bf16_cpu.md here)

Times, at batch 32 x 128 tokens (every token real; ids random: time does not depend on which tokens):
- **encoder forward**: the frozen MiniLM (`PoolingEncoder`, the path frozen features and inference take), eval,
  no grad;
- **fine-tuning step**: the run's classifier (MiniLM + LSTM(16) head, `model.build.build` with a trainable
  backbone), forward + BCE + backward + fused Adam step, the step `run.fit.fit` takes.
Each in fp32 and under `torch.autocast("cpu", torch.bfloat16)` (what `precision=bf16` does), on 1 thread and on
all cores; medians over `--repeats` after warm-up. Also the forward pass with transformers' eager attention
instead of SDPA (the default the backbone loads with), and with `--compile` the forward pass under
`torch.compile` (compile time excluded). Run it on a quiet machine: timings move several-fold when another
process wants a core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe, median_ms

from bertpooled.model import backbone
from bertpooled.model.build import ModelSpec, build
from bertpooled.model.encoder import PoolingEncoder
from bertpooled.model.inference import cpu_has_bf16
from bertpooled.model.pooling import PoolPosition, PoolSpec, lengths_mask

BATCH, LENGTH = 32, 128


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def workloads(info, model):
    """The two timed workloads on one random batch: the frozen encoder's forward pass, a fine-tuning step."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, info.vocab_size, (BATCH, LENGTH), generator=gen)
    lengths = torch.full((BATCH,), LENGTH)
    mask = lengths_mask(lengths, LENGTH)
    labels = (torch.rand(BATCH, generator=gen) > 0.5).float()
    encoder = PoolingEncoder(model, PoolPosition.parse("output"), PoolSpec())
    spec = ModelSpec("encoder", PoolSpec(), PoolPosition.parse("output"), 16, "mask", "keras", LENGTH, "minilm")
    torch.manual_seed(0)
    classifier = build(spec, backbone=model, trainable_backbone=True).train()
    optimizer = torch.optim.Adam(
        [{"params": classifier.head.parameters()}, {"params": classifier.encoder.parameters(), "lr": 2e-5}],
        lr=1e-3,
        fused=True,
    )

    @torch.no_grad()
    def forward(precision: str, net=encoder):
        with autocast(precision):
            net(ids, mask)

    def step(precision: str):
        with autocast(precision):
            logits = classifier(ids, lengths).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return encoder, forward, step


def timed_rows(info, encoder, forward, step, repeats: int, all_threads: int, with_compile: bool) -> list[tuple]:
    """(what, precision, threads, (median, min, max) ms) for every workload, precision and thread count."""
    rows = []
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16"):
            rows.append(
                (
                    "encoder forward",
                    precision,
                    threads,
                    median_ms(lambda precision=precision: forward(precision), repeats, 2),
                )
            )
            rows.append(
                (
                    "fine-tuning step",
                    precision,
                    threads,
                    median_ms(lambda precision=precision: step(precision), repeats, 1),
                )
            )
    torch.set_num_threads(all_threads)
    eager = PoolingEncoder(backbone.load_model(info), PoolPosition.parse("output"), PoolSpec())
    eager.model.set_attn_implementation("eager")
    for precision in ("fp32", "bf16"):
        rows.append(
            (
                "encoder forward, eager attention",
                precision,
                all_threads,
                median_ms(lambda precision=precision: forward(precision, eager), repeats, 2),
            )
        )
    if with_compile:
        compiled = torch.compile(encoder)
        for precision in ("fp32", "bf16"):
            forward(precision, compiled)  # compile outside the timing
            rows.append(
                (
                    "encoder forward, torch.compile",
                    precision,
                    all_threads,
                    median_ms(lambda precision=precision: forward(precision, compiled), repeats, 2),
                )
            )

    return rows


def print_table(rows: list[tuple], model) -> None:
    print(
        f"Machine: {describe()}; native bf16 (AVX512-BF16 or AMX): {cpu_has_bf16()}; attention: "
        f"{model.config._attn_implementation}.\n"
    )
    print("| what (batch 32 x 128 tokens) | precision | threads | median ms (min-max) | fp32 / bf16 |")
    print("|---|---|---|---|---|")
    fp32 = {(w, t): ms[0] for w, p, t, ms in rows if p == "fp32"}
    for what, precision, threads, (med, lo, hi) in rows:
        ratio = f"{fp32[(what, threads)] / med:.2f}x" if precision == "bf16" else ""
        print(f"| {what} | {precision} | {threads} | {med:,.0f} ({lo:,.0f}-{hi:,.0f}) | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the forward pass under torch.compile")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    info = backbone.inspect("minilm")
    model = backbone.load_model(info)
    encoder, forward, step = workloads(info, model)
    rows = timed_rows(info, encoder, forward, step, args.repeats, all_threads, args.compile)
    print_table(rows, model)


if __name__ == "__main__":
    main()
