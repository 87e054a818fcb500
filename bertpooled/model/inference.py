"""Texts in, probabilities out: the one end-to-end path (tokenize -> features -> head) that serving and timing share."""

from __future__ import annotations

import numpy as np
import torch


def encode(tokenizer, texts: list[str], max_len: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (n, max_len) and real lengths, as training tokenized them (truncation, [CLS]/[SEP])."""
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].sum(1).to(device)


@torch.no_grad()
def predict_texts(model: torch.nn.Module, tokenizer, texts: list[str], max_len: int,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """P(positive) per text, float64; `model` maps (ids, lengths) to logits and is in eval mode."""
    ids, lengths = encode(tokenizer, texts, max_len, device)
    return torch.sigmoid(model(ids, lengths).float()).cpu().numpy().astype(np.float64)
