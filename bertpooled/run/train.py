"""One experiment, top to bottom: prepare (data, tokens, features) -> fit -> evaluate, each phase timed."""

from __future__ import annotations

import hashlib
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from tqdm.auto import tqdm

from bertpooled.model import backbone
from bertpooled.run import checkpoint
from bertpooled import data
from bertpooled.data import features, tokens
from bertpooled.config import Config
from bertpooled.errors import BertpooledError
from bertpooled.model.heads import EncoderLSTMClassifier, FeatureHead, PooledLSTMClassifier, count_parameters
from bertpooled.model.pooling import PoolSpec, pooled_length


@dataclass
class Phases:
    """Wall-clock seconds per named phase; logged as `time/<name>_s`."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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

    @property
    def cached(self) -> bool:
        return self.train_features is not None


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    test_accuracy: float | None = None


@dataclass
class Result:
    """What a finished run reports: metrics (the MLflow contract's names), per-example test probabilities."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    history: list[EpochStats]
    model: torch.nn.Module


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit device that is missing is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertpooledError(f"device={name} but no CUDA GPU is visible: use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BertpooledError("device=mps but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> `bf16` on CUDA, `fp32` elsewhere; `bf16` off CUDA is a user error (autocast to bf16 is for GPUs here)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise BertpooledError(f"config: precision=bf16 needs a CUDA device, and this run is on {device}: use precision=fp32 or auto")
    return precision


def check(config: Config) -> backbone.BackboneInfo:
    """Everything that can be checked before a run is created: backbone config, max_len, data source, device."""
    info = backbone.inspect(config.model)
    if config.max_len > info.max_positions:
        raise BertpooledError(
            f"config: max_len={config.max_len} exceeds the {info.max_positions} positions of backbone "
            f"{config.model!r}: use --max-len {info.max_positions} or less"
        )
    spec = PoolSpec.parse(config.pool)
    if config.features == "embedding_layer" and info.model_type != "bert":
        raise BertpooledError(
            f"config: features=embedding_layer needs a BERT-family backbone (model_type bert: minilm, bert-base-uncased), "
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
    resolve_precision(config.precision, resolve_device(config.device))
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_data(config: Config, phases: Phases, progress: bool | None = None) -> tuple[data.Imdb, data.Split, data.Split]:
    """The official split, then the deterministic label-balanced subsets the config asks for."""
    with phases.timed("data"):
        imdb = data.load_imdb(config.data, progress=progress)
        train_idx = data.balanced_subset(
            imdb.train.labels, fraction=config.train_fraction, n=config.max_train_examples or None, seed=config.data_seed
        )
        test_idx = data.balanced_subset(imdb.test.labels, n=config.max_test_examples or None, seed=config.data_seed)
    train_split = imdb.train.take(train_idx)
    check_training_subset(config, train_split.labels)
    return imdb, train_split, imdb.test.take(test_idx)


def check_training_subset(config: Config, labels: np.ndarray) -> None:
    """A training subset needs both labels: none or one class would fail (or train a constant) inside the run."""
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}
    if len(counts) < 2:
        raise BertpooledError(
            f"config: train_fraction={config.train_fraction} and max_train_examples={config.max_train_examples} "
            f"leave {counts.get(1, 0)} positive and {counts.get(0, 0)} negative training reviews: both labels are "
            "needed, so raise train_fraction or max_train_examples (2 or more)"
        )


def prepare(config: Config, info: backbone.BackboneInfo, imdb, train, test, phases: Phases, progress=None) -> Prepared:
    """Token ids for the subsets (cached per tokenizer, data digest, split subset and max_len) and the features."""
    cache = data.cache_dir()
    with phases.timed("tokenize"):
        tokenizer = backbone.load_tokenizer(info)
        fingerprint = backbone.tokenizer_fingerprint(tokenizer)
        hits = []
        sets = []
        for name, split in (("train", train), ("test", test)):
            # The subset's ids are part of the key: a cache entry holds exactly the rows this run uses.
            subset_digest = data_digest_of(imdb.digest, split.ids)
            key = tokens.cache_key(fingerprint, subset_digest, name, config.max_len)
            toks, hit = tokens.load_or_tokenize(
                tokenizer, split.texts, config.max_len, key=key, cache_dir=cache, progress=progress, desc=f"tokenize {name}"
            )
            sets.append(toks)
            hits.append(hit)
    prepared = Prepared(config, info, imdb, train, test, sets[0], sets[1], tokenizer, None, all(hits), phases)
    with phases.timed("features"):
        if config.features == "encoder":
            prepare_encoder_features(prepared, lambda: load_backbone(info), progress=progress)
        else:
            prepared.embeddings = backbone.load_word_embeddings(info, whole_layer=config.features == "embedding_layer")
    return prepared


def load_backbone(info: backbone.BackboneInfo) -> torch.nn.Module:
    """The backbone's base model, frozen (no gradients) and in eval mode; a user-facing error if it cannot load."""
    from bertpooled.model.encoder import load_backbone as load

    try:
        model = load(info.path)
    except (OSError, ValueError) as exc:
        raise backbone._load_error(info.name, exc) from None
    model.requires_grad_(False)
    return model


def encoder_for(config: Config, model: torch.nn.Module):
    """The backbone wrapped with the pooling inside it that `config` asks for (none unless pool_at=layer:K)."""
    from bertpooled.model.encoder import PoolingEncoder

    return PoolingEncoder(model, config.position, PoolSpec.parse(config.pool))


def inside_spec(config: Config) -> str:
    """The pooling that happens inside the backbone (part of the feature cache key): `none`, `SPEC@layer:K` or
    `SPEC@layer:K1,layer:K2` (one stage keeps the key it always had, so existing cache entries still hit)."""
    spec = PoolSpec.parse(config.pool)
    return f"{spec}@{config.position}" if config.position.where == "layer" and not spec.is_identity else "none"


def prepare_encoder_features(prepared: Prepared, load: Callable[[], torch.nn.Module], progress: bool | None = None) -> None:
    """Load the backbone; when frozen, fill in its features for both splits from the disk cache or by running it."""
    from bertpooled.model.encoder import fingerprint

    cfg = prepared.config
    prepared.backbone_model = load()
    if cfg.finetune:
        return
    device = resolve_device(cfg.device)
    encoder = encoder_for(cfg, prepared.backbone_model)
    print_key = fingerprint(prepared.backbone_model)
    hits = []
    for name, split, toks in (("train", prepared.train, prepared.train_tokens), ("test", prepared.test, prepared.test_tokens)):
        subset = data_digest_of(prepared.imdb.digest, split.ids)
        key = features.cache_key(print_key, subset, name, cfg.max_len, inside_spec(cfg))

        def make(toks=toks, key=key, name=name):
            encoder.to(device)
            try:
                return features.load_or_compute(
                    lambda: features.compute(encoder, toks.ids, toks.lengths, cfg.eval_batch_size, device, progress,
                                             desc=f"features {name}"),
                    key=key, cache_dir=data.cache_dir(), rows=len(toks),
                    meta={"backbone": cfg.model, "split": name, "max_len": str(cfg.max_len), "inside": inside_spec(cfg)},
                )
            finally:
                encoder.cpu()

        feats, hit = make()
        hits.append(hit)
        setattr(prepared, f"{name}_features", feats)
    prepared.features_cache_hit = all(hits)


def data_digest_of(digest: str, ids: list[str]) -> str:
    """Digest of a subset: the full data's digest and the ids taken from it."""
    h = hashlib.sha256(digest.encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()


def build_model(prepared: Prepared) -> torch.nn.Module:
    """The whole classifier: word-embedding lookup + head, or backbone (a trainable copy when fine-tuning) + head."""
    cfg = prepared.config
    seed_everything(cfg.seed)
    spec = PoolSpec.parse(cfg.pool)
    if cfg.features != "encoder":
        return PooledLSTMClassifier(
            prepared.embeddings.table, spec, units=cfg.lstm_units, padding=cfg.padding, init=cfg.init,
            layer=prepared.embeddings.layer, bias=cfg.lstm_bias,
        )
    import copy

    backbone_model = prepared.backbone_model
    if cfg.finetune:
        backbone_model = copy.deepcopy(backbone_model).requires_grad_(True)
    out_pool = spec if cfg.pool_at == "output" else PoolSpec()
    return EncoderLSTMClassifier(
        encoder_for(cfg, backbone_model), prepared.info.hidden_size, out_pool, units=cfg.lstm_units, init=cfg.init,
        seed=cfg.seed, bias=cfg.lstm_bias,
    )


def model_inputs(prepared: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the trained network reads for a split: cached frozen features, else token ids; and real lengths."""
    if prepared.cached:
        feats: features.Features = getattr(prepared, f"{split}_features")
        return feats.hidden, feats.lengths.long()
    toks: tokens.Tokens = getattr(prepared, f"{split}_tokens")
    return torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths)


def trained_network(model: torch.nn.Module, prepared: Prepared) -> torch.nn.Module:
    """The part of `model` a step runs: the head alone on cached features, else the whole model."""
    return FeatureHead(model) if prepared.cached else model


@torch.no_grad()
def predict_proba(model: torch.nn.Module, toks: tokens.Tokens, batch_size: int, device: torch.device,
                  precision: str = "fp32") -> np.ndarray:
    """P(positive) per row, in order, from token ids."""
    return predict_inputs(model, torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths), batch_size, device, precision)


@torch.no_grad()
def predict_inputs(net: torch.nn.Module, inputs: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                   device: torch.device, precision: str = "fp32") -> np.ndarray:
    """P(positive) per row, in order, from what `net` reads (token ids or cached features); `precision` resolved."""
    net.eval()
    ids = inputs.to(device)
    lengths = lengths.to(device)
    out = []
    for start in range(0, len(lengths), batch_size):
        with _autocast(device, precision):
            logits = net(ids[start : start + batch_size], lengths[start : start + batch_size])
        out.append(torch.sigmoid(logits.float()))
    # One copy back at the end instead of a device sync per batch.
    return torch.cat(out).double().cpu().numpy() if out else np.empty(0)


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved `precision` of bf16 (CUDA only, see resolve_precision); a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def fit(
    model: torch.nn.Module,
    prepared: Prepared,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
    checkpoints: "checkpoint.Checkpointer | None" = None,
) -> list[EpochStats]:
    """Train the head with Adam and BCE-with-logits; one visible loop, one callback per finished epoch.

    With `checkpoints`, training starts after the epoch its state holds, and every finished epoch is saved.
    """
    cfg = prepared.config
    precision = resolve_precision(cfg.precision, device)
    # The whole training set is a few MB of token ids (or the cached features): on a GPU it lives there, so a
    # step copies nothing.
    inputs, lengths = model_inputs(prepared, "train")
    ids, lengths = inputs.to(device), lengths.to(device)
    net = trained_network(model, prepared)
    test_inputs = model_inputs(prepared, "test") if cfg.eval_each_epoch else None
    labels = torch.from_numpy(prepared.train.labels.astype(np.float32)).to(device)
    params = [{"params": list(model.head.parameters())}]
    if cfg.finetune:
        params.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.backbone_lr})
    # The fused kernel updates all tensors at once: about 1 ms less per step than the per-tensor loop on CPU.
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=device.type in ("cpu", "cuda"))
    order = torch.Generator().manual_seed(cfg.seed)
    n = len(labels)
    # The order a shuffle buffer reads: fixed per data subset, like rows of a file (see `epoch_order`).
    stored = np.random.default_rng(cfg.data_seed).permutation(n) if cfg.shuffle_buffer else None
    history: list[EpochStats] = []
    first = 1
    if checkpoints is not None and checkpoints.resume is not None:
        checkpoints.resume.restore(model, optimizer, order)
        history = [EpochStats(**h) for h in checkpoints.resume.history]
        first = checkpoints.resume.epoch + 1
    for epoch in range(first, cfg.epochs + 1):
        start = time.perf_counter()
        net.train()
        perm = epoch_order(n, cfg.shuffle_buffer, order, stored).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=None if progress is None else not progress)
        for begin in bar:
            idx = perm[begin : begin + cfg.batch_size]
            x, lens, y = ids[idx], lengths[idx], labels[idx]
            with _autocast(device, precision):
                logits = net(x, lens).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: no host sync per batch.
            loss_sum += loss.detach() * len(idx)
            correct += ((logits.detach() > 0) == (y > 0.5)).sum()
        stats = EpochStats(epoch, float(loss_sum) / n, float(correct) / n, time.perf_counter() - start)
        if cfg.eval_each_epoch:
            probs = predict_inputs(net, *test_inputs, cfg.eval_batch_size, device, precision)
            stats.test_accuracy = float(accuracy_score(prepared.test.labels, probs >= 0.5))
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
        if checkpoints is not None:
            checkpoints.write(epoch, model, optimizer, order, history)
    return history


def epoch_order(n: int, buffer: int, generator: torch.Generator, stored: np.ndarray | None = None) -> torch.Tensor:
    """One epoch's order of the n training rows: a full shuffle (`buffer` 0), or tf.data's `shuffle(buffer)`.

    tf.data fills a buffer with the first `buffer` rows of `stored`, then repeatedly emits a uniformly chosen
    buffer slot and refills that slot with the next row; at the end it drains the buffer in random order. So a
    row can only move about `buffer` places from where `stored` has it.
    """
    if not buffer or buffer >= n:
        return torch.randperm(n, generator=generator)
    rows = stored.tolist() if stored is not None else list(range(n))
    picks = torch.randint(buffer, (n - buffer,), generator=generator).tolist()
    slots, out = rows[:buffer], []
    for pick, incoming in zip(picks, rows[buffer:]):
        out.append(slots[pick])
        slots[pick] = incoming
    drain = torch.randperm(buffer, generator=generator).tolist()
    out.extend(slots[i] for i in drain)
    return torch.tensor(out, dtype=torch.long)


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 and ROC AUC from scikit-learn; AUC is NaN when the test set has one class only."""
    preds = (probs >= 0.5).astype(int)
    metrics = {"test/accuracy": accuracy_score(labels, preds), "test/f1": f1_score(labels, preds, zero_division=0)}
    metrics["test/roc_auc"] = roc_auc_score(labels, probs) if len(np.unique(labels)) == 2 else float("nan")
    return {k: float(v) for k, v in metrics.items()}


# torch's own default, read once at import: one thread per physical core.
ALL_THREADS = torch.get_num_threads()


def threads_for(config: Config) -> int:
    """torch threads for the run: `num_threads`, or with 0 (auto) 1 for the head alone and all cores for a backbone.

    The LSTM(16) head's step is latency-bound: on 2 cores it gains little from a second thread when the machine
    is quiet and loses many times over when another process wants a core (benchmarks/seed_protocol.md,
    "Threads"). A backbone's forward pass is wide matmuls that scale with cores.
    """
    if config.num_threads:
        return config.num_threads
    return ALL_THREADS if config.features == "encoder" else 1


def configure_threads(config: Config) -> None:
    torch.set_num_threads(threads_for(config))


def train_and_evaluate(prepared: Prepared, on_epoch=None, progress: bool | None = None, checkpoints=None) -> Result:
    """Build the model, fit, evaluate on the test subset, measure its inference cost; fill in the contract's metrics."""
    from bertpooled.run import cost

    cfg, phases = prepared.config, prepared.phases
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    cost.reset_peak_memory(device)
    model = build_model(prepared).to(device)
    with phases.timed("train"):
        history = fit(model, prepared, device, on_epoch=on_epoch, progress=progress, checkpoints=checkpoints)
    with phases.timed("eval"):
        net = trained_network(model, prepared)
        probs = predict_inputs(net, *model_inputs(prepared, "test"), cfg.eval_batch_size, device, precision)
        metrics = evaluate(prepared.test.labels, probs)
    # Inference is timed in the precision the run trained and evaluated in (bf16 on a GPU by default).
    with phases.timed("cost"), _autocast(device, precision):
        metrics.update(
            cost.measure(model, prepared.tokenizer, prepared.test.texts, cfg.max_len, device,
                         latency_texts=cfg.latency_texts, throughput_batches=cfg.throughput_batches)
        )
    head_total, head_trainable = count_parameters(model.head)
    resumed_epochs = checkpoints.resume.epoch if checkpoints is not None and checkpoints.resume is not None else 0
    # time/train_s of a resumed run covers every epoch: the earlier ones were timed by the process that ran them
    # (their seconds travel in the checkpoint). Otherwise a resume after the last epoch logs about 0 s.
    phases.seconds["train"] += sum(h.seconds for h in history[:resumed_epochs])
    train_s = phases.seconds["train"]
    if prepared.embeddings is not None:
        backbone_params, embedding_params, backbone_trainable = (
            prepared.embeddings.backbone_params, prepared.embeddings.table.numel(), 0
        )
    else:
        backbone_params, backbone_trainable = count_parameters(model.encoder)
        embedding_params = model.encoder.model.get_input_embeddings().weight.numel()
    metrics.update(
        {
            "params/head": head_total,
            "params/head_trainable": head_trainable,
            "params/backbone": backbone_params,
            "params/backbone_trainable": backbone_trainable,
            "params/embeddings": embedding_params,
            "throughput/train_examples_per_s": len(prepared.train) * cfg.epochs / max(train_s, 1e-9),
            "data/train_examples": len(prepared.train),
            "data/test_examples": len(prepared.test),
            "tokens/cache_hit": float(prepared.tokens_cache_hit),
            "memory/peak_mb": cost.peak_memory_mb(device),
        }
    )
    if prepared.cached:
        metrics["features/cache_hit"] = float(prepared.features_cache_hit)
    return Result(metrics, probs, history, model.cpu())
