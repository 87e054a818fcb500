"""One model spec, one builder: training and serving build the classifier from the same `ModelSpec`.

The spec is what the logged model stores as `model_config.json`; the model layer never reads the experiment `Config`
(`bertpooled.run.network.spec_of` makes a spec from one). Building a model draws its initial weights from torch's
generator as it stands: the caller seeds it (a run seeds right before building, so the head's initialisation is the
run's seed alone).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bertpooled.model.heads import Classifier, EmbeddingLayer, EncoderLSTMClassifier, PooledLSTMClassifier
from bertpooled.model.pooling import PoolPosition, PoolSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines the classifier's architecture, as typed values."""

    features: str
    """`embeddings` (word table), `embedding_layer` (LayerNorm(word + position + type)) or `encoder`."""
    pool: PoolSpec
    pool_at: PoolPosition
    lstm_units: int
    padding: str
    lstm_bias: str
    max_len: int
    backbone: str
    """The backbone's name or folder (provenance: a logged model never loads it)."""
    init: str = "keras"
    layer_norm_eps: float | None = None
    """features=embedding_layer: the LayerNorm's epsilon."""
    backbone_config: dict[str, Any] | None = field(default=None, compare=False)
    """features=encoder: the backbone's architecture as JSON, so serving rebuilds it without its folder."""
    precision: str | None = None
    """features=encoder: the run's `precision` setting (`auto`, `fp32`, `bf16`), which serving resolves on its own
    machine (`inference.serving_precision`); None for the head-only modes and models logged before it existed."""
    keep_layers: int = 0
    """features=encoder: the first K encoder layers only (layer truncation); 0 = all."""
    separate_cls: bool = False
    """Window pooling inside the encoder keeps [CLS] apart (Funnel-Transformer's `separate_cls`)."""

    def to_json(self) -> dict[str, Any]:
        """`model_config.json`: plain values, pooling in its canonical spelling; unset extras (None, or a field
        added later at its default) left out, so a model without them stores what it always stored."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if v is not None and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
        }
        out.update(pool=str(self.pool), pool_at=str(self.pool_at))
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelSpec:
        """A stored spec. Models logged before `lstm_bias` and `features` existed trained nn.LSTM's two bias
        vectors on the word table; `init` only shapes training, so older files without it read as keras."""
        values = {"lstm_bias": "torch", "features": "embeddings", "pool_at": "input", **values}
        known = {f for f in cls.__dataclass_fields__}
        kept = {k: v for k, v in values.items() if k in known}
        kept.update(pool=PoolSpec.parse(values["pool"]), pool_at=PoolPosition.parse(values["pool_at"]))
        return cls(**kept)


# Fields added after models were first logged, at their defaults: left out of model_config.json.
_LATER_DEFAULTS: dict[str, Any] = {"keep_layers": 0, "separate_cls": False}


def build(
    spec: ModelSpec,
    *,
    table: torch.Tensor | None = None,
    layer: EmbeddingLayer | None = None,
    backbone: PreTrainedModel | None = None,
    table_pooled: bool = False,
    trainable_backbone: bool = False,
) -> Classifier:
    """The classifier: frozen input features (`table`, `layer`) + head, or `backbone` + head.

    `table_pooled`: the word table is already pooled on its hidden axis (what a logged features=embeddings model
    stores). `trainable_backbone`: fine-tuning trains a copy of `backbone`, leaving the shared frozen one as is.
    """
    from bertpooled.model.encoder import PoolingEncoder, truncated

    if spec.features != "encoder":
        assert table is not None, "a head on input features needs the word table"
        pool = PoolSpec(spec.pool.kind, spec.pool.seq, 1) if table_pooled else spec.pool
        return PooledLSTMClassifier(
            table, pool, units=spec.lstm_units, padding=spec.padding, init=spec.init, layer=layer, bias=spec.lstm_bias
        )
    assert backbone is not None, "features=encoder needs a backbone"
    shallow = truncated(backbone, spec.keep_layers)  # a copy when it drops layers
    if trainable_backbone:
        backbone = (shallow if shallow is not backbone else copy.deepcopy(backbone)).requires_grad_(True)
    else:
        backbone = shallow
    out_pool = spec.pool if spec.pool_at.where == "output" else PoolSpec()
    encoder = PoolingEncoder(backbone, spec.pool_at, spec.pool, separate_cls=spec.separate_cls)
    return EncoderLSTMClassifier(
        encoder, backbone.config.hidden_size, out_pool, units=spec.lstm_units, init=spec.init, bias=spec.lstm_bias
    )


def from_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> Classifier:
    """A logged model rebuilt from its spec and its safetensors weights, in eval mode (no download, no pickle)."""
    if spec.features == "encoder":
        from bertpooled.model.backbone import from_json_config

        assert spec.backbone_config is not None, "an encoder model's spec stores its backbone's config"
        model = build(spec, backbone=from_json_config(spec.backbone_config).eval())
    elif spec.features == "embedding_layer":
        assert spec.layer_norm_eps is not None, "an embedding_layer model's spec stores its LayerNorm's eps"
        layer = EmbeddingLayer(
            state["layer.positions"],
            state["layer.token_type"],
            state["layer.norm_weight"],
            state["layer.norm_bias"],
            spec.layer_norm_eps,
        )
        model = build(spec, table=state["embeddings"], layer=layer)
    else:
        model = build(spec, table=state["embeddings"], table_pooled=True)
    model.load_state_dict(state)
    return model.eval()
