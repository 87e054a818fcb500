"""The training rows' frozen features, computed once per run before the first epoch when they fit `precompute_mb`
(what a training loop calls first: `before_training`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from bertpooled.model.heads import PooledLSTMClassifier

# --- The training rows' frozen features, computed once per run when they fit `precompute_mb` (issue 13) ------
#
# A head on frozen inputs recomputes the same features for every row in every epoch: the word lookup, the
# embedding layer's LayerNorm over all `max_len` tokens, pooling. They are a fixed function of the token ids
# (`PooledLSTMClassifier.features`), so one pass before the first epoch gives, bitwise, what every batch would
# compute, and a step then gathers rows of them and runs the head alone. They live in memory in float32 (no
# rounding: the run's numbers do not change), so the budget decides: at the default protocol the pooled
# features of 18,750 rows take 879 MiB and the unpooled ones 3,516 MiB (`benchmarks/seed_protocol/README.md`).
#
# Pooling is what makes them fit, so a pool run can train on precomputed features where a basic run cannot:
# runs log `train_features/cache_hit`, and the report marks training-time ratios between runs that differ in
# it (`bertpooled.contract.CACHED_PHASES`). The pass is timed inside `time/train_s` (and alone as
# `time/precompute_s`): training time stays "token ids to trained head" for every run.

MIB = 2**20


def applies(model: torch.nn.Module, budget_mb: int) -> bool:
    """Models whose frozen part is computed per batch from token ids, with a non-zero budget."""
    return budget_mb > 0 and isinstance(model, PooledLSTMClassifier)


FeatureFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def train_features(
    features: FeatureFn,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    budget_mb: int,
    batch_size: int,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`features(ids, lengths)` of every row, in row order, with their head lengths, when they fit `budget_mb`
    MiB (sized from one row's); else None. For a model where `applies`: its `features`.

    Written into one preallocated tensor, batch by batch, so the peak is the features plus one batch.
    """
    if not len(lengths):
        return None
    first, first_lengths = features(ids[:1], lengths[:1])
    if first.numel() * first.element_size() * len(lengths) / MIB > budget_mb:
        return None
    out = first.new_empty((len(lengths), *first.shape[1:]))
    out_lengths = first_lengths.new_empty(len(lengths))
    bar = tqdm(
        range(0, len(lengths), batch_size),
        desc="precompute features",
        unit="batch",
        leave=False,
        disable=None if progress is None else not progress,
    )
    for start in bar:
        end = start + batch_size
        out[start:end], out_lengths[start:end] = features(ids[start:end], lengths[start:end])
    return out, out_lengths


def before_training(
    model: torch.nn.Module,
    features: FeatureFn | None,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    prepared,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What a training loop calls first: the features when `model` `applies` and they fit the run's budget, timed
    as the run's `precompute` phase; else None (the loop reports which in `fit.Fitted.precomputed`)."""
    cfg = prepared.config
    if features is None or not applies(model, cfg.precompute_mb):
        return None
    with prepared.phases.timed("precompute"):
        return train_features(features, ids, lengths, cfg.precompute_mb, prepared.rt.eval_batch, progress)
