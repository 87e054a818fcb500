"""What a run will take, held against what this machine has, before anything starts: worker processes against
its cores, a run's memory (model width, batch, sequence length, workers) against its free memory.

The memory estimate is deliberately rough (it counts what grows with the settings: the head's weights with
their gradients and Adam's two moments, the batch's activations, a backbone that runs, and a fixed cost for an
interpreter with torch and MLflow loaded); it is meant to stop `--lstm-units 6000` (a 3.5 GB model) or
`--parallel 50` on a small machine with one line, not to predict a run's peak. `BERTPOOLED_IGNORE_MEMORY=1`
skips the memory check for a user who knows better (swap, a machine that frees memory on demand).
"""

from __future__ import annotations

import os
from typing import Any

from bertpooled.errors import BertpooledError

OVERRIDE_ENV = "BERTPOOLED_IGNORE_MEMORY"
MIB = 1024 * 1024
# A process with torch, transformers and MLflow imported and the data read: `bertpooled serve`'s idle
# 516 MB (benchmarks/reliability/README.md), rounded up.
PROCESS_BYTES = 600 * MIB
FLOAT_BYTES = 4


def check_parallel(parallel: int, option: str = "--parallel") -> None:
    """`parallel` worker processes on this machine: at most one per core (each trains on 1 thread or more)."""
    cores = os.cpu_count() or 1
    if parallel > cores:
        raise BertpooledError(
            f"{option} {parallel} is more than this machine's {cores} cores (each worker trains on a core or more): "
            f"pass {option} {cores} or less, or spread the work over a Ray cluster with --executor ray"
        )


def run_bytes(config: Any, hidden_size: int, num_layers: int = 0) -> int:
    """A rough upper estimate of one training run's memory: see the module doc. `hidden_size` and `num_layers`
    are the backbone's (`backbone.inspect`)."""
    units, batch, length = int(config.lstm_units), int(config.batch_size), int(config.max_len)
    width = hidden_size
    head = 4 * (width * units + units * units + 2 * units) + units + 1
    weights = head * FLOAT_BYTES * 4  # the weights, their gradients and Adam's two moments
    # Per token of a batch: the input features, and the LSTM's four gates, cell and hidden state kept for backward.
    activations = batch * length * (width + 6 * units) * FLOAT_BYTES
    backbone = 0
    if str(config.features) == "encoder":
        per_layer = 12 * width * width  # attention and feed-forward weights of a BERT layer
        backbone = num_layers * per_layer * FLOAT_BYTES * (4 if config.finetune else 1)
        backbone += num_layers * batch * length * (16 * width + 2 * length) * FLOAT_BYTES  # its activations
    return PROCESS_BYTES + weights + activations + backbone


def available_bytes() -> int | None:
    """Memory this machine can give now (Linux's MemAvailable; elsewhere its free pages), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config: Any, hidden_size: int, num_layers: int = 0, workers: int = 1, what: str = "the run") -> None:
    """Refuse, in one line naming the settings and the override, `workers` runs of `config` that would need more
    memory than the machine has free."""
    if os.environ.get(OVERRIDE_ENV, "").strip() not in ("", "0") or str(config.mode) == "reference":
        return  # the reference (TF-IDF) builds no network
    free = available_bytes()
    workers = max(1, workers)
    # This process is already running (its memory is not free); each worker process is a new one.
    need = (run_bytes(config, hidden_size, num_layers) - PROCESS_BYTES) * workers
    need += PROCESS_BYTES * workers if workers > 1 else 0
    if free is None or need <= free:
        return
    each = f" ({workers} workers)" if workers > 1 else ""
    raise BertpooledError(
        f"{what}{each} would need about {need / 2**30:.1f} GiB (lstm_units={config.lstm_units}, batch_size="
        f"{config.batch_size}, max_len={config.max_len}) and this machine has {free / 2**30:.1f} GiB free: lower "
        f"them{' or --parallel' if workers > 1 else ''}, or set {OVERRIDE_ENV}=1 to run anyway"
    )
