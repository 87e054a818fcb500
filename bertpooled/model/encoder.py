"""The backbone as a feature extractor: hidden states of the encoder, with sequence pooling between its layers.

`PoolingEncoder` runs a BERT-family encoder itself, module by module (embeddings -> layers[:K] -> pooling of the hidden
states *and* the attention mask -> layers[K:], again before each further stage's layer), with the attention mask built
by the same transformers helper BertModel uses, so with a window of 1 it computes exactly what `BertModel` computes.
Other architectures run whole (`AutoModel`), which serves `features=encoder` with no pooling or pooling at the output.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from bertpooled.errors import BertpooledError
from bertpooled.model.pooling import PoolPosition, PoolSpec, keep_top, pool_sequence_cls

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Model types whose AutoModel is transformers' BertModel (embeddings, encoder.layer[i]): layer:K runs on these.
LAYER_POOLING_TYPES = ("bert",)


def check_layer_pooling(model_type: str, num_layers: int, position: PoolPosition, model_name: str) -> None:
    """One-line errors for `layer:K` on an architecture it cannot run on, or any stage's K past the encoder's layers."""
    if position.where != "layer":
        return
    if model_type not in LAYER_POOLING_TYPES:
        raise BertpooledError(
            f"config: pool_at={position} needs a BERT-family backbone (model_type bert: minilm, bert-base-uncased), "
            f"and {model_name!r} is {model_type!r}: use pool_at=output, or a BERT backbone"
        )
    if not all(0 <= k < num_layers for k in position.layers):
        raise BertpooledError(
            f"config: pool_at={position} is past the {num_layers} encoder layers of {model_name!r}: "
            f"use layer:0 to layer:{num_layers - 1}, or output"
        )


def check_keep_layers(model_type: str, num_layers: int, keep_layers: int, model_name: str) -> None:
    """One-line errors for a layer truncation the backbone cannot take (`keep_layers`, 0 = all)."""
    if not keep_layers:
        return
    if model_type not in LAYER_POOLING_TYPES:
        raise BertpooledError(
            f"config: keep_layers={keep_layers} needs a BERT-family backbone (model_type bert), and {model_name!r} "
            f"is {model_type!r}: use keep_layers=0"
        )
    if keep_layers > num_layers:
        raise BertpooledError(
            f"config: keep_layers={keep_layers} is more than the {num_layers} encoder layers of {model_name!r}: "
            f"use 1 to {num_layers}, or 0 for all"
        )


def truncated(model: PreTrainedModel, keep_layers: int) -> PreTrainedModel:
    """`model` with its first `keep_layers` encoder layers only (a copy; 0 or all layers: `model` itself).

    "Poor Man's BERT"'s top-layer dropping, the control pooling must beat at equal FLOPs: the dropped layers'
    weights are gone, so parameter counts, the logged weights and serving all see the smaller model, and the
    config's `num_hidden_layers` says so (a logged spec rebuilds it at that depth)."""
    bert: Any = model
    if not keep_layers or keep_layers >= len(bert.encoder.layer):
        return model
    shallow: Any = copy.deepcopy(model)
    shallow.encoder.layer = nn.ModuleList(list(shallow.encoder.layer)[:keep_layers])
    shallow.config.num_hidden_layers = keep_layers
    return shallow


@torch.no_grad()
def attention_received(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PoWER-BERT's significance score of each position: the attention it receives in `layer` (a BertLayer) from
    the real positions, summed over heads and queries; (batch, seq).

    The probabilities are recomputed from the layer's own query and key projections of its input `hidden`, as
    its self-attention computes them (scaled dot product, padding keys masked), so the score is the same for
    every attention implementation (SDPA returns no probabilities). A selection, not a gradient path."""
    attn: Any = cast(Any, layer).attention.self
    batch, seq, _ = hidden.shape
    shape = (batch, seq, attn.num_attention_heads, attn.attention_head_size)
    query = attn.query(hidden).view(shape).transpose(1, 2)
    key = attn.key(hidden).view(shape).transpose(1, 2)
    logits = (query @ key.transpose(-1, -2)).float() * attn.scaling
    probs = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    # Rows of padding queries are left out: only real tokens' attention counts.
    return (probs * mask[:, None, :, None]).sum((1, 2))


class PoolingEncoder(nn.Module):
    """(ids, bool mask) -> (hidden states, bool mask), pooled on the sequence after each of `position.layers`.

    Without pooling inside (`position` not `layer:K`, or a 1x1 window) this is the plain encoder's last hidden
    state. Pooling at the output is not done here: the head side applies it (see modeling.EncoderLSTMClassifier),
    so a cache of this module's output serves every output pooling.
    """

    def __init__(
        self, model: PreTrainedModel, position: PoolPosition, spec: PoolSpec, separate_cls: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.separate_cls = separate_cls
        # A 1x1 window at layer:K still takes the pooling path (pool, rebuild the mask): the test that it equals
        # the plain encoder exercises the real code.
        self.inside = spec if position.where == "layer" else None
        self.at_layers = frozenset(position.layers) if self.inside is not None else frozenset()
        self.bert_family = model.config.model_type in LAYER_POOLING_TYPES
        if self.inside is not None and not spec.is_identity and not self.bert_family:
            raise BertpooledError(f"pool_at={position} needs a BERT-family backbone, not {model.config.model_type!r}")

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.bert_family:
            return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask
        from transformers.masking_utils import create_bidirectional_mask

        bert: Any = self.model  # BERT's layout (embeddings, encoder.layer), which transformers does not type
        hidden = bert.embeddings(input_ids=ids)
        attention = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask.long())
        before: tuple[nn.Module, torch.Tensor] | None = None  # the last layer run and its input (topk's scores)
        for i, layer in enumerate(bert.encoder.layer):
            if i in self.at_layers and self.inside is not None:  # at_layers is empty when inside is None
                # The attention mask is pooled with the sequence at every stage: a window is real when any of its
                # tokens is, so padding never becomes real however many stages pool it.
                if self.inside.is_topk:
                    assert before is not None, "topk pools after a layer (layer:K with K >= 1, checked by config)"
                    scores = attention_received(before[0], before[1], mask)
                    hidden, mask = keep_top(hidden, mask, scores, self.inside.out_len(hidden.shape[1]))
                else:
                    hidden, mask = pool_sequence_cls(hidden, mask, self.inside, self.separate_cls)
                attention = create_bidirectional_mask(
                    config=bert.config, inputs_embeds=hidden, attention_mask=mask.long()
                )
            if self.inside is not None and self.inside.is_topk:
                before = (layer, hidden)
            # The call BertEncoder makes, argument for argument.
            hidden = layer(hidden, attention, None, encoder_attention_mask=None, cache=None, position_ids=None)
        return hidden, mask


__all__ = [
    "LAYER_POOLING_TYPES",
    "PoolingEncoder",
    "attention_received",
    "check_keep_layers",
    "check_layer_pooling",
    "truncated",
]
