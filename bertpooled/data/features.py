"""Frozen encoder features, computed once per (backbone, data subset, max_len, pooling inside the encoder).

Stored as safetensors (no pickle) in `<cache>/features/<key>.safetensors`: the hidden states in float16 (half
the disk and memory of float32; every run, hit or miss, trains on the same float16-rounded values) and the real
length of each row. Pooling at the output is not part of the key: it is applied on load, so one entry serves
the unpooled encoder and every output pooling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bertpooled import files

CACHE_VERSION = "1"
STORED_DTYPE = torch.float16


@dataclass
class Features:
    """A split's backbone output: hidden states (n, seq, hidden) in float16 and real lengths (n,)."""

    hidden: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)


def cache_key(backbone_fingerprint: str, subset_digest: str, split: str, max_len: int, inside: str) -> str:
    """Changes whenever anything that changes the stored features changes. `inside`: pooling in the encoder."""
    raw = "\0".join(
        [CACHE_VERSION, backbone_fingerprint, subset_digest, split, str(max_len), inside, str(STORED_DTYPE)]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@torch.no_grad()
def compute(
    encoder: torch.nn.Module,
    ids: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    device: torch.device,
    progress: bool | None = None,
    desc: str = "features",
    autocast=contextlib.nullcontext,
) -> Features:
    """Run the frozen backbone over every row, in batches; the only place a run's dataset meets the backbone.

    `encoder(ids, mask)` -> (hidden, mask), the mask True at each row's first `length` positions. `autocast()`: the
    context each forward pass runs in (the run's precision).
    """
    encoder.eval()
    hidden_parts, length_parts = [], []
    bar = tqdm(
        range(0, len(lengths), batch_size),
        desc=desc,
        unit="batch",
        leave=False,
        disable=None if progress is None else not progress,
    )
    for start in bar:
        x = torch.from_numpy(ids[start : start + batch_size]).long().to(device)
        n = torch.from_numpy(lengths[start : start + batch_size]).long().to(device)
        with autocast():
            hidden, mask = encoder(x, torch.arange(x.shape[1], device=n.device).unsqueeze(0) < n.unsqueeze(1))
        hidden_parts.append(hidden.to(STORED_DTYPE).cpu())
        length_parts.append(mask.sum(1).to(torch.int32).cpu())
    if not hidden_parts:
        return Features(torch.empty(0, 0, 0, dtype=STORED_DTYPE), torch.empty(0, dtype=torch.int32))
    return Features(torch.cat(hidden_parts), torch.cat(length_parts))


def load_or_compute(
    make: Callable[[], Features], *, key: str, cache_dir: Path | None, rows: int, meta: dict[str, str]
) -> tuple[Features, bool]:
    """(features, hit): from `cache_dir/features/<key>.safetensors` when present and whole, else `make()` and store."""
    path = Path(cache_dir) / "features" / f"{key}.safetensors" if cache_dir else None
    stored, hit = load_or_store(
        lambda: _as_tensors(make()), path=path, rows=rows, rows_of=lambda t: len(t["lengths"]), meta=meta
    )
    return Features(stored["hidden"], stored["lengths"]), hit


def _as_tensors(features: Features) -> dict[str, torch.Tensor]:
    return {"hidden": features.hidden, "lengths": features.lengths}


def load_or_store(
    make: Callable[[], dict[str, torch.Tensor]],
    *,
    path: Path | None,
    rows: int,
    rows_of: Callable[[dict[str, torch.Tensor]], int],
    meta: dict[str, str],
) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, hit): a safetensors cache entry at `path` when present and whole (`rows_of(entry) == rows`), else
    `make()`, stored there. The one disk cache of tensors (encoder features, a teacher's outputs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    if path is not None and path.is_file():
        try:
            stored = load_file(str(path))
            if rows_of(stored) == rows:
                return stored, True
        except (OSError, KeyError, SafetensorError):
            pass  # unreadable or stale entry: rebuild it below
    made = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent or killed run never leaves a half-written entry.
        with files.replacing(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in made.items()},
                str(tmp),
                metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()},
            )
    return made, False


__all__ = ["STORED_DTYPE", "Features", "cache_key", "compute", "load_or_compute", "load_or_store"]
