"""The machine a benchmark ran on, in one line, for the reports in this folder; and the timing loop the CPU
benchmarks share (`median_ms`)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path


def describe() -> str:
    """CPU model, cores, memory, GPU (if torch sees one), torch and its threads, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    extra = ""
    try:
        import torch

        extra = f", torch {torch.__version__} on {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            extra = f", GPU {torch.cuda.get_device_name(0)}" + extra
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{extra}, Python {platform.python_version()}"


def median_ms(step, repeats: int, warmup: int) -> tuple[float, float, float]:
    """(median, min, max) milliseconds of `step` over `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)
