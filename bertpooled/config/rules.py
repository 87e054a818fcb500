"""What each setting may be: the choices, the ranges and the combinations a `Config` is checked against when it
is made (one line naming the field, the value and what is valid), and `features` parsed into its kind."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bertpooled.errors import BertpooledError

# The checks take the `Config` being made (typed Any: bertpooled.config imports this module, not the reverse).
Config = Any

MODES = ("basic", "pool", "reference")
# The original code and write-up called the unpooled mode by both names.
MODE_ALIASES = {"basic_lstm": "basic", "lstm_basic": "basic"}
# What each mode means when the config does not spell out `pool` itself.
MODE_POOL = {"basic": "none", "pool": "avg:2x2", "reference": "none"}
PADDINGS = ("mask", "read")
FEATURES = ("embedding_layer", "embeddings", "encoder")
# Features read per token from the frozen embedding layer (no encoder run); the original's kind.
TOKEN_FEATURES = ("embedding_layer", "embeddings")
LSTM_BIASES = ("keras", "torch")
INITS = ("keras", "torch")
REFERENCE_TEXTS = ("tokens", "full")
PRECISIONS = ("auto", "fp32", "bf16")
MAX_SEED = 2**32 - 1
MAX_TEXT = 6000  # MLflow's longest param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)


def reject(name: str, value: Any, valid: str) -> None:
    """The one-line error for setting `name` at `value`, naming what would be valid."""
    raise BertpooledError(f"config: {name}={value!r} is not valid: use {valid}")


@dataclass(frozen=True)
class FeatureKind:
    """What a run reads its inputs from (`features`, parsed once): the questions code asks of it."""

    name: str

    @property
    def encoder(self) -> bool:
        """The backbone's encoder runs (frozen features or fine-tuning), not only its embedding layer."""
        return self.name == "encoder"

    @property
    def whole_layer(self) -> bool:
        """The input features are the whole embedding layer (word + position + type, LayerNorm), not the table."""
        return self.name == "embedding_layer"

    @property
    def tokens(self) -> bool:
        """Features read per token from the frozen embeddings, with no encoder run (the original's kind)."""
        return self.name in TOKEN_FEATURES

    def __str__(self) -> str:
        return self.name


def check_numbers(cfg: Config) -> None:
    """Counts, seeds, rates and fractions in range (one line naming the field and what is valid)."""
    for name in ("epochs", "batch_size", "max_len", "lstm_units", "latency_texts", "throughput_batches"):
        if getattr(cfg, name) <= 0:
            reject(name, getattr(cfg, name), "a positive integer")
    for name in (
        "seed",
        "data_seed",
        "max_train_examples",
        "max_test_examples",
        "num_threads",
        "shuffle_buffer",
        "eval_batch_size",
        "precompute_mb",
    ):
        if getattr(cfg, name) < 0:
            reject(name, getattr(cfg, name), "an integer >= 0")
    for name in ("seed", "data_seed"):
        # NumPy's seeds stop at 2**32 - 1: a larger one would pass here and fail inside the run.
        if getattr(cfg, name) > MAX_SEED:
            reject(name, getattr(cfg, name), f"an integer from 0 to {MAX_SEED}")
    if cfg.max_len < 2:
        reject("max_len", cfg.max_len, "at least 2 ([CLS] and [SEP] take two positions)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        reject("lr", cfg.lr, "a positive number such as 1e-3")
    if not (math.isfinite(cfg.backbone_lr) and cfg.backbone_lr > 0):
        reject("backbone_lr", cfg.backbone_lr, "a positive number such as 2e-5")
    if not (math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0):
        reject("adam_eps", cfg.adam_eps, "a positive number such as 1e-7")
    if cfg.keep_layers < 0:
        reject("keep_layers", cfg.keep_layers, "an integer >= 0 (0 = every encoder layer)")
    if not (math.isfinite(cfg.distill_alpha) and 0 <= cfg.distill_alpha <= 1):
        reject("distill_alpha", cfg.distill_alpha, "a number in [0, 1] (1 = the labels alone)")
    if not (math.isfinite(cfg.distill_temperature) and cfg.distill_temperature > 0):
        reject("distill_temperature", cfg.distill_temperature, "a positive number such as 2")
    if not (math.isfinite(cfg.distill_hidden) and cfg.distill_hidden >= 0):
        reject("distill_hidden", cfg.distill_hidden, "a number >= 0 (0 = no hidden-state term)")
    if not (0 < cfg.train_fraction <= 1):
        reject("train_fraction", cfg.train_fraction, "a number in (0, 1], e.g. 0.75")
    if not (0 <= cfg.validation_fraction < 1):
        reject(
            "validation_fraction",
            cfg.validation_fraction,
            "a number in [0, 1), e.g. 0.2 (0 = no validation split)",
        )


def normalise(cfg: Config, **values: Any) -> None:
    """Set fields of a Config being made (its __post_init__): the one place a frozen Config is written to."""
    for name, value in values.items():
        object.__setattr__(cfg, name, value)


def check_choices(cfg: Config) -> None:
    """Text fields normalised (while the Config is being made) and checked against their choices, and the
    combinations that cannot run."""
    if not cfg.model or not str(cfg.model).strip():
        reject("model", cfg.model, "minilm, a Hugging Face name or a local folder")
    normalise(
        cfg,
        model=str(cfg.model).strip(),
        data=str(cfg.data).strip() or None if cfg.data is not None else None,
        padding=str(cfg.padding).lower(),
        init=str(cfg.init).lower(),
        lstm_bias=str(cfg.lstm_bias).strip().lower(),
        device=str(cfg.device).strip().lower(),
        reference_text=str(cfg.reference_text).strip().lower(),
        precision=str(cfg.precision).strip().lower(),
        features=str(cfg.features).strip().lower(),
        init_from=str(cfg.init_from or "").strip(),
        distill_from=str(cfg.distill_from or "").strip(),
    )
    if cfg.padding not in PADDINGS:
        reject("padding", cfg.padding, " or ".join(PADDINGS))
    if cfg.init not in INITS:
        reject("init", cfg.init, " or ".join(INITS))
    if cfg.lstm_bias not in LSTM_BIASES:
        reject("lstm_bias", cfg.lstm_bias, " or ".join(LSTM_BIASES))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device):
        reject("device", cfg.device, "auto, cpu, cuda, cuda:N or mps")
    if cfg.reference_text not in REFERENCE_TEXTS:
        reject("reference_text", cfg.reference_text, " or ".join(REFERENCE_TEXTS))
    if cfg.precision not in PRECISIONS:
        reject(
            "precision",
            cfg.precision,
            " or ".join(PRECISIONS) + " (auto = bf16 on CUDA and for encoder work on a bf16 CPU, else fp32)",
        )
    if cfg.precision == "bf16" and cfg.device == "mps":
        reject(
            "precision",
            cfg.precision,
            "fp32 or auto with device=mps (bf16 autocast runs on CUDA or a bf16-capable CPU)",
        )
    if cfg.features not in FEATURES:
        reject("features", cfg.features, " or ".join(FEATURES))
    for name in ("init_from", "distill_from"):
        value = getattr(cfg, name)
        if value and not re.fullmatch(
            r"[0-9a-fA-F]{32}|runs:/[0-9a-fA-F]{32}/\S+|models:/[^\s/@]+(@[^\s/]+|/\d+)", value
        ):
            reject(
                name, value, "a run id, runs:/<run id>/model or models:/<name>@<alias> (or models:/<name>/<version>)"
            )


def check_combinations(cfg: Config, kind: FeatureKind, spec) -> None:
    """What the parsed features and pooling cannot run with: the mode, the features, the text limits."""
    if cfg.mode == "reference":
        if cfg.pool != "none":
            reject("pool", cfg.pool, "none with mode=reference (TF-IDF has no pooling layer), or mode=pool")
        if not kind.tokens or cfg.finetune or cfg.pool_at != "input":
            reject(
                "mode",
                cfg.mode,
                "basic or pool with features/pool_at/finetune (TF-IDF reads no backbone features)",
            )
    if cfg.mode == "basic" and kind.tokens and not spec.is_identity:
        # Named, tagged and grouped as basic, it would be a pooled model in the unpooled baseline's group.
        reject("pool", cfg.pool, "none with mode=basic (basic is the unpooled baseline), or mode=pool with this pool")
    if cfg.mode == "pool" and kind.tokens and spec.is_identity:
        reject("pool", cfg.pool, "a pooling such as avg:2x2 with mode=pool (pool=none is mode=basic)")
    for name in ("model", "data", "description"):
        value = getattr(cfg, name)
        if value is not None and len(str(value)) > MAX_TEXT:
            # Logged as a param, it would fail inside the run: MLflow refuses values past its limit.
            reject(name, f"{str(value)[:20]}... ({len(str(value))} characters)", f"at most {MAX_TEXT} characters")


def check_recipe(cfg: Config, kind: FeatureKind, spec, position) -> None:
    """The recipes that start from or learn from another run, layer truncation and [CLS] kept apart: what they
    need of features, finetune and pooling (one line each)."""
    encoder_only = {
        "keep_layers": cfg.keep_layers != 0,
        "separate_cls": cfg.separate_cls,
        "init_from": bool(cfg.init_from),
        "distill_from": bool(cfg.distill_from),
    }
    for name, given in encoder_only.items():
        if given and not kind.encoder:
            reject(name, getattr(cfg, name), f"its default with features={cfg.features} (it needs features=encoder)")
    for name in ("init_from", "distill_from"):
        if getattr(cfg, name) and not cfg.finetune:
            reject(name, getattr(cfg, name), "a model with finetune=true (the recipe trains the backbone on from it)")
    if cfg.unlabelled < 0:
        reject("unlabelled", cfg.unlabelled, "an integer >= 0 (0 = the labelled rows alone)")
    if cfg.unlabelled and not cfg.distill_from:
        reject("unlabelled", cfg.unlabelled, "0 without distill_from (only a teacher can label them)")
    if cfg.distill_hidden and not cfg.distill_from:
        reject("distill_hidden", cfg.distill_hidden, "0 without distill_from (there is no teacher to match)")
    if cfg.distill_hidden and spec.is_topk:
        reject("distill_hidden", cfg.distill_hidden, "0 with a topk pool (the teacher's states pool by windows only)")
    if cfg.separate_cls and (position.where != "layer" or spec.is_topk or spec.is_identity):
        reject("separate_cls", cfg.separate_cls, "false unless an avg or max pool sits at layer:K (topk keeps [CLS])")
    if spec.is_topk and (position.where != "layer" or 0 in position.layers):
        reject(
            "pool_at",
            cfg.pool_at,
            f"layer:K with K >= 1 for pool={spec} (tokens are chosen by the attention of the layer before)",
        )
    if cfg.keep_layers and position.where == "layer" and max(position.layers) >= cfg.keep_layers:
        reject("pool_at", cfg.pool_at, f"layers before keep_layers={cfg.keep_layers} (pooling after layer K < K kept)")


def check_pooling_combination(cfg: Config, kind: FeatureKind, spec, position) -> None:
    """Combinations of features, position, pooling, finetune and padding that cannot run (one line each)."""
    check_recipe(cfg, kind, spec, position)
    if kind.tokens:
        if position.where != "input":
            reject(
                "pool_at",
                cfg.pool_at,
                f"input with features={cfg.features} (output and layer:K need features=encoder)",
            )
        if cfg.finetune:
            reject(
                "finetune",
                cfg.finetune,
                f"false with features={cfg.features} (the input embeddings stay frozen), or features=encoder",
            )
        return
    if cfg.padding != "mask":
        reject("padding", cfg.padding, "mask with features=encoder (the encoder always reads the attention mask)")
    if spec.is_identity:
        return
    if position.where == "input":
        reject(
            "pool_at",
            cfg.pool_at,
            "output or layer:K with features=encoder (layer:0 pools before the first encoder layer)",
        )
    if position.where == "layer" and spec.hidden != 1:
        reject(
            "pool",
            cfg.pool,
            f"a sequence-only pool such as {spec.kind}:{spec.seq}x1 at pool_at={cfg.pool_at} (encoder layers "
            "expect their hidden size)",
        )
