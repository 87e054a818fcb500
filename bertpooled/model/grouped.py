"""S independent LSTM heads of one configuration as one module: the network half of a seed group (issue 13).

A `SeedGroup` holds S copies of a run's `LSTMHead` as stacked parameters (`weight_ih_l0` of shape
[S, 4*units, in], ...), each copy initialised exactly as a run alone with that seed initialises it (the
per-seed models are built by the run's own builder and their weights stacked); the frozen part of the models
(`FrozenFeatures`) is shared. Training it is bertpooled.run.fit's loop with a seed axis (bertpooled.run.grouped
builds the group and its optimizer); `SeedGroup.split` writes the trained weights back into the S ordinary
per-seed models, whose state dicts are those of a run trained alone.

Two ways to run the recurrence (`recurrence=`):

- `per_seed` (default on CPU): the input projection and the LSTM kernel are called per seed, with exactly the
  shapes and kernels `LSTMHead.forward` uses alone, so a seed's forward pass is the same arithmetic as alone.
  The group saves the fixed per-step cost (loss, backward bookkeeping, zero_grad, optimizer step, feature
  lookup), not the FLOPs: on CPU the input projection is compute-bound and scales with S whatever is stacked.
- `block` (default on CUDA): one batched matmul projects all seeds' inputs, and ONE LSTM kernel call runs all S
  recurrences as one LSTM of S*units units whose recurrent weight is block-diagonal (seed s's units only see
  seed s's units; batch row b carries seed s's b-th example in seed s's units). One launch sequence for S
  seeds. On CPU its identity input weight costs (4*S*units)^2 per token, so it loses there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bertpooled.model.heads import (
    Classifier,
    EncoderLSTMClassifier,
    LSTMHead,
    PooledLSTMClassifier,
    frozen_features,
    last_states,
    lstm_kernel,
)
from bertpooled.model.pooling import lengths_mask, pool_hidden, pool_sequence

RECURRENCES = ("per_seed", "block")

# The order LSTMHead registers its trainable parameters in (bias_hh_l0 only with bias="torch"): the per-seed
# optimizer state is laid out in this order, as `torch.optim.Adam(model.head.parameters())` lays it out.
HEAD_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "dense.weight", "dense.bias")


def default_recurrence(device: torch.device | str) -> str:
    return "block" if torch.device(device).type == "cuda" else "per_seed"


class GroupedLSTMHead(nn.Module):
    """S independent `LSTMHead`s as stacked parameters: forward (S, batch, seq, in) -> logits (S, batch)."""

    bias_hh_l0: torch.Tensor
    _identity: torch.Tensor
    _no_bias: torch.Tensor
    _block_identity: torch.Tensor
    _block_no_bias: torch.Tensor
    _seed_eye: torch.Tensor

    def __init__(self, heads: Sequence[LSTMHead], recurrence: str = "per_seed") -> None:
        super().__init__()
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence={recurrence!r}: use one of {RECURRENCES}")
        first = heads[0]
        for head in heads:
            if (head.in_features, head.units, head.bias) != (first.in_features, first.units, first.bias):
                raise ValueError("a seed group needs heads of one shape and one bias layout")
        self.seeds, self.in_features, self.units, self.bias = len(heads), first.in_features, first.units, first.bias
        self.recurrence = recurrence

        def stack(name: str) -> torch.Tensor:
            return torch.stack([head.get_parameter(name).detach() for head in heads]).clone()

        # Same names as LSTMHead's (with a leading seed axis); dense.* flattened to dense_weight/dense_bias.
        self.weight_ih_l0 = nn.Parameter(stack("weight_ih_l0"))
        self.weight_hh_l0 = nn.Parameter(stack("weight_hh_l0"))
        self.bias_ih_l0 = nn.Parameter(stack("bias_ih_l0"))
        if first.bias == "torch":
            self.bias_hh_l0 = nn.Parameter(stack("bias_hh_l0"))
        else:
            self.register_buffer("bias_hh_l0", torch.zeros_like(self.bias_ih_l0), persistent=False)
        self.dense_weight = nn.Parameter(stack("dense.weight"))
        self.dense_bias = nn.Parameter(stack("dense.bias"))
        gates = 4 * self.units
        self.register_buffer("_identity", torch.eye(gates), persistent=False)
        self.register_buffer("_no_bias", torch.zeros(gates), persistent=False)
        self.register_buffer("_block_identity", torch.eye(self.seeds * gates), persistent=False)
        self.register_buffer("_block_no_bias", torch.zeros(self.seeds * gates), persistent=False)
        self.register_buffer("_seed_eye", torch.eye(self.seeds), persistent=False)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(LSTMHead name, stacked parameter) in LSTMHead's registration order: what the per-seed Adam state follows."""
        stacked = {
            "weight_ih_l0": self.weight_ih_l0,
            "weight_hh_l0": self.weight_hh_l0,
            "bias_ih_l0": self.bias_ih_l0,
            "bias_hh_l0": self.bias_hh_l0,
            "dense.weight": self.dense_weight,
            "dense.bias": self.dense_bias,
        }
        out = []
        for name in HEAD_PARAMS:
            param = stacked[name]
            if isinstance(param, nn.Parameter):  # bias_hh_l0 is a fixed buffer with bias="keras"
                out.append((name, param))
        return out

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (S, batch) from inputs (S, batch, seq, in); `lengths` (S, batch): read each row's last real step."""
        if x.shape[0] != self.seeds:
            raise ValueError(f"inputs for {x.shape[0]} seeds given to a group of {self.seeds}")
        if self.recurrence == "block":
            last = self._block(x, lengths)
            return torch.baddbmm(self.dense_bias.unsqueeze(1), last, self.dense_weight.transpose(1, 2)).squeeze(-1)
        return torch.stack([self._one(s, x[s], None if lengths is None else lengths[s]) for s in range(self.seeds)])

    def _one(self, s: int, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Seed s's logits: LSTMHead.forward's CPU training path, with seed s's weights (same kernels, same shapes)."""
        inputs = F.linear(x, self.weight_ih_l0[s], self.bias_ih_l0[s])
        weights = [self._identity.to(x.dtype), self.weight_hh_l0[s], self._no_bias.to(x.dtype), self.bias_hh_l0[s]]
        out, h_n = lstm_kernel(inputs, weights, x.new_zeros(1, x.shape[0], self.units), self.training)
        return F.linear(last_states(out, h_n, lengths), self.dense_weight[s], self.dense_bias[s]).squeeze(-1)

    def _block(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Last states (S, batch, units) of all seeds from one LSTM of S*units units with block-diagonal recurrence."""
        seeds, batch, steps, width = x.shape
        units, gates = self.units, 4 * self.units
        projected = torch.baddbmm(
            self.bias_ih_l0.unsqueeze(1), x.reshape(seeds, batch * steps, width), self.weight_ih_l0.transpose(1, 2)
        )
        # (S, B, T, 4, H) -> (B, T, 4, S, H): gate-major, as the kernel orders an LSTM of S*H units.
        inputs = (
            projected.view(seeds, batch, steps, 4, units).permute(1, 2, 3, 0, 4).reshape(batch, steps, seeds * gates)
        )
        recurrent = self.weight_hh_l0.view(seeds, 4, units, units).permute(1, 0, 2, 3)
        recurrent = torch.einsum("gsij,st->gsitj", recurrent, self._seed_eye.to(x.dtype)).reshape(
            seeds * gates, seeds * units
        )
        bias_hh = self.bias_hh_l0.view(seeds, 4, units).transpose(0, 1).reshape(seeds * gates)
        weights = [self._block_identity.to(x.dtype), recurrent, self._block_no_bias.to(x.dtype), bias_hh]
        out, h_n = lstm_kernel(inputs, weights, x.new_zeros(1, batch, seeds * units), self.training)
        if lengths is None:
            return h_n[0].view(batch, seeds, units).transpose(0, 1)
        out = out.view(batch, steps, seeds, units)
        rows = torch.arange(batch, device=x.device).unsqueeze(0)
        cols = torch.arange(seeds, device=x.device).unsqueeze(1)
        return out[rows, (lengths - 1).clamp_min(0).long(), cols]

    @torch.no_grad()
    def write_into(self, s: int, head: LSTMHead) -> None:
        """Copy seed s's trained weights into an ordinary LSTMHead (same names, shapes and dtypes as trained alone)."""
        for name, stacked in self.head_parameters():
            head.get_parameter(name).copy_(stacked[s])


class FrozenFeatures(nn.Module):
    """The frozen part of a seed's model, shared by the group: rows -> (features for the head, head lengths | None).

    For a `PooledLSTMClassifier`: the word lookup (and embedding layer), hidden pooling, then sequence pooling,
    masked (`padding=mask`, lengths after pooling) or reading padding like a token (`read`, None): exactly
    `PooledLSTMClassifier.forward` before its head. For cached encoder features (`EncoderLSTMClassifier`): its
    `classify` before the head. Rows of several seeds are passed flattened as one batch.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, PooledLSTMClassifier):
            self.kind, self.pool, self.padding = "tokens", model.pool, model.padding
            # The same tensors as the per-seed models' buffers: nothing is copied.
            self.register_buffer("embeddings", model.embeddings, persistent=False)
            # A copy: Module.to() moves a module in place, and the seeds' models share one EmbeddingLayer.
            self.layer = copy.deepcopy(model.layer)
        elif isinstance(model, EncoderLSTMClassifier):
            self.kind, self.pool, self.padding, self.layer = "cached", model.out_pool, "mask", None
        else:
            raise TypeError(
                f"a seed group trains PooledLSTMClassifier or cached encoder features, not {type(model).__name__}"
            )

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "cached":
            hidden = pool_hidden(inputs.float(), self.pool)
            pooled, mask = pool_sequence(hidden, lengths_mask(lengths, hidden.shape[1]), self.pool)
            return pooled, mask.sum(1)
        # Precomputed: `rows` of every row, computed once before training (`run.precompute.before_training`).
        x, head_lengths = (inputs, lengths) if self.kind == "precomputed" else self.rows(inputs, lengths)
        return x, head_lengths if self.padding == "mask" else None

    embeddings: torch.Tensor

    def rows(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`PooledLSTMClassifier.features` of token-id rows: (features, head lengths)."""
        return frozen_features(ids, lengths, self.embeddings, self.layer, self.pool, self.padding)

    def precomputed(self) -> None:
        """From now on the group is given precomputed features (`frozen_features` of its rows), not token ids."""
        if self.kind != "tokens":
            raise ValueError(f"only a group on token ids reads precomputed features, not one on {self.kind} inputs")
        self.kind = "precomputed"


class SeedGroup(nn.Module):
    """S per-seed models of one configuration, trained as one: frozen features shared, heads stacked.

    `models` are the ordinary per-seed models (what `network.build_model` returns), kept as they are and not
    registered as submodules (their own head parameters are not trained; `split` writes the trained weights
    into them). `group(inputs, lengths)` with inputs (S, batch, ...) and lengths (S, batch) -> logits (S, batch).
    """

    def __init__(self, models: Sequence[Classifier], seeds: Sequence[int], recurrence: str = "per_seed") -> None:
        super().__init__()
        if len(models) != len(seeds) or not models:
            raise ValueError("a seed group needs one model per seed, and at least one")
        _check_same_frozen(models)
        self.seeds = list(seeds)
        self.models = list(models)
        self.features = FrozenFeatures(models[0])
        self.head = GroupedLSTMHead([head_of(m) for m in models], recurrence)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seeds, batch = lengths.shape
        x, head_lengths = self.features(inputs.flatten(0, 1), lengths.flatten())
        x = x.unflatten(0, (seeds, batch))
        return self.head(x, None if head_lengths is None else head_lengths.view(seeds, batch))

    def seed_model(self, s: int) -> Classifier:
        """Seed s's model as it is now: its trained head written in (a state dict as a run trained alone has it)."""
        model = self.models[s]
        self.head.write_into(s, head_of(model))
        return model

    def split(self) -> list[Classifier]:
        """The S per-seed models, each holding its seed's trained head: state dicts as a run trained alone has them."""
        return [self.seed_model(s) for s in range(len(self.models))]


def head_of(model: nn.Module) -> LSTMHead:
    """A per-seed model's LSTM head (what the group stacks and writes back into)."""
    head = model.head
    if not isinstance(head, LSTMHead):
        raise TypeError(f"a seed group stacks LSTMHead heads, not {type(head).__name__}")
    return head


def _check_same_frozen(models: Sequence[nn.Module]) -> None:
    """Seeds of one group differ only in their heads: same class, pooling, padding and frozen buffers."""
    first = models[0]
    for model in models[1:]:
        if type(model) is not type(first):
            raise ValueError("a seed group needs models of one kind")
        for attr in ("pool", "padding", "out_pool"):
            if getattr(model, attr, None) != getattr(first, attr, None):
                raise ValueError(f"a seed group needs one {attr}: the seeds' configurations differ")
        mine = dict(first.named_buffers())
        for name, buf in model.named_buffers():
            if name.startswith("head.") or name.startswith("encoder."):
                continue
            if buf is not mine[name] and not torch.equal(buf, mine[name]):
                raise ValueError(f"a seed group needs one frozen input: buffer {name} differs between seeds")
