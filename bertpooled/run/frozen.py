"""A frozen backbone's features of every split, from the disk cache or by running it once (features=encoder without
fine-tuning): the encoder a run computes through, and the cache key that says what it computed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import features, tokens
from bertpooled.model import backbone
from bertpooled.run import runtime
from bertpooled.run.measure import data_digest_of


def encoder_for(config: Config, model: Any):
    """The backbone wrapped with the pooling inside it that `config` asks for (none unless pool_at=layer:K), its
    first `keep_layers` layers only when set."""
    from bertpooled.model.encoder import PoolingEncoder, truncated

    return PoolingEncoder(
        truncated(model, config.keep_layers), config.position, config.pool_spec, separate_cls=config.separate_cls
    )


def inside_spec(config: Config) -> str:
    """The pooling that happens inside the backbone (part of the feature cache key): `none`, `SPEC@layer:K` or
    `SPEC@layer:K1,layer:K2` (one stage keeps the key it always had, so existing cache entries still hit)."""
    spec = config.pool_spec
    inside = f"{spec}@{config.position}" if config.position.where == "layer" and not spec.is_identity else "none"
    inside += "|sepcls" if config.separate_cls else ""
    return inside + (f"|first{config.keep_layers}" if config.keep_layers else "")


def features_key_part(config: Config, precision: str) -> str:
    """`inside_spec`, plus the autocast the features were computed in when it is not fp32 (fp32 entries keep
    the keys they always had; bf16 features differ from fp32 ones in the low bits, so they are another entry)."""
    inside = inside_spec(config)
    return inside if precision == "fp32" else f"{inside}|{precision}"


def encoder_inputs(
    config: Config,
    imdb: data.Imdb,
    splits: dict[str, data.Split],
    toks_of: dict[str, tokens.Tokens],
    rt: runtime.Runtime,
    load: Callable[[], Any],
    progress: bool | None = None,
) -> dict[str, Any]:
    """`Prepared`'s encoder fields: the loaded backbone and, when frozen, its features of every split from the disk
    cache or by running it (`train_features`, `val_features`, `test_features`, `features_cache_hit`)."""
    model = load()
    if config.finetune:
        return {"backbone_model": model}
    encoder = encoder_for(config, model)
    print_key = backbone.fingerprint(model)
    hits, made = [], {}
    for name, split in splits.items():
        subset = data_digest_of(imdb.digest, split.ids)
        key = features.cache_key(print_key, subset, name, config.max_len, features_key_part(config, rt.precision))
        made[name], hit = _load_or_compute_features(config, encoder, toks_of[name], name, key, rt, progress)
        hits.append(hit)
    return {
        "backbone_model": model,
        "train_features": made["train"],
        "test_features": made.get("test"),
        "val_features": made.get("val"),
        "features_cache_hit": all(hits),
    }


def _load_or_compute_features(config, encoder, toks, name, key, rt, progress) -> tuple[features.Features, bool]:
    """One split's frozen features: from the disk cache, or by running the backbone in the run's precision
    (bf16 on CUDA and on a bf16 CPU by default), on the run's device and back."""

    def run_backbone():
        return features.compute(
            encoder,
            toks.ids,
            toks.lengths,
            rt.eval_batch,
            rt.device,
            progress,
            desc=f"features {name}",
            autocast=rt.autocast,
        )

    meta = {
        "backbone": config.model,
        "split": name,
        "max_len": str(config.max_len),
        "inside": inside_spec(config),
        "precision": rt.precision,
    }
    encoder.to(rt.device)
    try:
        return features.load_or_compute(run_backbone, key=key, cache_dir=data.cache_dir(), rows=len(toks), meta=meta)
    finally:
        encoder.cpu()
