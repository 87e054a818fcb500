"""Before training: check the config against the backbone, read the data subsets, tokenize (one path, with a memo
for what runs of one process share), load the features (a frozen backbone's: `run.frozen`). The training rows'
features computed once before the first epoch are `run.precompute`'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import features, tokens
from bertpooled.errors import BertpooledError
from bertpooled.model import backbone
from bertpooled.model.pooling import pooled_length
from bertpooled.run import frozen, runtime
from bertpooled.run import sources as sources_
from bertpooled.run.measure import Phases

T = TypeVar("T")


class Memo:
    """Where a run's inputs may already be, keyed by what determines each: `get(key, make)` -> (value, hit), `make()`
    run only when absent. A run alone makes its own (every input made for it alone); a sweep or a tuning worker
    shares one, `run.shared.Shared`, across the runs of its process."""

    def __init__(self) -> None:
        self._values: dict[tuple, Any] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self._values

    def get(self, key: tuple, make: Callable[[], T]) -> tuple[T, bool]:
        """(value, hit): the value stored under `key`, made by `make()` the first time."""
        if key in self._values:
            return self._values[key], True
        value = self._values[key] = make()
        return value, False


def tokenizer_of(info: backbone.BackboneInfo, memo: Memo | None = None) -> tuple[Any, str]:
    """(tokenizer, fingerprint) of the backbone, through `memo`."""

    def load():
        tokenizer = backbone.load_tokenizer(info)
        return tokenizer, backbone.tokenizer_fingerprint(tokenizer)

    return (memo or Memo()).get(("tokenizer", info.path), load)[0]


def token_ids(
    info: backbone.BackboneInfo,
    imdb: data.Imdb,
    splits: dict[str, data.Split],
    max_len: int,
    progress: bool | None = None,
    memo: Memo | None = None,
) -> tuple[dict[str, tokens.Tokens], bool]:
    """The one tokenizing path: token ids per split, from `memo`, else the disk cache (keyed by tokenizer, the rows'
    digest, split and max_len: a cache entry holds exactly the rows a run uses), else tokenized; and whether none
    was tokenized."""
    tokenizer, fingerprint = tokenizer_of(info, memo)
    out, hits = {}, []
    for name, split in splits.items():
        key = tokens.cache_key(fingerprint, sources_.rows_digest(imdb, split.ids), name, max_len)

        def load(split: data.Split = split, key: str = key, name: str = name) -> tuple[tokens.Tokens, bool]:
            return tokens.load_or_tokenize(
                tokenizer,
                split.texts,
                max_len,
                key=key,
                cache_dir=data.cache_dir(),
                progress=progress,
                desc=f"tokenize {name}",
            )

        (out[name], disk_hit), memo_hit = (memo or Memo()).get(("tokens", key), load)
        hits.append(memo_hit or disk_hit)
    return out, all(hits)


def word_embeddings(
    info: backbone.BackboneInfo, whole_layer: bool, memo: Memo | None = None
) -> backbone.WordEmbeddings:
    """The backbone's frozen word table (and embedding layer), through `memo` (no run writes to them: buffers)."""
    return (memo or Memo()).get(
        ("embeddings", info.path, whole_layer), lambda: backbone.load_word_embeddings(info, whole_layer=whole_layer)
    )[0]


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
    rt: runtime.Runtime
    """Where and how the run computes, resolved once when the run starts (`runtime.Runtime.resolve`) and handed down:
    nothing below resolves it again."""
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
    runtime.Runtime.resolve(config)  # a device or precision this machine lacks: one line before any run
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
    *,
    rt: runtime.Runtime,
    progress: bool | None = None,
    val: data.Split | None = None,
    sources: dict[str, Any] | None = None,
    memo: Memo | None = None,
) -> Prepared:
    """Token ids for the subsets (`token_ids`) and the features. `rt`: the run's runtime, resolved once when the run
    started. `test` None (a tuning trial): the test set is neither tokenized nor featurized. `val`: the validation
    split, if any. `sources`: the tracked models the config builds on, as the caller fetched them (default: fetched
    here). `memo`: inputs shared with other runs of this process (a sweep's), else made for this run."""
    splits = _splits(train, val, test, sources_.unlabelled_split(config, imdb, train, val)[0])
    with phases.timed("tokenize"):
        tokenizer, _ = tokenizer_of(info, memo)
        made, hit = token_ids(info, imdb, splits, config.max_len, progress, memo)
    with phases.timed("features"):
        if config.feature_kind.encoder:
            inputs = frozen.encoder_inputs(config, imdb, splits, made, rt, lambda: backbone.load_model(info), progress)
        else:
            inputs = {"embeddings": word_embeddings(info, config.feature_kind.whole_layer, memo)}
    inputs["sources"] = sources_.fetch_sources(config) if sources is None else sources
    return Prepared(
        config,
        info,
        imdb,
        train,
        test,
        made["train"],
        made.get("test"),
        rt,
        tokenizer,
        tokens_cache_hit=hit,
        phases=phases,
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
