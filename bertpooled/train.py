"""One experiment, top to bottom: prepare (data, tokens, features) -> fit -> evaluate, each phase timed."""

from __future__ import annotations

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

from bertpooled import backbone, data, tokens
from bertpooled.config import Config
from bertpooled.errors import BertpooledError
from bertpooled.modeling import PooledLSTMClassifier, count_parameters
from bertpooled.pooling import PoolSpec


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
    model: PooledLSTMClassifier


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit device that is missing is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertpooledError(f"device={name} but no CUDA GPU is visible: use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BertpooledError("device=mps but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def check(config: Config) -> backbone.BackboneInfo:
    """Everything that can be checked before a run is created: backbone config, max_len, data source, device."""
    info = backbone.inspect(config.model)
    if config.max_len > info.max_positions:
        raise BertpooledError(
            f"config: max_len={config.max_len} exceeds the {info.max_positions} positions of backbone "
            f"{config.model!r}: use --max-len {info.max_positions} or less"
        )
    spec = PoolSpec.parse(config.pool)
    if spec.out_len(config.max_len) < 1:
        raise BertpooledError(f"config: max_len={config.max_len} is shorter than the pooling window of pool={spec}")
    if spec.out_hidden(info.hidden_size) < 1:
        raise BertpooledError(f"config: pool={spec} pools away all {info.hidden_size} features of {config.model!r}")
    data.check_source(config.data)
    resolve_device(config.device)
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
    return imdb, imdb.train.take(train_idx), imdb.test.take(test_idx)


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
    with phases.timed("features"):
        embeddings = backbone.load_word_embeddings(info)
    return Prepared(
        config, info, imdb, train, test, sets[0], sets[1], tokenizer, embeddings, all(hits), phases
    )


def data_digest_of(digest: str, ids: list[str]) -> str:
    """Digest of a subset: the full data's digest and the ids taken from it."""
    import hashlib

    h = hashlib.sha256(digest.encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()


def build_model(prepared: Prepared) -> PooledLSTMClassifier:
    cfg = prepared.config
    seed_everything(cfg.seed)
    return PooledLSTMClassifier(
        prepared.embeddings.table, PoolSpec.parse(cfg.pool), units=cfg.lstm_units, padding=cfg.padding, init=cfg.init
    )


@torch.no_grad()
def predict_proba(model: PooledLSTMClassifier, toks: tokens.Tokens, batch_size: int, device: torch.device, amp: bool = False) -> np.ndarray:
    """P(positive) per row, in order."""
    model.eval()
    ids = torch.from_numpy(toks.ids).to(device)
    lengths = torch.from_numpy(toks.lengths).to(device)
    out = []
    for start in range(0, len(toks), batch_size):
        with _autocast(device, amp):
            logits = model(ids[start : start + batch_size], lengths[start : start + batch_size])
        out.append(torch.sigmoid(logits.float()))
    # One copy back at the end instead of a device sync per batch.
    return torch.cat(out).double().cpu().numpy() if out else np.empty(0)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def fit(
    model: PooledLSTMClassifier,
    prepared: Prepared,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
) -> list[EpochStats]:
    """Train the head with Adam and BCE-with-logits; one visible loop, one callback per finished epoch."""
    cfg = prepared.config
    # The whole training set is a few MB of token ids: on a GPU it lives there, so a step copies nothing.
    ids = torch.from_numpy(prepared.train_tokens.ids).to(device)
    lengths = torch.from_numpy(prepared.train_tokens.lengths).to(device)
    labels = torch.from_numpy(prepared.train.labels.astype(np.float32)).to(device)
    # The fused kernel updates all tensors at once: about 1 ms less per step than the per-tensor loop on CPU.
    optimizer = torch.optim.Adam(model.head.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=device.type in ("cpu", "cuda"))
    order = torch.Generator().manual_seed(cfg.seed)
    n = len(labels)
    history: list[EpochStats] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=order).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=None if progress is None else not progress)
        for begin in bar:
            idx = perm[begin : begin + cfg.batch_size]
            x, lens, y = ids[idx], lengths[idx], labels[idx]
            with _autocast(device, cfg.amp):
                logits = model(x, lens).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: no host sync per batch.
            loss_sum += loss.detach() * len(idx)
            correct += ((logits.detach() > 0) == (y > 0.5)).sum()
        stats = EpochStats(epoch, float(loss_sum) / n, float(correct) / n, time.perf_counter() - start)
        if cfg.eval_each_epoch:
            probs = predict_proba(model, prepared.test_tokens, cfg.eval_batch_size, device, cfg.amp)
            stats.test_accuracy = float(accuracy_score(prepared.test.labels, probs >= 0.5))
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 and ROC AUC from scikit-learn; AUC is NaN when the test set has one class only."""
    preds = (probs >= 0.5).astype(int)
    metrics = {"test/accuracy": accuracy_score(labels, preds), "test/f1": f1_score(labels, preds, zero_division=0)}
    metrics["test/roc_auc"] = roc_auc_score(labels, probs) if len(np.unique(labels)) == 2 else float("nan")
    return {k: float(v) for k, v in metrics.items()}


def configure_threads(config: Config) -> None:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)


def train_and_evaluate(prepared: Prepared, on_epoch=None, progress: bool | None = None) -> Result:
    """Build the model, fit, evaluate on the test subset; fill in the contract's metrics."""
    cfg, phases = prepared.config, prepared.phases
    device = resolve_device(cfg.device)
    model = build_model(prepared).to(device)
    with phases.timed("train"):
        history = fit(model, prepared, device, on_epoch=on_epoch, progress=progress)
    with phases.timed("eval"):
        probs = predict_proba(model, prepared.test_tokens, cfg.eval_batch_size, device, cfg.amp)
        metrics = evaluate(prepared.test.labels, probs)
    head_total, head_trainable = count_parameters(model.head)
    train_s = phases.seconds["train"]
    metrics.update(
        {
            "params/head": head_total,
            "params/head_trainable": head_trainable,
            "params/backbone": prepared.embeddings.backbone_params,
            "params/embeddings": prepared.embeddings.table.numel(),
            "throughput/train_examples_per_s": len(prepared.train) * cfg.epochs / max(train_s, 1e-9),
            "data/train_examples": len(prepared.train),
            "data/test_examples": len(prepared.test),
            "tokens/cache_hit": float(prepared.tokens_cache_hit),
        }
    )
    return Result(metrics, probs, history, model.cpu())
