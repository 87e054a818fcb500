"""The pooling layer, in one place: its spelling (`avg:2x2`), where it sits (`pool_at`), and masked pooling.

Every pooled value in the project is computed by `pool` / `pool_sequence` / `pool_hidden` below, wherever the
position puts them: on the word embeddings (`input`), between encoder layers (`layer:K`, bertpooled.model.encoder)
or on the encoder's last hidden state (`output`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpooled.errors import BertpooledError


def _avg_window(x: torch.Tensor, k: int) -> torch.Tensor:
    # Strided slices summed in order, then / k: bitwise the mean of each window (checked for k = 2, 3, 4), and
    # about 10x faster on CPU than a mean over an unflattened axis of size k (benchmarks/grouped_seeds/README.md).
    out = x[..., 0::k]
    for i in range(1, k):
        out = out + x[..., i::k]
    return out / k


def _max_window(x: torch.Tensor, k: int) -> torch.Tensor:
    out = x[..., 0::k]
    for i in range(1, k):
        out = torch.maximum(out, x[..., i::k])
    return out


def _avg_masked(x: torch.Tensor, m: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    weights = m.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(2) / weights.sum(2).clamp_min(1.0)


def _max_masked(x: torch.Tensor, m: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    pooled = x.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(2)
    return pooled.masked_fill(~real.unsqueeze(-1), 0.0)


@dataclass(frozen=True)
class Reducer:
    """One pooling kind: how windows of k features pool (`window(x, k)`: consecutive windows along the last axis,
    whose length is a multiple of k), and how a window of sequence positions pools when some are padding
    (`masked(x, m, real)`: x (b, steps, window, h), m its mask, real = m.any(-1); a window of padding alone must
    pool to zeros)."""

    window: Callable[[torch.Tensor, int], torch.Tensor]
    masked: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# The pooling kinds: a new kind is one entry here; the parser, its error text and both pooling ops read this table.
REDUCERS: dict[str, Reducer] = {
    "avg": Reducer(_avg_window, _avg_masked),
    "max": Reducer(_max_window, _max_masked),
}


# The kind that keeps tokens by the attention they receive (PoWER-BERT's significance score) instead of pooling
# windows: `topk:R` keeps [CLS] and the top share R of the positions, in their order.
TOPK = "topk"


@dataclass(frozen=True)
class PoolSpec:
    """Pooling of kind `avg` or `max` with window = stride `seq` on the sequence and `hidden` on the hidden axis,
    or `topk` keeping the share `keep` of the sequence's positions chosen by the attention they receive.

    Windows are 'valid' as in Keras: a trailing part shorter than the window is dropped.
    """

    kind: str = "avg"
    seq: int = 1
    hidden: int = 1
    keep: float = 1.0
    """topk: the share of positions kept (of the padded length, [CLS] included); 1.0 for the window kinds."""

    @classmethod
    def parse(cls, text: str | None) -> PoolSpec:
        """`avg:2x2`, `max:2x1`, `topk:0.5`, `none` (= window 1x1) -> PoolSpec; anything else is a one-line error."""
        text = (text or "none").strip().lower()
        if text in ("none", "off", ""):
            return cls("avg", 1, 1)
        topk = re.fullmatch(rf"{TOPK}:(\d*\.?\d+)", text)
        if topk:
            keep = float(topk[1])
            if not 0 < keep <= 1:
                raise BertpooledError(
                    f"pool={text!r} is not valid: topk keeps a share of the tokens in (0, 1], e.g. topk:0.5"
                )
            return cls(TOPK, 1, 1, keep)
        match = re.fullmatch(r"(\w+):(\d+)x(\d+)", text)
        if not match or match[1] not in REDUCERS or int(match[2]) < 1 or int(match[3]) < 1:
            raise BertpooledError(
                f"pool={text!r} is not valid: write KIND:SxH with KIND {' or '.join(REDUCERS)} and windows >= 1 "
                f"(e.g. avg:2x2), {TOPK}:R with a share R in (0, 1] of the tokens kept by attention (e.g. "
                f"{TOPK}:0.5), or none"
            )
        return cls(match[1], int(match[2]), int(match[3]))

    @property
    def is_topk(self) -> bool:
        return self.kind == TOPK

    @property
    def is_identity(self) -> bool:
        return not self.is_topk and self.seq == 1 and self.hidden == 1

    def __str__(self) -> str:
        if self.is_topk:
            return f"{TOPK}:{self.keep:g}"
        return "none" if self.is_identity else f"{self.kind}:{self.seq}x{self.hidden}"

    def out_len(self, length: int) -> int:
        """Sequence length after pooling (topk: the share kept, rounded up, at least [CLS])."""
        if self.is_topk:
            return max(1, math.ceil(length * self.keep - 1e-9))
        return length // self.seq

    def out_hidden(self, hidden: int) -> int:
        """Hidden size after pooling."""
        return hidden // self.hidden


POSITIONS = ("input", "output", "layer:K", "layer:K1,layer:K2,...")


@dataclass(frozen=True)
class PoolPosition:
    """Where pooling sits: `input` (word embeddings), `output` (encoder's last hidden state) or `layer:K[,layer:K2...]`.

    `layer:K` pools the hidden states after the first K encoder layers (K=0: the embedding layer's output), so
    layers K+1.. run on the shorter sequence. Several stages (`layer:2,layer:4`, Funnel-Transformer style) pool
    the sequence again before each listed layer, so it shrinks by the window once per stage.
    """

    where: str = "input"
    layers: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str | PoolPosition | None) -> PoolPosition:
        """`input`, `output`, `layer:K` or `layer:K1,layer:K2,...` (K increasing) -> PoolPosition; else a one-line
        error."""
        if isinstance(text, PoolPosition):
            return text
        text = re.sub(r"\s+", "", (text or "input").lower())
        if text in ("input", "output"):
            return cls(text)
        parts = text.split(",")
        matches = [re.fullmatch(r"layer:(\d+)", part) for part in parts]
        if not all(matches):
            raise BertpooledError(
                f"config: pool_at={text!r} is not valid: use input, output, layer:K (K encoder layers before pooling, "
                "e.g. layer:2) or several stages as layer:K1,layer:K2 (e.g. layer:2,layer:4)"
            )
        layers = tuple(int(m[1]) for m in matches if m)  # all match (checked above)
        if any(b <= a for a, b in itertools.pairwise(layers)):
            raise BertpooledError(
                f"config: pool_at={text!r} is not valid: list each pooling stage once, in increasing layer order, "
                "e.g. layer:2,layer:4"
            )
        return cls("layer", layers)

    @property
    def stages(self) -> int:
        """How many times the sequence is pooled inside the encoder (0 for input and output)."""
        return len(self.layers)

    def __str__(self) -> str:
        return ",".join(f"layer:{k}" for k in self.layers) if self.where == "layer" else self.where


def pool_sequence_cls(
    x: torch.Tensor, mask: torch.Tensor, spec: PoolSpec, separate_cls: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pool_sequence`, or with `separate_cls` (Funnel-Transformer's `separate_cls`) [CLS] kept apart: position 0
    passes unpooled and the windows start at position 1, so [CLS] is never averaged with its neighbours."""
    if not separate_cls or spec.seq == 1:
        return pool_sequence(x, mask, spec)
    rest, rest_mask = pool_sequence(x[:, 1:], mask[:, 1:], spec)
    return torch.cat([x[:, :1], rest], 1), torch.cat([mask[:, :1], rest_mask], 1)


def keep_top(x: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep [CLS] (position 0) and the real positions with the highest `scores`, `keep` in all, in their order.

    Padding is never chosen over a real position; a row with fewer real positions than `keep` keeps them all and
    fills up with padding, which stays masked and (right padding) at the end, so lengths still describe the rows.
    Returns the kept values and their mask.
    """
    keep = min(keep, x.shape[1])
    ranked = scores.float().masked_fill(~mask, float("-inf"))
    ranked[:, 0] = float("inf")
    idx = ranked.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])), mask.gather(1, idx)


def pool_hidden(x: torch.Tensor, spec: PoolSpec) -> torch.Tensor:
    """Pool the last axis of `x` in windows of `spec.hidden` (no masking: every feature is real)."""
    if spec.hidden == 1:
        return x
    width = (x.shape[-1] // spec.hidden) * spec.hidden
    return REDUCERS[spec.kind].window(x[..., :width], spec.hidden)


def pool_sequence(x: torch.Tensor, mask: torch.Tensor, spec: PoolSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (batch, seq, hidden) in windows of `spec.seq` along seq, ignoring positions where `mask` is False.

    Returns the pooled values and the pooled mask: a window is real when any of its positions is.
    A window of padding alone pools to zeros, so padding never leaks into pooled values.
    """
    if spec.seq == 1:
        return x, mask
    steps = x.shape[1] // spec.seq
    if steps == 0:
        raise BertpooledError(f"sequence of {x.shape[1]} positions is shorter than the pooling window {spec.seq}")
    x = x[:, : steps * spec.seq].unflatten(1, (steps, spec.seq))
    m = mask[:, : steps * spec.seq].unflatten(1, (steps, spec.seq))
    pooled_mask = m.any(-1)
    return REDUCERS[spec.kind].masked(x, m, pooled_mask), pooled_mask


def pool(x: torch.Tensor, mask: torch.Tensor, spec: PoolSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (batch, seq, hidden) over both axes as `spec` says; see `pool_sequence` for the mask."""
    return pool_sequence(pool_hidden(x, spec), mask, spec)


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch, max_len) bool mask, True at the first `lengths[b]` positions of row b."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def pooled_length(length: int, spec: PoolSpec, stages: int = 1, separate_cls: bool = False) -> int:
    """Sequence length after `stages` successive sequence poolings by `spec` (each drops its trailing part; with
    `separate_cls` the windows pool the positions after [CLS])."""
    for _ in range(stages):
        length = 1 + spec.out_len(length - 1) if separate_cls and not spec.is_topk else spec.out_len(length)
    return length


def pooled_lengths(lengths: torch.Tensor, spec: PoolSpec, max_len: int) -> torch.Tensor:
    """Real positions left after sequence pooling: a window counts when it holds at least one real position."""
    return torch.clamp(torch.div(lengths + spec.seq - 1, spec.seq, rounding_mode="floor"), max=spec.out_len(max_len))


__all__ = [
    "POSITIONS",
    "REDUCERS",
    "TOPK",
    "PoolPosition",
    "PoolSpec",
    "Reducer",
    "keep_top",
    "lengths_mask",
    "pool",
    "pool_hidden",
    "pool_sequence",
    "pool_sequence_cls",
    "pooled_length",
    "pooled_lengths",
]
