"""Threads for the LSTM head and for encoder forward passes: 1 vs all cores, quiet and beside a busy process.

    python benchmarks/seed_protocol/threads.py   # -> a Markdown table on stdout (pasted into README.md here)

Times one training step of the original's head (features=embedding_layer on MiniLM, batch 32, max_len 128,
basic and pool, Adam) and one frozen MiniLM forward pass (batch 64 x 128 tokens), each on 1 and on all torch
threads. "busy" starts one competing process that keeps a core busy (a Python spin loop), as a second job on
a shared machine would. Medians over the timed repeats, after warm-up. Token ids are random: time does not
depend on which tokens they are.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe, median_ms

from bertpooled.model import backbone
from bertpooled.model.heads import PooledLSTMClassifier
from bertpooled.model.pooling import PoolSpec, lengths_mask


def head_step(embeddings, pool: str, batch: int = 32, max_len: int = 128):
    torch.manual_seed(0)
    model = PooledLSTMClassifier(embeddings.table, PoolSpec.parse(pool), layer=embeddings.layer).train()
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3, eps=1e-7, fused=True)
    ids = torch.randint(1000, 30000, (batch, max_len))
    lengths = torch.full((batch,), max_len)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        loss = F.binary_cross_entropy_with_logits(model(ids, lengths), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def encoder_step(bert, batch: int = 64, max_len: int = 128):
    ids = torch.randint(1000, 30000, (batch, max_len))
    mask = lengths_mask(torch.full((batch,), max_len), max_len).long()

    @torch.no_grad()
    def step():
        bert(input_ids=ids, attention_mask=mask)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60, help="timed head steps per cell (encoder: a fifth)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    info = backbone.inspect("minilm")
    embeddings = backbone.load_word_embeddings(info, whole_layer=True)
    bert = backbone.load_model(info)
    cases = {
        "head step, basic (ms)": (head_step(embeddings, "none"), args.repeats, 10),
        "head step, pool (ms)": (head_step(embeddings, "avg:2x2"), args.repeats, 10),
        "MiniLM forward, 64x128 (ms)": (encoder_step(bert), max(args.repeats // 5, 3), 2),
    }
    rows = {name: {} for name in cases}
    for load in ("quiet", "busy"):
        spinner = None
        if load == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for threads in sorted({1, cores}):
                torch.set_num_threads(threads)
                for name, (step, repeats, warmup) in cases.items():
                    rows[name][(load, threads)] = median_ms(step, repeats, warmup)[0]
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    loadavg = os.getloadavg()[0]
    columns = [(load, t) for load in ("quiet", "busy") for t in sorted({1, cores})]
    print(f"- machine: {describe()}; 1-min load average at the end: {loadavg:.1f}")
    print(f"- command: `python benchmarks/seed_protocol/threads.py --repeats {args.repeats}`; medians\n")
    print("| | " + " | ".join(f"{load}, {t} thread{'s' if t > 1 else ''}" for load, t in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(f"{cells[c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
