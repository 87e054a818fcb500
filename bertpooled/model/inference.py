"""Texts in, probabilities out: the one end-to-end path (tokenize -> features -> head) that serving and timing share."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def encode(
    tokenizer, texts: list[str], max_len: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (n, max_len) and real lengths, as training tokenized them (truncation, [CLS]/[SEP])."""
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].sum(1).to(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), by torch's own capability checks.

    Without either, oneDNN emulates bf16 through fp32 and gains nothing. torch exposes these checks under
    `torch.cpu` without a public alias; a torch that lacks them counts as a CPU without bf16.
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def serving_precision(requested: str | None, backbone_work: bool, device: torch.device | str = "cpu") -> str:
    """The autocast a logged model predicts in on this machine: what its run asked for (`auto`, `bf16`, `fp32`; None for
    models logged before precision was stored), resolved as a run would resolve it here, except that `bf16` on a
    machine without it falls back to fp32 instead of refusing to serve."""
    device = torch.device(device)
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    if requested == "bf16" or (requested == "auto" and backbone_work):
        return "bf16" if native else "fp32"
    return "fp32"


@torch.no_grad()
def predict_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    max_len: int,
    device: torch.device | str = "cpu",
    precision: str | None = None,
) -> np.ndarray:
    """P(positive) per text, float64; `model` maps (ids, lengths) to logits and is in eval mode.

    `precision` (resolved: `bf16` or `fp32`) opens its own autocast; None keeps the caller's (a run's cost timing
    runs inside the run's autocast).
    """
    ids, lengths = encode(tokenizer, texts, max_len, device)
    own = precision is not None
    with (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
        if own
        else contextlib.nullcontext()
    ):
        logits = model(ids, lengths)
    return torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
