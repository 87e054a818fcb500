"""Where and how a run computes: the device (resolved once per run), autocast precision, seeds and CPU threads."""

from __future__ import annotations

import ctypes
import os
import platform
import random
from dataclasses import dataclass

import numpy as np
import torch

from bertpooled.config import Config
from bertpooled.errors import BertpooledError
from bertpooled.model.inference import cpu_has_bf16


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit device that is missing is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertpooledError(f"device={name} but no CUDA GPU is visible: use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BertpooledError("device=mps but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def uses_backbone(config: Config) -> bool:
    """Whether the run computes through the backbone's encoder (frozen features or fine-tuning), not only the head."""
    return config.feature_kind.encoder


def resolve_precision(precision: str, device: torch.device, backbone_work: bool = False) -> str:
    """The autocast a run uses: `fp32` or `bf16`.

    `auto`: bf16 on CUDA; on a CPU with native bf16 (`cpu_has_bf16`) bf16 for backbone work only, so the original's
    two modes (an LSTM(16) head on embedding-layer features) keep their fp32 numbers bitwise; fp32 elsewhere.
    `bf16` on a CPU without native bf16, or on MPS, is a user error (one line, before any run exists).
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return "bf16" if device.type == "cpu" and backbone_work and cpu_has_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise BertpooledError(
            "config: precision=bf16 needs a CUDA GPU or a CPU with AVX512-BF16 or AMX, and this CPU has neither: "
            "use precision=fp32 or auto"
        )
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise BertpooledError(
            f"config: precision=bf16 runs on CUDA or a bf16-capable CPU, not {device}: use precision=fp32 or auto"
        )
    return precision


def precision_for(config: Config, device: torch.device) -> str:
    """`resolve_precision` for a run's config: the one call every phase of a run makes."""
    return resolve_precision(config.precision, device, backbone_work=uses_backbone(config))


def autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved `precision` of bf16 (CUDA, or a CPU with native bf16); a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# Rows per evaluation batch when `eval_batch_size` is 0 (auto). On CPU a 512-row batch of MiniLM-width
# activations (512 x 128 x 384 floats, 100 MB) overflows the caches and costs 2-3x more per row than 128 rows
# (benchmarks/seed_protocol/README.md, "Evaluation batch"); a GPU wants wide batches. Predictions do not depend on it.
AUTO_EVAL_BATCH = {"cpu": 128}
AUTO_EVAL_BATCH_DEFAULT = 512


def eval_batch_size(config: Config, device: torch.device) -> int:
    """Rows per batch for evaluation and feature extraction: `eval_batch_size`, or with 0 (auto) by device."""
    return config.eval_batch_size or AUTO_EVAL_BATCH.get(device.type, AUTO_EVAL_BATCH_DEFAULT)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# torch's own default, read once at import: one thread per physical core.
ALL_THREADS = torch.get_num_threads()


def threads_for(config: Config) -> int:
    """torch threads for the run: `num_threads`, or with 0 (auto) 1 for the head alone and all cores for a backbone.

    The LSTM(16) head's step is latency-bound: on 2 cores it gains little from a second thread when the machine
    is quiet and loses many times over when another process wants a core (benchmarks/seed_protocol/README.md,
    "Threads"). A backbone's forward pass is wide matmuls that scale with cores.
    """
    if config.num_threads:
        return config.num_threads
    return ALL_THREADS if config.feature_kind.encoder else 1


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved once from its config when it starts, then carried with its inputs:
    every phase reads these values instead of resolving them again."""

    device: torch.device
    precision: str
    """The resolved autocast, `fp32` or `bf16` (`precision_for`)."""
    threads: int
    eval_batch: int
    """Rows per batch for evaluation and feature extraction (`eval_batch_size`)."""

    @classmethod
    def resolve(cls, config: Config) -> Runtime:
        """The run's runtime, or a one-line error (a missing device, bf16 on a CPU without it) before any work."""
        device = resolve_device(config.device)
        return cls(device, precision_for(config, device), threads_for(config), eval_batch_size(config, device))

    def start(self) -> Runtime:
        """Apply what is process-wide: torch's thread count and the allocator's reuse of freed memory."""
        torch.set_num_threads(self.threads)
        keep_freed_memory()
        return self

    def autocast(self):
        """The run's autocast context (a no-op in fp32)."""
        return autocast(self.device, self.precision)


# glibc's mallopt parameters (malloc.h) and the values set: every size a run allocates per batch stays on the
# heap (mmap threshold at glibc's maximum, 32 MiB) and freed memory is kept for the next batch (trim threshold
# 1 GiB, top pad 64 MiB).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOPT = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20))


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory instead of returning it to the OS after every batch.

    By default glibc serves each multi-MB tensor of a batch with a fresh mmap and unmaps it when freed, so
    every batch pays page faults to zero-fill its activations again (millions of minor faults per run).
    Keeping the memory mapped saves time mostly in precomputing features and in evaluation, for 40-60 MB more
    peak RSS (benchmarks/seed_protocol/README.md, "Allocator"). The numbers a run
    computes do not change. No-op (False) where the C library is not glibc, or with the environment variable
    BERTPOOLED_KEEP_FREED_MEMORY=0 (glibc's defaults, e.g. to measure the difference).
    """
    if os.environ.get("BERTPOOLED_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT)
