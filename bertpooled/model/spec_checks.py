"""A logged model's files checked before it is built: `model_config.json` is input like a config file (anyone who
can write to the artifact store can edit it, and a registry serves what is there), so every known field is held
to the bounds a training config has, and to the shapes of the weights beside it, before one tensor is allocated.

Unknown fields are left alone (a newer model may store more); `ModelSpec.from_json` ignores them. Without this an
edited `max_len` made one 3-word request allocate 21 GB, and an edited width failed deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bertpooled.config.rules import FEATURES, INITS, LSTM_BIASES, PADDINGS, PRECISIONS

CONFIG_FILE = "model_config.json"
# Widths past these build models of gigabytes; no run of this project trains one (the seed's head has 16 units).
MAX_LSTM_UNITS = 4096
# A backbone's architecture as a logged encoder model stores it: each size bounded (BERT-large is 1024 wide,
# 24 layers deep, 512 positions; these leave room for larger ones and stop an edit from asking for terabytes).
BACKBONE_BOUNDS = {
    "hidden_size": 8192,
    "num_hidden_layers": 96,
    "num_attention_heads": 128,
    "intermediate_size": 32768,
    "max_position_embeddings": 32768,
    "vocab_size": 1_000_000,
    "type_vocab_size": 1024,
}
# max_len of a model whose backbone's positions are not stored (features=embeddings: the bare word table) and
# whose tokenizer names no limit: a request is padded to max_len, so this bounds a request's memory.
MAX_LEN_UNKNOWN_POSITIONS = 4096
# A tokenizer with no limit of its own reports transformers' VERY_LARGE_INTEGER (1e30).
TOKENIZER_NO_LIMIT = 1_000_000


class DamagedModel(ValueError):
    """A logged model's files do not describe a model this code builds: one line naming the field or file."""


def _bad(field: str, value: Any, valid: str) -> DamagedModel:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DamagedModel(f"{CONFIG_FILE}: {field}={shown} is out of bounds: {valid}; log the model again")


def _int(values: Mapping[str, Any], field: str, low: int, high: int, why: str = "") -> int:
    value = values.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(field, value, f"an integer from {low} to {high}{why}")
    return value


def _choice(values: Mapping[str, Any], field: str, choices: tuple[str, ...], default: str | None = None) -> None:
    value = values.get(field, default)
    if value not in choices:
        raise _bad(field, value, " or ".join(choices))


def check_values(values: Any, state: Mapping[str, Any], tokenizer_limit: int | None = None) -> None:
    """Each known field of a stored spec (`values`, the parsed JSON) within a training config's bounds and the
    weights' (`state`: name -> tensor, shapes read only); `DamagedModel` naming the first that is not."""
    from bertpooled.model.pooling import PoolPosition, PoolSpec

    if not isinstance(values, dict):
        raise DamagedModel(f"{CONFIG_FILE} holds {type(values).__name__}, not a mapping of fields: log it again")
    for field in ("pool", "backbone"):
        if not isinstance(values.get(field), str):
            raise _bad(field, values.get(field), "a string")
    _choice(values, "features", FEATURES, "embeddings")
    _choice(values, "padding", PADDINGS)
    _choice(values, "lstm_bias", LSTM_BIASES, "torch")
    _choice(values, "init", INITS, "keras")
    if values.get("precision") is not None:
        _choice(values, "precision", PRECISIONS)
    for field, parse in (("pool", PoolSpec.parse), ("pool_at", PoolPosition.parse)):
        text = values.get(field, "input")
        if not isinstance(text, str):
            raise _bad(field, text, "a string such as avg:2x2 (pool) or input (pool_at)")
        try:
            parse(text)
        except Exception as exc:
            raise _bad(field, text, (str(exc).splitlines() or ["a valid spelling"])[0][:160]) from None
    _int(values, "lstm_units", 1, MAX_LSTM_UNITS)
    if not isinstance(values.get("separate_cls", False), bool):
        raise _bad("separate_cls", values.get("separate_cls"), "true or false")
    features = values.get("features", "embeddings")
    if "keep_layers" in values:
        config = values.get("backbone_config")
        layers = config.get("num_hidden_layers", 96) if isinstance(config, dict) else 96
        layers = layers if isinstance(layers, int) and not isinstance(layers, bool) else 96
        _int(values, "keep_layers", 0, layers, " (0 = every layer of the backbone)")
    positions, where = _positions(values, state, features, tokenizer_limit)
    _int(values, "max_len", 2, positions, f" ({where})")
    if features == "embedding_layer":
        eps = values.get("layer_norm_eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
            raise _bad("layer_norm_eps", eps, "a number in (0, 1), e.g. 1e-12")


def _positions(values: Mapping[str, Any], state: Mapping[str, Any], features: str, tokenizer_limit: int | None):
    """The most tokens this model may read, and where that bound comes from."""
    if features == "encoder":
        config = values.get("backbone_config")
        if not isinstance(config, dict):
            raise _bad("backbone_config", config, "the backbone's config as a mapping (features=encoder)")
        for name, high in BACKBONE_BOUNDS.items():
            if name in config:
                value = config[name]
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                    raise _bad(f"backbone_config.{name}", value, f"an integer from 1 to {high}")
        limit = config.get("max_position_embeddings", 512)
        return limit, "the backbone config's max_position_embeddings"
    if features == "embedding_layer" and "layer.positions" in state:
        return int(state["layer.positions"].shape[0]), "the position embeddings stored with the weights"
    if tokenizer_limit is not None and 0 < tokenizer_limit < TOKENIZER_NO_LIMIT:
        return tokenizer_limit, "the tokenizer's model_max_length"
    return MAX_LEN_UNKNOWN_POSITIONS, "a request is padded to max_len"


def check_shapes(model, state: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """The weights hold exactly the tensors `model` (built from the spec, on the meta device) has, of its shapes;
    `DamagedModel` naming the first tensor that differs and the field that sizes it."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"holds {extra[0]}, which the model has not"
        raise DamagedModel(
            f"weights.safetensors {which}: they do not match {CONFIG_FILE} "
            f"(features={values.get('features', 'embeddings')!r}); log the model again"
        )
    for key in sorted(expected):
        if expected[key] != stored[key]:
            field = "lstm_units" if key.startswith("head.") else "backbone_config" if "encoder" in key else "pool"
            raise DamagedModel(
                f"weights.safetensors: {key} has shape {stored[key]}, {CONFIG_FILE} makes it {expected[key]} "
                f"({field}={values.get(field)!r} does not match the weights); log the model again"
            )


MAX_CONFIG_BYTES = 1024 * 1024  # a spec is a few hundred bytes; an encoder's backbone config a few KB


def load_checked(config_path: str, weights_path: str, tokenizer_limit: int | None = None):
    """(the spec's JSON values, the classifier) of a logged model's files, every field and the weights' shapes
    checked before the model is built (see the module doc); `DamagedModel` in one line otherwise."""
    import json

    import torch
    from safetensors.torch import load_file

    from bertpooled.model.build import ModelSpec, from_state

    try:
        with open(config_path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise DamagedModel(f"{CONFIG_FILE} is over {MAX_CONFIG_BYTES // 1024} KiB: a spec is a few fields")
        values = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(exc, DamagedModel):
            raise
        raise DamagedModel(f"{CONFIG_FILE} is not JSON ({type(exc).__name__}): log the model again") from None
    try:
        state = load_file(weights_path)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DamagedModel(f"weights.safetensors does not load ({first}): log the model again") from None
    check_values(values, state, tokenizer_limit)
    try:
        spec = ModelSpec.from_json(values)
        with torch.device("meta"):
            skeleton = _skeleton(spec, state)
    except DamagedModel:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DamagedModel(f"{CONFIG_FILE} does not describe a model this code builds ({first})") from None
    check_shapes(skeleton, state, values)
    return values, spec, from_state(spec, state)


def check_weights(values: Mapping[str, Any], weights_path: str) -> None:
    """A source model's weights file (`init_from`, `distill_from`) held against its spec before any run exists:
    the tensors' names and shapes read from the safetensors header alone (no tensor is read), every field
    checked as at serving, the model built on the meta device; `DamagedModel` naming the first difference."""
    import torch
    from safetensors import safe_open

    from bertpooled.model.build import ModelSpec

    try:
        with safe_open(str(weights_path), framework="pt") as fh:
            shapes = {key: torch.empty(fh.get_slice(key).get_shape(), device="meta") for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DamagedModel(f"weights.safetensors does not load ({first}): log the model again") from None
    check_values(values, shapes)
    try:
        spec = ModelSpec.from_json(dict(values))
        with torch.device("meta"):
            skeleton = _skeleton(spec, shapes)
    except DamagedModel:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DamagedModel(f"{CONFIG_FILE} does not describe a model this code builds ({first})") from None
    check_shapes(skeleton, shapes, values)


def _skeleton(spec, state: Mapping[str, Any]):
    """The classifier `build.from_state` would make of `spec`, on the meta device (no memory): its tensors'
    names and shapes, to hold the weights against before anything is allocated."""
    import torch

    from bertpooled.model.build import build
    from bertpooled.model.heads import EmbeddingLayer

    def meta(key: str):
        if key not in state:
            raise DamagedModel(f"weights.safetensors lacks {key}: log the model again")
        return torch.empty(tuple(state[key].shape), device="meta")

    if spec.features == "encoder":
        from bertpooled.model.backbone import from_json_config

        return build(spec, backbone=from_json_config(spec.backbone_config))
    if spec.features == "embedding_layer":
        positions, types = meta("layer.positions"), meta("layer.token_type")
        layer = EmbeddingLayer(
            positions, types, meta("layer.norm_weight"), meta("layer.norm_bias"), spec.layer_norm_eps
        )
        return build(spec, table=meta("embeddings"), layer=layer)
    return build(spec, table=meta("embeddings"), table_pooled=True)
