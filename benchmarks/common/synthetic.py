"""Synthetic inputs shaped like the default protocol, for the CPU step studies (grouped_seeds, step_profile,
eval_batch): MiniLM's embedding layer, batch 32, max_len 128; and their per-step timing loop (`median_ms`)."""

from __future__ import annotations

import statistics
import time

import torch

from bertpooled.model.heads import EmbeddingLayer, PooledLSTMClassifier
from bertpooled.model.pooling import PoolSpec

VOCAB, HIDDEN, POSITIONS, BATCH, MAX_LEN = 30_522, 384, 512, 32, 128


def median_ms(step, steps: int, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) * 1e3 / steps)
    return statistics.median(times)


class Data:
    """Random MiniLM-shaped frozen inputs and `rows` token-id rows with IMDB-like lengths (most at max_len)."""

    def __init__(self, rows: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.table = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05
        self.layer = EmbeddingLayer(
            torch.randn(POSITIONS, HIDDEN, generator=gen) * 0.05,
            torch.randn(HIDDEN, generator=gen) * 0.05,
            torch.ones(HIDDEN),
            torch.zeros(HIDDEN),
            1e-12,
        )
        self.ids = torch.randint(1000, VOCAB, (rows, MAX_LEN), generator=gen)
        short = torch.rand(rows, generator=gen) < 0.3  # about 70% of IMDB reviews fill 128 tokens
        self.lengths = torch.where(
            short, torch.randint(20, MAX_LEN, (rows,), generator=gen), torch.full((rows,), MAX_LEN)
        )
        self.ids[torch.arange(MAX_LEN)[None, :] >= self.lengths[:, None]] = 0
        self.labels = torch.randint(0, 2, (rows,), generator=gen).float()
        self.rows = rows

    def model(self, pool: str, seed: int) -> PooledLSTMClassifier:
        torch.manual_seed(seed)  # run.network.build_model: seed_everything(seed), then construct
        return PooledLSTMClassifier(self.table, PoolSpec.parse(pool), layer=self.layer).train()

    def batches(self, seeds: int):
        """An endless stream of (seeds, 32) row indices, a fresh random order per seed and pass."""
        while True:
            perms = torch.stack([torch.randperm(self.rows) for _ in range(seeds)])
            for begin in range(0, self.rows - BATCH + 1, BATCH):
                yield perms[:, begin : begin + BATCH]
