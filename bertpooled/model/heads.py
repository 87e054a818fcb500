"""The original's classifier: frozen word embeddings -> optional pooling -> LSTM(16) -> one logit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bertpooled.model.pooling import PoolSpec, lengths_mask, pool_hidden, pool_sequence, pooled_lengths


class LSTMHead(nn.Module):
    """One LSTM layer and a dense layer with one logit; parameters named as `nn.LSTM` + `nn.Linear`.

    `bias="keras"` (the default) trains one gate bias, as Keras's LSTM does: `bias_hh_l0` is a fixed zero
    buffer, and the head has exactly the original's parameters (50,257 at width 768). `bias="torch"` trains
    both of nn.LSTM's bias vectors (64 parameters more), as models logged before this option did.

    On CPU the LSTM's input projection is done here as one (batch*seq, in) x (in, 4*units) matmul, and the
    recurrence gets the projected gates through an identity input weight. oneDNN's fused LSTM backward is
    pathologically slow for wide inputs on CPU (measured on 2 cores, batch 32, 128 steps, 384 inputs:
    47 ms per step fused, 6.3 ms factored). The arithmetic is the same LSTM.
    """

    # Buffers (register_buffer), declared for the type checker: nn.Module's __getattr__ says Tensor | Module.
    bias_hh_l0: torch.Tensor  # a Parameter with bias=torch, a zero buffer with bias=keras
    _identity: torch.Tensor
    _no_bias: torch.Tensor

    def __init__(self, in_features: int, units: int = 16, init: str = "keras", bias: str = "keras") -> None:
        super().__init__()
        self.in_features, self.units, self.bias = in_features, units, bias
        gates = 4 * units
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, in_features))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, units))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        if bias == "torch":
            self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
        else:
            # Keras keeps one gate bias. With two trainable vectors both get the full gate gradient and both
            # take an Adam step, so the effective bias moves about twice as fast as the original's.
            self.register_buffer("bias_hh_l0", torch.zeros(gates), persistent=False)
        self.dense = nn.Linear(units, 1)
        self.register_buffer("_identity", torch.eye(gates), persistent=False)
        self.register_buffer("_no_bias", torch.zeros(gates), persistent=False)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "keras") -> None:
        """`keras`: the original's initializers; `torch`: what `nn.LSTM`/`nn.Linear` would start from."""
        with torch.no_grad():
            if init == "keras":
                # Keras LSTM: kernel Glorot-uniform, recurrent kernel orthogonal, bias zero but the forget
                # gate's at 1 (unit_forget_bias). Gate order i, f, g, o matches PyTorch's.
                nn.init.xavier_uniform_(self.weight_ih_l0)
                nn.init.orthogonal_(self.weight_hh_l0)
                self.bias_ih_l0.zero_()
                self.bias_hh_l0.zero_()
                self.bias_ih_l0[self.units : 2 * self.units] = 1.0
                nn.init.xavier_uniform_(self.dense.weight)
                self.dense.bias.zero_()
            else:
                bound = 1.0 / math.sqrt(self.units)
                for weight in (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0):
                    if isinstance(weight, nn.Parameter):
                        nn.init.uniform_(weight, -bound, bound)
                self.dense.reset_parameters()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch,) from inputs (batch, seq, in); with `lengths`, the state after each row's last real step."""
        batch = x.shape[0]
        if x.is_cuda or not torch.is_grad_enabled():
            # The slow part is oneDNN's backward: inference, and cuDNN, project the inputs themselves.
            weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
            inputs = x
        else:
            inputs = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)
            weights = [self._identity.to(x.dtype), self.weight_hh_l0, self._no_bias.to(x.dtype), self.bias_hh_l0]
        out, h_n = lstm_kernel(inputs, weights, x.new_zeros(1, batch, self.units), self.training)
        return self.dense(last_states(out, h_n, lengths)).squeeze(-1)


def lstm_kernel(
    inputs: torch.Tensor, weights: list[torch.Tensor], h0: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one LSTM kernel call of the package: `torch.lstm` over batch-first `inputs` from the zero state `h0`
    (1, batch, units), one layer, no dropout; (outputs (batch, seq, units), last state (1, batch, units)).

    `weights` = [input weight, recurrent weight, input bias, recurrent bias] in nn.LSTM's layout: the heads pass
    an identity input weight with inputs they projected themselves (see `LSTMHead`), or a seed group's
    block-diagonal recurrence (bertpooled.model.grouped)."""
    out, h_n, _ = torch.lstm(inputs, (h0, h0), weights, True, 1, 0.0, training, False, True)
    return out, h_n


def last_states(out: torch.Tensor, h_n: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each row's state after its last real step: `h_n` without lengths; with right padding the state after step
    len-1, which has seen no padding, as a packed sequence would."""
    if lengths is None:
        return h_n[0]
    return out[torch.arange(out.shape[0], device=out.device), (lengths - 1).clamp_min(0).long()]


class PooledLSTMClassifier(nn.Module):
    """Token ids -> frozen input embeddings -> pooling (`pool`) -> LSTMHead -> logit.

    The input embeddings are the word table alone (`layer=None`: `get_input_embeddings()` in PyTorch), or the
    backbone's whole embedding layer (`layer`: what the original's TensorFlow `get_input_embeddings()(ids)`
    gave): LayerNorm(word + position + token type 0) per token, computed per batch from frozen buffers.
    """

    embeddings: torch.Tensor  # a buffer (register_buffer)

    def __init__(
        self,
        embeddings: torch.Tensor,
        pool: PoolSpec,
        *,
        units: int = 16,
        padding: str = "mask",
        init: str = "keras",
        layer: EmbeddingLayer | None = None,
        bias: str = "keras",
    ) -> None:
        super().__init__()
        self.pool, self.padding = pool, padding
        self.layer = layer
        if layer is None:
            # Hidden-axis pooling acts on each token's vector alone, so it commutes with the lookup:
            # pooling the vocabulary table once equals pooling every looked-up vector, at no cost per batch.
            table = pool_hidden(embeddings.float(), pool)
        else:
            # LayerNorm mixes a token's features, so here the hidden axis is pooled after it, per batch.
            table = embeddings.float()
        self.register_buffer("embeddings", table.contiguous())
        width = pool.out_hidden(embeddings.shape[1]) if layer is not None else table.shape[1]
        self.head = LSTMHead(width, units, init, bias)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen per-token features of `ids`, hidden-pooled as configured (sequence pooling comes after)."""
        return token_features(ids, self.embeddings, self.layer, self.pool)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen part, a fixed function of the ids: (pooled features (batch, seq', hidden'), their lengths).

        Every operation acts on each token (or pooling window) alone, so the features of a row do not depend on
        the batch it is computed in: computed once for the whole training set
        (`bertpooled.run.precompute.before_training`) they are bitwise those of each batch.
        """
        return frozen_features(ids, lengths, self.embeddings, self.layer, self.pool, self.padding)

    def classify(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits from `features`: the head reads each row's last real step (`mask`), or the last step (`read`)."""
        return self.head(x, lengths if self.padding == "mask" else None)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch,) for right-padded ids (batch, max_len) with real lengths (batch,)."""
        return self.classify(*self.features(ids, lengths))


def token_features(
    ids: torch.Tensor, table: torch.Tensor, layer: EmbeddingLayer | None, pool: PoolSpec
) -> torch.Tensor:
    """Per-token frozen features: the word lookup (a hidden-pooled table when `layer` is None), or the embedding
    layer's output pooled on the hidden axis."""
    x = F.embedding(ids, table)
    if layer is None:
        return x
    return pool_hidden(layer(x), pool)


def frozen_features(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    table: torch.Tensor,
    layer: EmbeddingLayer | None,
    pool: PoolSpec,
    padding: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`PooledLSTMClassifier.features`, from its frozen parts (a seed group shares them without the model)."""
    x = token_features(ids, table, layer, pool)
    max_len = ids.shape[1]
    if padding == "mask":
        x, _ = pool_sequence(x, lengths_mask(lengths, max_len), pool)
        return x, pooled_lengths(lengths, pool, max_len)
    # `read`: as the original, padding is pooled and read like any token.
    x, _ = pool_sequence(x, torch.ones(ids.shape, dtype=torch.bool, device=ids.device), pool)
    return x, torch.full_like(lengths, x.shape[1])


class EmbeddingLayer(nn.Module):
    """The rest of a BERT embedding layer after the word lookup: + position + token type 0, then LayerNorm.

    Frozen buffers (no parameters), in eval mode by construction (BERT's embedding dropout is off at inference,
    as it was in the original's call). `bertpooled.model.backbone.embedding_layer_of` checks it against the
    backbone's own module.
    """

    # Buffers (register_buffer).
    positions: torch.Tensor
    token_type: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor

    def __init__(
        self,
        positions: torch.Tensor,
        token_type: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        eps: float,
    ) -> None:
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("positions", positions.float().contiguous())
        self.register_buffer("token_type", token_type.float().reshape(-1).contiguous())
        self.register_buffer("norm_weight", norm_weight.float().contiguous())
        self.register_buffer("norm_bias", norm_bias.float().contiguous())

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) word vectors -> the embedding layer's output for positions 0..seq-1."""
        x = words + self.positions[: words.shape[1]]
        x += self.token_type  # in place: the same sums in the same order, one batch-sized tensor fewer
        return F.layer_norm(x, (x.shape[-1],), self.norm_weight, self.norm_bias, self.eps)


class EncoderLSTMClassifier(nn.Module):
    """Token ids -> backbone hidden states (pooled between layers by `encoder`) -> pooling at the output -> LSTMHead.

    `features` and `classify` split the forward pass where a frozen backbone's output is cached: a run on
    cached features trains `classify` alone, and the logged model runs both.
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        out_pool: PoolSpec,
        *,
        units: int = 16,
        init: str = "keras",
        bias: str = "keras",
    ) -> None:
        super().__init__()
        self.encoder, self.out_pool = encoder, out_pool
        self.head = LSTMHead(out_pool.out_hidden(hidden_size), units, init, bias)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's output for right-padded ids: (hidden states, real lengths), before output pooling."""
        hidden, mask = self.encoder(ids, lengths_mask(lengths, ids.shape[1]))
        return hidden, mask.sum(1)

    def classify(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits from the backbone's output: pooling at the output (masked), then the head."""
        hidden = hidden.float()
        pooled, mask = pool_sequence(
            pool_hidden(hidden, self.out_pool), lengths_mask(lengths, hidden.shape[1]), self.out_pool
        )
        return self.head(pooled, mask.sum(1))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch,) for right-padded ids (batch, max_len) with real lengths (batch,)."""
        return self.classify(*self.features(ids, lengths))


class FeatureHead(nn.Module):
    """What trains on frozen features computed ahead: `classify` of a model that splits into `features` and
    `classify` (EncoderLSTMClassifier on cached encoder output, PooledLSTMClassifier on precomputed inputs),
    sharing its head."""

    def __init__(self, model: EncoderLSTMClassifier | PooledLSTMClassifier) -> None:
        super().__init__()
        self.head = model.head
        self._classify = model.classify

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._classify(hidden, lengths)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; buffers such as the frozen embedding table are not parameters."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


# What `model.build` makes: a head on frozen input features, or a backbone and a head.
Classifier = PooledLSTMClassifier | EncoderLSTMClassifier
