"""The seed's classifier: frozen word embeddings -> optional pooling -> LSTM(16) -> one logit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bertpooled.pooling import PoolSpec, lengths_mask, pool_hidden, pool_sequence, pooled_lengths


class LSTMHead(nn.Module):
    """One LSTM layer and a dense layer with one logit; parameters named and counted as `nn.LSTM` + `nn.Linear`.

    On CPU the LSTM's input projection is done here as one (batch*seq, in) x (in, 4*units) matmul, and the
    recurrence gets the projected gates through an identity input weight. oneDNN's fused LSTM backward is
    pathologically slow for wide inputs on CPU (measured on 2 cores, batch 32, 128 steps, 384 inputs:
    47 ms per step fused, 6.3 ms factored). The arithmetic is the same LSTM.
    """

    def __init__(self, in_features: int, units: int = 16, init: str = "keras") -> None:
        super().__init__()
        self.in_features, self.units = in_features, units
        gates = 4 * units
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, in_features))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, units))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
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
                    nn.init.uniform_(weight, -bound, bound)
                self.dense.reset_parameters()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch,) from inputs (batch, seq, in); with `lengths`, the state after each row's last real step."""
        batch = x.shape[0]
        h0 = x.new_zeros(1, batch, self.units)
        if x.is_cuda or not torch.is_grad_enabled():
            # The slow part is oneDNN's backward: inference, and cuDNN, project the inputs themselves.
            weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
            inputs = x
        else:
            inputs = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)
            weights = [self._identity.to(x.dtype), self.weight_hh_l0, self._no_bias.to(x.dtype), self.bias_hh_l0]
        out, h_n, _ = torch.lstm(inputs, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        if lengths is None:
            last = h_n[0]
        else:
            # Right padding: the state after step len-1 has seen no padding, as a packed sequence would.
            last = out[torch.arange(batch, device=x.device), (lengths - 1).clamp_min(0).long()]
        return self.dense(last).squeeze(-1)


class PooledLSTMClassifier(nn.Module):
    """Token ids -> frozen input word embeddings -> pooling (`pool`) -> LSTMHead -> logit."""

    def __init__(
        self, embeddings: torch.Tensor, pool: PoolSpec, *, units: int = 16, padding: str = "mask", init: str = "keras"
    ) -> None:
        super().__init__()
        self.pool, self.padding = pool, padding
        # Hidden-axis pooling acts on each token's vector alone, so it commutes with the lookup:
        # pooling the vocabulary table once equals pooling every looked-up vector, at no cost per batch.
        self.register_buffer("embeddings", pool_hidden(embeddings.float(), pool).contiguous())
        self.head = LSTMHead(self.embeddings.shape[1], units, init)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch,) for right-padded ids (batch, max_len) with real lengths (batch,)."""
        x = F.embedding(ids, self.embeddings)
        max_len = ids.shape[1]
        if self.padding == "mask":
            x, _ = pool_sequence(x, lengths_mask(lengths, max_len), self.pool)
            return self.head(x, pooled_lengths(lengths, self.pool, max_len))
        # `read`: as the original, padding is pooled and read like any token.
        x, _ = pool_sequence(x, torch.ones(ids.shape, dtype=torch.bool, device=ids.device), self.pool)
        return self.head(x, None)


class EncoderLSTMClassifier(nn.Module):
    """Token ids -> backbone hidden states (pooled between layers by `encoder`) -> pooling at the output -> LSTMHead.

    `features` and `classify` split the forward pass where a frozen backbone's output is cached: a run on
    cached features trains `classify` alone, and the logged model runs both.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, out_pool: PoolSpec, *, units: int = 16, init: str = "keras",
                 seed: int | None = None) -> None:
        super().__init__()
        self.encoder, self.out_pool = encoder, out_pool
        if seed is not None:
            # The head starts from the run's seed whatever loading the backbone drew from the generator.
            torch.manual_seed(seed)
        self.head = LSTMHead(out_pool.out_hidden(hidden_size), units, init)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's output for right-padded ids: (hidden states, real lengths), before output pooling."""
        hidden, mask = self.encoder(ids, lengths_mask(lengths, ids.shape[1]))
        return hidden, mask.sum(1)

    def classify(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits from the backbone's output: pooling at the output (masked), then the head."""
        hidden = hidden.float()
        pooled, mask = pool_sequence(pool_hidden(hidden, self.out_pool), lengths_mask(lengths, hidden.shape[1]), self.out_pool)
        return self.head(pooled, mask.sum(1))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch,) for right-padded ids (batch, max_len) with real lengths (batch,)."""
        return self.classify(*self.features(ids, lengths))


class FeatureHead(nn.Module):
    """What trains on cached frozen features: `classify` of an EncoderLSTMClassifier, sharing its head."""

    def __init__(self, model: EncoderLSTMClassifier) -> None:
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
