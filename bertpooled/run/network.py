"""A run's classifier: built from its config's `ModelSpec` and seeded by the run's seed alone (on a fine-tuned
run's source weights with `init_from`), the spec a logged model stores, and the part of it a training step runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch

from bertpooled.model.build import Classifier, ModelSpec, build
from bertpooled.model.grouped import SeedGroup
from bertpooled.model.heads import EncoderLSTMClassifier, FeatureHead, PooledLSTMClassifier
from bertpooled.run import runtime, sources
from bertpooled.run.prepare import Prepared


def build_model(prepared: Prepared) -> Classifier:
    """The run's classifier, built from its ModelSpec and initialised from the run's seed alone."""
    cfg = prepared.config
    runtime.seed_everything(cfg.seed)
    spec = spec_of(cfg)
    if not cfg.feature_kind.encoder:
        assert prepared.embeddings is not None, "a head on input features is prepared with the embeddings"
        return build(spec, table=prepared.embeddings.table, layer=prepared.embeddings.layer)
    # Fine-tuning trains a copy: the loaded backbone stays frozen for whatever else shares it.
    model = build(spec, backbone=prepared.backbone_model, trainable_backbone=cfg.finetune)
    source = prepared.sources.get("init_from")
    if source is not None:
        # The two-stage recipe: the source run's backbone and head, with this run's pooling inserted.
        model.load_state_dict(sources.initial_state(source, model))
    return model


def spec_of(config, **extra) -> ModelSpec:
    """The model spec of an experiment config (`extra`: what only the built model knows)."""
    return ModelSpec(
        config.features,
        config.pool_spec,
        config.position,
        config.lstm_units,
        config.padding,
        config.lstm_bias,
        config.max_len,
        config.model,
        config.init,
        keep_layers=config.keep_layers,
        separate_cls=config.separate_cls,
        **extra,
    )


def model_spec(config, model: Classifier) -> ModelSpec:
    """The spec the logged model stores: the config's, plus what only the built model knows."""
    if config.feature_kind.whole_layer:
        assert isinstance(model, PooledLSTMClassifier) and model.layer is not None
        return spec_of(config, layer_norm_eps=model.layer.eps)
    if config.feature_kind.encoder:
        # The backbone's architecture as JSON: serving rebuilds it and loads the weights from safetensors.
        assert isinstance(model, EncoderLSTMClassifier)
        return spec_of(config, backbone_config=backbone_of(model).config.to_dict(), precision=config.precision)
    return spec_of(config)


def backbone_of(model: EncoderLSTMClassifier) -> Any:
    """The Hugging Face model inside an encoder classifier's pooling wrapper (`model.encoder.PoolingEncoder`)."""
    return cast(Any, model.encoder).model


def trained_network(model: Classifier, prepared: Prepared) -> torch.nn.Module:
    """The part of `model` a step runs: the head alone on cached features, else the whole model."""
    return FeatureHead(model) if prepared.cached else model


@contextlib.contextmanager
def seed_network(group: SeedGroup, prepared: Prepared, s: int) -> Iterator[torch.nn.Module]:
    """Seed s of a seed group as it is now, as `trained_network` gives a run alone's: its trained head written
    into its model, on the run's device while the block runs (then back on the CPU), for its evaluations."""
    model = group.seed_model(s)
    try:
        yield trained_network(model.to(prepared.rt.device), prepared)
    finally:
        model.cpu()
