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
- on CUDA only, also at a serving-sized batch of 256: `throughput/infer_examples_per_s_b256` and
  `latency/batch256_p50_ms` (one whole batch of 256, end to end). Every GPU timing is fenced by
  `torch.cuda.synchronize`, so it counts the kernels, not only their launch.
- `memory/peak_mb`: the peak allocated CUDA memory on a GPU, or the peak RSS on CPU, from the point where the
  run builds its model (training, evaluation, this measurement; data the process still holds counts), reset
  there because a sweep's children share one process: `torch.cuda.reset_peak_memory_stats` on a GPU, Linux's
  `/proc/self/clear_refs` (VmHWM) on CPU. Where the CPU peak cannot be reset (no /proc), only the first run a
  process measures logs `memory/peak_mb`; later ones log `process/peak_mb`, the shared process's peak so far,
  which compare-runs does not count as a run's cost.
- the reference mode (TF-IDF + logistic regression) logs the latency, throughput and memory figures through
  `time_text_classifier` and `peak_memory_metrics`; FLOPs do not apply to it (no FLOP count of sparse
  scikit-learn arithmetic), nor does `runtime/threads`.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bertpooled.model.inference import encode, predict_texts

THROUGHPUT_BATCH = 32
# A GPU is far from busy at 32 texts: it is also timed at a batch a serving GPU would see.
GPU_BATCH = 256
WARMUP_TEXTS = 3
FLOP_EXAMPLES = 8


@contextlib.contextmanager
def _countable(model: torch.nn.Module):
    """Run the ops FlopCounterMode has formulas for: native LSTM (not oneDNN's or cuDNN's), eager attention (not
    SDPA)."""
    backbones: list[Any] = [
        m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")
    ]
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
        for m, impl in zip(backbones, before, strict=True):
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


def extra_batch_sizes(device: torch.device) -> tuple[int, ...]:
    """Batch sizes timed besides THROUGHPUT_BATCH: (GPU_BATCH,) on CUDA; none on CPU, whose metrics stay as they
    were."""
    return (GPU_BATCH,) if device.type == "cuda" else ()


def runtime_params(device: torch.device) -> dict[str, str]:
    """What a GPU run logs about its GPU (`runtime/gpu`, `runtime/cuda`); nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"runtime/gpu": torch.cuda.get_device_name(device), "runtime/cuda": str(torch.version.cuda)}


def reset_peak_memory(device: torch.device) -> None:
    """Start `memory/peak_mb` afresh: CUDA's peak statistics, or on Linux the process's peak RSS (VmHWM)."""
    global _PEAK_RESET
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets the peak RSS to the current RSS (Linux 4.0+)
            fh.write("5")
        _PEAK_RESET = True
    except OSError:
        _PEAK_RESET = False


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU, else this process's peak resident set size (since the last reset
    where Linux allows one)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if _PEAK_RESET:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


#: Whether the CPU peak was reset for the current run, and how many CPU peaks this process has reported.
_PEAK_RESET = False
_RUNS_MEASURED = 0


def peak_memory_metrics(device: torch.device) -> dict[str, float]:
    """`memory/peak_mb` where the figure is the run's own (CUDA; a CPU peak reset at the run's start; the first
    run of a process), else `process/peak_mb`: the peak RSS of a process that already ran another run."""
    global _RUNS_MEASURED
    value = peak_memory_mb(device)
    if device.type == "cuda" or _PEAK_RESET:
        return {"memory/peak_mb": value}
    _RUNS_MEASURED += 1
    return {"memory/peak_mb" if _RUNS_MEASURED == 1 else "process/peak_mb": value}


def time_text_classifier(
    predict, texts: list[str], latency_texts: int = 32, throughput_batches: int = 3
) -> dict[str, float]:
    """`latency/p50_ms`, `latency/p95_ms` (one text at a time after warm-up) and `throughput/infer_examples_per_s`
    (batches of 32 after one warm-up batch) of any `predict(texts)`, end to end on CPU."""
    texts = list(texts)
    for text in texts[:WARMUP_TEXTS]:
        predict([text])
    times = []
    for i in range(latency_texts):
        start = time.perf_counter()
        predict([texts[i % len(texts)]])
        times.append(time.perf_counter() - start)
    latency_ms = np.asarray(times) * 1e3
    batches = [
        [texts[(b * THROUGHPUT_BATCH + i) % len(texts)] for i in range(THROUGHPUT_BATCH)]
        for b in range(throughput_batches + 1)
    ]
    predict(batches[0])
    seconds = []
    for batch in batches[1:]:
        start = time.perf_counter()
        predict(batch)
        seconds.append(time.perf_counter() - start)
    return {
        "latency/p50_ms": float(np.percentile(latency_ms, 50)),
        "latency/p95_ms": float(np.percentile(latency_ms, 95)),
        "throughput/infer_examples_per_s": THROUGHPUT_BATCH * len(seconds) / max(sum(seconds), 1e-9),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    max_len: int,
    device: torch.device,
    latency_texts: int = 32,
    throughput_batches: int = 3,
    batch_sizes: tuple[int, ...] | None = None,
) -> dict[str, float]:
    """The cost contract's metrics for `model` (ids, lengths -> logits) on real `texts` (the test reviews).

    `batch_sizes`: extra batch sizes to time (default `extra_batch_sizes(device)`: 256 on CUDA, none on CPU).
    """
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

    per_batch = _time_batches(model, tokenizer, texts, max_len, device, THROUGHPUT_BATCH, throughput_batches)
    metrics = {
        "cost/backbone_flops_per_example": float(backbone_flops),
        "cost/head_flops_per_example": float(head_flops),
        "latency/p50_ms": float(np.percentile(latency_ms, 50)),
        "latency/p95_ms": float(np.percentile(latency_ms, 95)),
        "throughput/infer_examples_per_s": THROUGHPUT_BATCH * len(per_batch) / max(sum(per_batch), 1e-9),
        "runtime/threads": float(torch.get_num_threads()),
    }
    for size in extra_batch_sizes(device) if batch_sizes is None else batch_sizes:
        per_batch = _time_batches(model, tokenizer, texts, max_len, device, size, throughput_batches)
        metrics[f"throughput/infer_examples_per_s_b{size}"] = size * len(per_batch) / max(sum(per_batch), 1e-9)
        metrics[f"latency/batch{size}_p50_ms"] = float(np.percentile(np.asarray(per_batch) * 1e3, 50))
    return metrics


def _time_batches(
    model, tokenizer, texts: list[str], max_len: int, device: torch.device, size: int, count: int
) -> list[float]:
    """Seconds for each of `count` batches of `size` texts end to end, after one untimed warm-up batch."""
    batches = [[texts[(b * size + i) % len(texts)] for i in range(size)] for b in range(count + 1)]
    predict_texts(model, tokenizer, batches[0], max_len, device)  # warm-up
    seconds = []
    for batch in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        predict_texts(model, tokenizer, batch, max_len, device)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds
