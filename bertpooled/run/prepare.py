"""Before training: check the config against the backbone, read the data subsets, tokenize, load the features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import features, tokens
from bertpooled.errors import BertpooledError
from bertpooled.model import backbone
from bertpooled.model.pooling import pooled_length
from bertpooled.run import runtime
from bertpooled.run.measure import Phases, data_digest_of


@dataclass
class Prepared:
    """Everything the run needs before training: subsets, their token ids and the frozen features."""

    config: Config
    info: backbone.BackboneInfo
    imdb: data.Imdb
    train: data.Split
    test: data.Split
    train_tokens: tokens.Tokens
    test_tokens: tokens.Tokens
    tokenizer: object = None
    embeddings: backbone.WordEmbeddings | None = None
    tokens_cache_hit: bool = False
    phases: Phases = field(default_factory=Phases)
    backbone_model: torch.nn.Module | None = None
    """features=encoder: the loaded backbone (frozen; a fine-tuned run trains a copy)."""
    train_features: features.Features | None = None
    test_features: features.Features | None = None
    """Frozen encoder features (cached on disk); None when the run computes them itself (embeddings, finetune)."""
    features_cache_hit: bool = False
    train_features_precomputed: bool = False
    """Whether training ran on the training rows' frozen features computed once (`run.precompute`)."""
    device: torch.device = torch.device("cpu")
    """Where the run computes, resolved once when it starts (`runtime.resolve_device`)."""
    val: data.Split | None = None
    """The validation split carved from the training subset (`validation_fraction`), evaluated after every epoch."""
    val_tokens: tokens.Tokens | None = None
    val_features: features.Features | None = None

    @property
    def cached(self) -> bool:
        return self.train_features is not None


def check(config: Config) -> backbone.BackboneInfo:
    """Everything that can be checked before a run is created: backbone config, max_len, data source, device."""
    info = backbone.inspect(config.model)
    if config.max_len > info.max_positions:
        raise BertpooledError(
            f"config: max_len={config.max_len} exceeds the {info.max_positions} positions of backbone "
            f"{config.model!r}: use --max-len {info.max_positions} or less"
        )
    spec = config.pool_spec
    if config.features == "embedding_layer" and info.model_type != "bert":
        raise BertpooledError(
            "config: features=embedding_layer needs a BERT-family backbone (model_type bert: minilm, "
            "bert-base-uncased), "
            f"and {config.model!r} is {info.model_type!r}: use features=embeddings, or a BERT backbone"
        )
    if config.features == "encoder" and not spec.is_identity:
        from bertpooled.model.encoder import check_layer_pooling

        check_layer_pooling(info.model_type, info.num_layers, config.position, config.model)
    stages = max(config.position.stages, 1)
    if pooled_length(config.max_len, spec, stages) < 1:
        times = f" pooled {stages} times (pool_at={config.pool_at})" if stages > 1 else ""
        raise BertpooledError(
            f"config: max_len={config.max_len} is shorter than the pooling window of pool={spec}{times}: "
            "use a longer max_len, a smaller window or fewer stages"
        )
    if spec.out_hidden(info.hidden_size) < 1:
        raise BertpooledError(f"config: pool={spec} pools away all {info.hidden_size} features of {config.model!r}")
    data.check_source(config.data)
    runtime.precision_for(config, runtime.resolve_device(config.device))
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
    device: torch.device | None = None,
    val: data.Split | None = None,
) -> Prepared:
    """Token ids for the subsets (cached per tokenizer, data digest, split subset and max_len) and the features.

    `device`: the run's, resolved once by the caller (default: resolved from the config here). `test` None (a
    tuning trial): the test set is neither tokenized nor featurized. `val`: the validation split, if any.
    """
    cache = data.cache_dir()
    with phases.timed("tokenize"):
        tokenizer = backbone.load_tokenizer(info)
        fingerprint = backbone.tokenizer_fingerprint(tokenizer)
        hits = []
        sets = []
        for name, split in _splits(train, val, test).items():
            # The subset's ids are part of the key: a cache entry holds exactly the rows this run uses.
            subset_digest = data_digest_of(imdb.digest, split.ids)
            key = tokens.cache_key(fingerprint, subset_digest, name, config.max_len)
            toks, hit = tokens.load_or_tokenize(
                tokenizer,
                split.texts,
                config.max_len,
                key=key,
                cache_dir=cache,
                progress=progress,
                desc=f"tokenize {name}",
            )
            sets.append(toks)
            hits.append(hit)
    made = dict(zip(_splits(train, val, test), sets, strict=True))
    prepared = Prepared(
        config,
        info,
        imdb,
        train,
        test,
        made["train"],
        made.get("test"),
        tokenizer,
        None,
        all(hits),
        phases,
        device=device or runtime.resolve_device(config.device),
        val=val,
        val_tokens=made.get("val"),
    )
    with phases.timed("features"):
        if config.features == "encoder":
            prepare_encoder_features(prepared, lambda: backbone.load_model(info), progress=progress)
        else:
            prepared.embeddings = backbone.load_word_embeddings(info, whole_layer=config.features == "embedding_layer")
    return prepared


def _splits(train: data.Split, val: data.Split | None, test: data.Split | None) -> dict[str, data.Split]:
    """The splits a run tokenizes and featurizes, by name: train, then val and test where given."""
    return {name: split for name, split in (("train", train), ("val", val), ("test", test)) if split is not None}


def encoder_for(config: Config, model: torch.nn.Module):
    """The backbone wrapped with the pooling inside it that `config` asks for (none unless pool_at=layer:K)."""
    from bertpooled.model.encoder import PoolingEncoder

    return PoolingEncoder(model, config.position, config.pool_spec)


def inside_spec(config: Config) -> str:
    """The pooling that happens inside the backbone (part of the feature cache key): `none`, `SPEC@layer:K` or
    `SPEC@layer:K1,layer:K2` (one stage keeps the key it always had, so existing cache entries still hit)."""
    spec = config.pool_spec
    return f"{spec}@{config.position}" if config.position.where == "layer" and not spec.is_identity else "none"


def features_key_part(config: Config, precision: str) -> str:
    """`inside_spec`, plus the autocast the features were computed in when it is not fp32 (fp32 entries keep
    the keys they always had; bf16 features differ from fp32 ones in the low bits, so they are another entry)."""
    inside = inside_spec(config)
    return inside if precision == "fp32" else f"{inside}|{precision}"


def prepare_encoder_features(
    prepared: Prepared, load: Callable[[], torch.nn.Module], progress: bool | None = None
) -> None:
    """Load the backbone; when frozen, fill in its features for both splits from the disk cache or by running it."""
    cfg = prepared.config
    prepared.backbone_model = load()
    if cfg.finetune:
        return
    device = prepared.device
    precision = runtime.precision_for(cfg, device)
    encoder = encoder_for(cfg, prepared.backbone_model)
    print_key = backbone.fingerprint(prepared.backbone_model)
    hits, made = [], {}
    splits = _splits(prepared.train, prepared.val, prepared.test)
    toks_of = {"train": prepared.train_tokens, "val": prepared.val_tokens, "test": prepared.test_tokens}
    for name, split, toks in ((name, split, toks_of[name]) for name, split in splits.items()):
        subset = data_digest_of(prepared.imdb.digest, split.ids)
        key = features.cache_key(print_key, subset, name, cfg.max_len, features_key_part(cfg, precision))

        def run_backbone(toks=toks, name=name):
            # The frozen backbone runs in the run's precision (bf16 on CUDA and on a bf16 CPU by default).
            return features.compute(
                encoder,
                toks.ids,
                toks.lengths,
                runtime.eval_batch_size(cfg, device),
                device,
                progress,
                desc=f"features {name}",
                autocast=lambda: runtime.autocast(device, precision),
            )

        def make(key=key, name=name, toks=toks, run_backbone=run_backbone):
            encoder.to(device)
            try:
                return features.load_or_compute(
                    run_backbone,
                    key=key,
                    cache_dir=data.cache_dir(),
                    rows=len(toks),
                    meta={
                        "backbone": cfg.model,
                        "split": name,
                        "max_len": str(cfg.max_len),
                        "inside": inside_spec(cfg),
                        "precision": precision,
                    },
                )
            finally:
                encoder.cpu()

        made[name], hit = make()
        hits.append(hit)
    prepared.train_features, prepared.test_features = made["train"], made.get("test")
    prepared.val_features = made.get("val")
    prepared.features_cache_hit = all(hits)


def model_inputs(prepared: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the trained network reads for a split: cached frozen features, else token ids; and real lengths."""
    if prepared.cached:
        feats = {"train": prepared.train_features, "val": prepared.val_features, "test": prepared.test_features}[split]
        return feats.hidden, feats.lengths.long()
    toks = {"train": prepared.train_tokens, "val": prepared.val_tokens, "test": prepared.test_tokens}[split]
    return torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths)
