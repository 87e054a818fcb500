"""What a trained model costs at inference, measured on real test inputs: FLOPs, latency, throughput, memory.

Metric names are a contract (compare-runs reads every `cost/`, `latency/`, `memory/`, `throughput/` metric):
- `cost/backbone_flops_per_example`, `cost/head_flops_per_example`: PyTorch's FlopCounterMode over one
  forward pass of real test reviews padded to max_len, split at the head (`<model>.head`): the backbone is
  everything before it (a word-embedding lookup counts 0). oneDNN's and cuDNN's fused LSTMs and CPU flash
  attention have no flop formula in the counter, so the count runs PyTorch's native LSTM and eager
  attention: the same arithmetic, counted.
- `latency/p50_ms`, `latency/p95_ms`: one text at a time, end to end (tokenize -> features -> head), after
  warm-up; `runtime/threads` beside them says on how many threads.
- `throughput/infer_examples_per_s`: batches of 32 texts end to end, after one warm-up batch.
- `memory/peak_mb`: the process's peak RSS on CPU (everything the run held, data and training included), or
  the peak allocated CUDA memory on a GPU.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bertpooled.inference import encode, predict_texts

THROUGHPUT_BATCH = 32
WARMUP_TEXTS = 3
FLOP_EXAMPLES = 8


@contextlib.contextmanager
def _countable(model: torch.nn.Module):
    """Run the ops FlopCounterMode has formulas for: native LSTM (not oneDNN's or cuDNN's), eager attention (not SDPA)."""
    backbones = [m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")]
    before = [m.config._attn_implementation for m in backbones]
    try:
        for m in backbones:
            m.set_attn_implementation("eager")
        with warnings.catch_warnings():
            # Toggling oneDNN off warns about TF32 on Intel GPUs, which this process does not use.
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            # cuDNN's LSTM is as opaque to the counter as oneDNN's (on an H200 the head counted 32 FLOPs: the
            # dense layer alone), so both fall back to PyTorch's own LSTM while counting.
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
                yield
    finally:
        for m, impl in zip(backbones, before):
            m.set_attn_implementation(impl)


@torch.no_grad()
def flops_per_example(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """(backbone, head) FLOPs per example of `model(ids, lengths)`, split at its `head` submodule."""
    model.eval()
    with _countable(model), FlopCounterMode(display=False) as counter:
        model(ids, lengths)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    head_keys = [k for k in counts if k.split(".")[-1] == "head" and k.count(".") == 1]
    head = sum(sum(counts[k].values()) for k in head_keys)
    n = len(lengths)
    return (total - head) / n, head / n


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: torch.nn.Module, tokenizer, texts: list[str], max_len: int, device: torch.device,
            latency_texts: int = 32, throughput_batches: int = 3) -> dict[str, float]:
    """The cost contract's metrics for `model` (ids, lengths -> logits) on real `texts` (the test reviews)."""
    model.eval()
    texts = list(texts)
    ids, lengths = encode(tokenizer, texts[:FLOP_EXAMPLES], max_len, device)
    backbone_flops, head_flops = flops_per_example(model, ids, lengths)

    for text in texts[:WARMUP_TEXTS]:
        predict_texts(model, tokenizer, [text], max_len, device)
    pick = [texts[i % len(texts)] for i in range(latency_texts)]
    times = []
    for text in pick:
        _sync(device)
        start = time.perf_counter()
        predict_texts(model, tokenizer, [text], max_len, device)
        _sync(device)
        times.append(time.perf_counter() - start)
    latency_ms = np.asarray(times) * 1e3

    batches = [[texts[(b * THROUGHPUT_BATCH + i) % len(texts)] for i in range(THROUGHPUT_BATCH)]
               for b in range(throughput_batches + 1)]
    predict_texts(model, tokenizer, batches[0], max_len, device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        predict_texts(model, tokenizer, batch, max_len, device)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "cost/backbone_flops_per_example": float(backbone_flops),
        "cost/head_flops_per_example": float(head_flops),
        "latency/p50_ms": float(np.percentile(latency_ms, 50)),
        "latency/p95_ms": float(np.percentile(latency_ms, 95)),
        "throughput/infer_examples_per_s": THROUGHPUT_BATCH * throughput_batches / max(seconds, 1e-9),
        "runtime/threads": float(torch.get_num_threads()),
    }
