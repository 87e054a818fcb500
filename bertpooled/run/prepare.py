"""Before training: check the config against the backbone, read the data subsets, tokenize, load the features,
and (`before_training`) compute the training rows' frozen features once when they fit the run's budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import features, tokens
from bertpooled.errors import BertpooledError
from bertpooled.model import backbone
from bertpooled.model.heads import PooledLSTMClassifier
from bertpooled.model.pooling import pooled_length
from bertpooled.run import runtime
from bertpooled.run import sources as sources_
from bertpooled.run.measure import Phases, data_digest_of

# `Prepared.rt` left out: resolved from its config in __post_init__ (typed as given, None only until then).
_RESOLVED_WHEN_MADE = cast(runtime.Runtime, None)


@dataclass(frozen=True)
class Prepared:
    """Everything a run trains and evaluates from, made once before training and never written afterwards:
    the subsets, their token ids, the frozen embeddings or backbone and its features, the resolved runtime.
    What training finds out (e.g. whether it precomputed the training features) comes back in its result."""

    config: Config
    info: backbone.BackboneInfo
    imdb: data.Imdb
    train: data.Split
    test: data.Split | None
    """None in a tuning trial: it never reads the test set."""
    train_tokens: tokens.Tokens
    test_tokens: tokens.Tokens | None
    tokenizer: Any = None
    embeddings: backbone.WordEmbeddings | None = None
    tokens_cache_hit: bool = False
    phases: Phases = field(default_factory=Phases)
    """Where each phase's time is summed (a measurement sink: timed into, never replaced)."""
    backbone_model: Any = None
    """features=encoder: the loaded backbone (frozen; a fine-tuned run trains a copy)."""
    train_features: features.Features | None = None
    test_features: features.Features | None = None
    """Frozen encoder features (cached on disk); None when the run computes them itself (embeddings, finetune)."""
    features_cache_hit: bool = False
    rt: runtime.Runtime = _RESOLVED_WHEN_MADE
    """Where and how the run computes, resolved once when it starts (`runtime.Runtime.resolve`); not given (a test's
    or benchmark's hand-made inputs): resolved from the config when made."""
    val: data.Split | None = None
    """The validation split carved from the training subset (`validation_fraction`), evaluated after every epoch."""
    unlabelled: data.Split | None = None
    """`unlabelled`: reviews the teacher labels (label -1), trained on after `train` (`sources.training_rows`)."""
    unlabelled_tokens: tokens.Tokens | None = None
    val_tokens: tokens.Tokens | None = None
    val_features: features.Features | None = None
    sources: dict[str, Any] = field(default_factory=dict)
    """The tracked models the run builds on, by option (`init_from`, `distill_from`): `tracking.models.SourceModel`s
    with their weights in memory (bertpooled.run.sources)."""

    def __post_init__(self) -> None:
        if self.rt is None:
            object.__setattr__(self, "rt", runtime.Runtime.resolve(self.config))

    @property
    def device(self) -> torch.device:
        return self.rt.device

    @property
    def cached(self) -> bool:
        return self.train_features is not None

    def split(self, name: str) -> data.Split:
        """The `train`, `val` or `test` split; a run without it (no validation split, a trial's test) asks wrongly."""
        split = {"train": self.train, "val": self.val, "test": self.test}[name]
        if split is None:
            raise ValueError(f"this run has no {name} split")
        return split


def check(config: Config) -> backbone.BackboneInfo:
    """Everything that can be checked before a run is created: backbone config, max_len, data source, device."""
    info = sources_.backbone_info(config)
    if config.max_len > info.max_positions:
        raise BertpooledError(
            f"config: max_len={config.max_len} exceeds the {info.max_positions} positions of backbone "
            f"{config.model!r}: use --max-len {info.max_positions} or less"
        )
    spec = config.pool_spec
    if config.feature_kind.whole_layer and info.model_type != "bert":
        raise BertpooledError(
            "config: features=embedding_layer needs a BERT-family backbone (model_type bert: minilm, "
            "bert-base-uncased), "
            f"and {config.model!r} is {info.model_type!r}: use features=embeddings, or a BERT backbone"
        )
    if config.feature_kind.encoder:
        from bertpooled.model.encoder import check_keep_layers, check_layer_pooling

        check_keep_layers(info.model_type, info.num_layers, config.keep_layers, config.model)
        if not spec.is_identity:
            check_layer_pooling(info.model_type, info.num_layers, config.position, config.model)
    stages = max(config.position.stages, 1)
    if pooled_length(config.max_len, spec, stages, config.separate_cls) < 1:
        times = f" pooled {stages} times (pool_at={config.pool_at})" if stages > 1 else ""
        raise BertpooledError(
            f"config: max_len={config.max_len} is shorter than the pooling window of pool={spec}{times}: "
            "use a longer max_len, a smaller window or fewer stages"
        )
    if spec.out_hidden(info.hidden_size) < 1:
        raise BertpooledError(f"config: pool={spec} pools away all {info.hidden_size} features of {config.model!r}")
    data.check_source(config.data)
    runtime.Runtime.resolve(config)
    sources_.check(config, info)
    return info


def read_data(config: Config, phases: Phases, progress: bool | None = None) -> tuple[data.Imdb, data.Split, data.Split]:
    """The official split, then the deterministic label-balanced subsets the config asks for."""
    imdb, train_split = read_training(config, phases, progress)
    with phases.timed("data"):
        test_idx = data.balanced_subset(imdb.test.labels, n=config.max_test_examples or None, seed=config.data_seed)
    return imdb, train_split, imdb.test.take(test_idx)


def read_training(config: Config, phases: Phases, progress: bool | None = None) -> tuple[data.Imdb, data.Split]:
    """The data and its training subset alone: what a tuning trial reads (no test row is taken)."""
    with phases.timed("data"):
        imdb = data.load_imdb(config.data, progress=progress)
        train_idx = data.balanced_subset(
            imdb.train.labels,
            fraction=config.train_fraction,
            n=config.max_train_examples or None,
            seed=config.data_seed,
        )
    train_split = imdb.train.take(train_idx)
    check_training_subset(config, train_split.labels)
    return imdb, train_split


def split_validation(config: Config, train: data.Split) -> tuple[data.Split, data.Split | None]:
    """(training rows, validation rows) of the training subset: `validation_fraction` of each label held out,
    seeded by `data_seed`; (train, None) when the fraction is 0. Both keep both labels, or a one-line error."""
    if not config.validation_fraction:
        return train, None
    train_idx, val_idx = data.validation_split(train.labels, config.validation_fraction, seed=config.data_seed)
    fit_rows, val = train.take(train_idx), train.take(val_idx)
    for name, split in (("validation", val), ("training", fit_rows)):
        if len(np.unique(split.labels)) < 2:
            raise BertpooledError(
                f"config: validation_fraction={config.validation_fraction} of {len(train)} training reviews leaves "
                f"{int(split.labels.sum())} positive and {int(len(split) - split.labels.sum())} negative {name} "
                "reviews: both labels are needed, so change validation_fraction or use more training reviews"
            )
    return fit_rows, val


def check_training_subset(config: Config, labels: np.ndarray) -> None:
    """A training subset needs both labels: none or one class would fail (or train a constant) inside the run."""
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    if len(counts) < 2:
        raise BertpooledError(
            f"config: train_fraction={config.train_fraction} and max_train_examples={config.max_train_examples} "
            f"leave {counts.get(1, 0)} positive and {counts.get(0, 0)} negative training reviews: both labels are "
            "needed, so raise train_fraction or max_train_examples (2 or more)"
        )


def prepare(
    config: Config,
    info: backbone.BackboneInfo,
    imdb: data.Imdb,
    train: data.Split,
    test: data.Split | None,
    phases: Phases,
    progress: bool | None = None,
    rt: runtime.Runtime | None = None,
    val: data.Split | None = None,
    sources: dict[str, Any] | None = None,
) -> Prepared:
    """Token ids for the subsets (cached per tokenizer, data digest, split subset and max_len) and the features.
    `rt`: the run's runtime, resolved once by the caller (default: resolved from the config here). `test` None (a
    tuning trial): the test set is neither tokenized nor featurized. `val`: the validation split, if any.
    `sources`: the tracked models the config builds on, as the caller fetched them (default: fetched here)."""
    rt, cache = rt or runtime.Runtime.resolve(config), data.cache_dir()
    splits = _splits(train, val, test, sources_.unlabelled_split(config, imdb, train, val)[0])
    with phases.timed("tokenize"):
        tokenizer = backbone.load_tokenizer(info)
        fingerprint = backbone.tokenizer_fingerprint(tokenizer)
        made, hits = {}, []
        for name, split in splits.items():
            # The subset's ids are part of the key: a cache entry holds exactly the rows this run uses.
            subset_digest = sources_.rows_digest(imdb, split.ids)
            key = tokens.cache_key(fingerprint, subset_digest, name, config.max_len)
            made[name], hit = tokens.load_or_tokenize(
                tokenizer,
                split.texts,
                config.max_len,
                key=key,
                cache_dir=cache,
                progress=progress,
                desc=f"tokenize {name}",
            )
            hits.append(hit)
    with phases.timed("features"):
        if config.feature_kind.encoder:
            inputs = encoder_inputs(config, imdb, splits, made, rt, lambda: backbone.load_model(info), progress)
        else:
            inputs = {"embeddings": backbone.load_word_embeddings(info, whole_layer=config.feature_kind.whole_layer)}
    inputs["sources"] = sources_.fetch_sources(config) if sources is None else sources
    return Prepared(
        config,
        info,
        imdb,
        train,
        test,
        made["train"],
        made.get("test"),
        tokenizer,
        tokens_cache_hit=all(hits),
        phases=phases,
        rt=rt,
        val=val,
        val_tokens=made.get("val"),
        unlabelled=splits.get("unlabelled"),
        unlabelled_tokens=made.get("unlabelled"),
        **inputs,
    )


def _splits(train: data.Split, *others: data.Split | None) -> dict[str, data.Split]:
    """The splits a run tokenizes and featurizes, by name: train, then val, test and unlabelled where given."""
    named = zip(("train", "val", "test", "unlabelled"), (train, *others), strict=False)
    return {name: split for name, split in named if split is not None}


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


def model_inputs(prepared: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the trained network reads for a split: cached frozen features, else token ids; and real lengths."""
    if prepared.cached:
        feats = {"train": prepared.train_features, "val": prepared.val_features, "test": prepared.test_features}[split]
        if feats is None:
            raise ValueError(f"this run has no {split} split")
        return feats.hidden, feats.lengths.long()
    toks = {"train": prepared.train_tokens, "val": prepared.val_tokens, "test": prepared.test_tokens}[split]
    if toks is None:
        raise ValueError(f"this run has no {split} split")
    return torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths)


# --- The training rows' frozen features, computed once per run when they fit `precompute_mb` (issue 13) ------
#
# A head on frozen inputs recomputes the same features for every row in every epoch: the word lookup, the
# embedding layer's LayerNorm over all `max_len` tokens, pooling. They are a fixed function of the token ids
# (`PooledLSTMClassifier.features`), so one pass before the first epoch gives, bitwise, what every batch would
# compute, and a step then gathers rows of them and runs the head alone. They live in memory in float32 (no
# rounding: the run's numbers do not change), so the budget decides: at the default protocol the pooled
# features of 18,750 rows take 879 MiB and the unpooled ones 3,516 MiB (`benchmarks/seed_protocol/README.md`).
#
# Pooling is what makes them fit, so a pool run can train on precomputed features where a basic run cannot:
# runs log `train_features/cache_hit`, and the report marks training-time ratios between runs that differ in
# it (`bertpooled.contract.CACHED_PHASES`). The pass is timed inside `time/train_s` (and alone as
# `time/precompute_s`): training time stays "token ids to trained head" for every run.

MIB = 2**20


def applies(model: torch.nn.Module, budget_mb: int) -> bool:
    """Models whose frozen part is computed per batch from token ids, with a non-zero budget."""
    return budget_mb > 0 and isinstance(model, PooledLSTMClassifier)


FeatureFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def train_features(
    features: FeatureFn,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    budget_mb: int,
    batch_size: int,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`features(ids, lengths)` of every row, in row order, with their head lengths, when they fit `budget_mb`
    MiB (sized from one row's); else None. For a model where `applies`: its `features`.

    Written into one preallocated tensor, batch by batch, so the peak is the features plus one batch.
    """
    if not len(lengths):
        return None
    first, first_lengths = features(ids[:1], lengths[:1])
    if first.numel() * first.element_size() * len(lengths) / MIB > budget_mb:
        return None
    out = first.new_empty((len(lengths), *first.shape[1:]))
    out_lengths = first_lengths.new_empty(len(lengths))
    bar = tqdm(
        range(0, len(lengths), batch_size),
        desc="precompute features",
        unit="batch",
        leave=False,
        disable=None if progress is None else not progress,
    )
    for start in bar:
        end = start + batch_size
        out[start:end], out_lengths[start:end] = features(ids[start:end], lengths[start:end])
    return out, out_lengths


def before_training(
    model: torch.nn.Module,
    features: FeatureFn | None,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    prepared,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What a training loop calls first: the features when `model` `applies` and they fit the run's budget, timed
    as the run's `precompute` phase; else None (the loop reports which in `fit.Fitted.precomputed`)."""
    cfg = prepared.config
    if features is None or not applies(model, cfg.precompute_mb):
        return None
    with prepared.phases.timed("precompute"):
        return train_features(features, ids, lengths, cfg.precompute_mb, prepared.rt.eval_batch, progress)
