"""Where and how a run computes: the device (resolved once per run), autocast precision, seeds and CPU threads."""

from __future__ import annotations

import random

import numpy as np
import torch

from bertpooled.config import Config
from bertpooled.errors import BertpooledError


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit device that is missing is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertpooledError(f"device={name} but no CUDA GPU is visible: use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BertpooledError("device=mps but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> `bf16` on CUDA, `fp32` elsewhere; `bf16` off CUDA is a user error (autocast to bf16 is for GPUs here)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise BertpooledError(f"config: precision=bf16 needs a CUDA device, and this run is on {device}: use precision=fp32 or auto")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved `precision` of bf16 (CUDA only, see resolve_precision); a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

# torch's own default, read once at import: one thread per physical core.
ALL_THREADS = torch.get_num_threads()


def threads_for(config: Config) -> int:
    """torch threads for the run: `num_threads`, or with 0 (auto) 1 for the head alone and all cores for a backbone.

    The LSTM(16) head's step is latency-bound: on 2 cores it gains little from a second thread when the machine
    is quiet and loses many times over when another process wants a core (benchmarks/seed_protocol.md,
    "Threads"). A backbone's forward pass is wide matmuls that scale with cores.
    """
    if config.num_threads:
        return config.num_threads
    return ALL_THREADS if config.features == "encoder" else 1


def configure_threads(config: Config) -> None:
    torch.set_num_threads(threads_for(config))
