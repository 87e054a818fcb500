"""Training and prediction: the one visible training loop, tf.data's shuffle order, and the test-set pass."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bertpooled.contract import (
    ACCURACY,
    PARAMS_BACKBONE,
    PARAMS_HEAD,
    PARAMS_HEAD_TRAINABLE,
    QUALITY_METRICS,
    THROUGHPUT_TRAIN,
    cache_hit_metric,
    val_metric,
)
from bertpooled.data import tokens
from bertpooled.model.build import ModelSpec, build
from bertpooled.model.heads import FeatureHead, count_parameters
from bertpooled.run import checkpoint, precompute, runtime
from bertpooled.run.measure import evaluate
from bertpooled.run.prepare import Prepared, model_inputs


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    test_accuracy: float | None = None
    val: dict[str, float] | None = None
    """The validation split's quality metrics after this epoch (`val/accuracy`, ...), when the run has one."""


@dataclass
class Result:
    """What a finished run reports: metrics (the MLflow contract's names), per-example test probabilities."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    history: list[EpochStats]
    model: torch.nn.Module


def build_model(prepared: Prepared) -> torch.nn.Module:
    """The run's classifier, built from its ModelSpec and initialised from the run's seed alone."""
    cfg = prepared.config
    runtime.seed_everything(cfg.seed)
    spec = spec_of(cfg)
    if cfg.features != "encoder":
        return build(spec, table=prepared.embeddings.table, layer=prepared.embeddings.layer)
    # Fine-tuning trains a copy: the loaded backbone stays frozen for whatever else shares it.
    return build(spec, backbone=prepared.backbone_model, trainable_backbone=cfg.finetune)


def spec_of(config, **extra) -> ModelSpec:
    """The model spec of an experiment config (`extra`: what only the built model knows)."""
    return ModelSpec(
        config.features,
        config.pool_spec,
        config.position,
        config.lstm_units,
        config.padding,
        config.lstm_bias,
        config.max_len,
        config.model,
        config.init,
        **extra,
    )


def model_spec(config, model: torch.nn.Module) -> ModelSpec:
    """The spec the logged model stores: the config's, plus what only the built model knows."""
    if config.features == "embedding_layer":
        return spec_of(config, layer_norm_eps=model.layer.eps)
    if config.features == "encoder":
        # The backbone's architecture as JSON: serving rebuilds it and loads the weights from safetensors.
        return spec_of(config, backbone_config=model.encoder.model.config.to_dict(), precision=config.precision)
    return spec_of(config)


def trained_network(model: torch.nn.Module, prepared: Prepared) -> torch.nn.Module:
    """The part of `model` a step runs: the head alone on cached features, else the whole model."""
    return FeatureHead(model) if prepared.cached else model


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, toks: tokens.Tokens, batch_size: int, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """P(positive) per row, in order, from token ids."""
    return predict_inputs(
        model, torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths), batch_size, device, precision
    )


@torch.no_grad()
def predict_inputs(
    net: torch.nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """P(positive) per row, in order, from what `net` reads (token ids or cached features); `precision` resolved."""
    net.eval()
    ids = inputs.to(device)
    lengths = lengths.to(device)
    out = []
    for start in range(0, len(lengths), batch_size):
        with runtime.autocast(device, precision):
            logits = net(ids[start : start + batch_size], lengths[start : start + batch_size])
        out.append(torch.sigmoid(logits.float()))
    # One copy back at the end instead of a device sync per batch.
    return torch.cat(out).double().cpu().numpy() if out else np.empty(0)


def fit(
    model: torch.nn.Module,
    prepared: Prepared,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
    checkpoints: checkpoint.Checkpointer | None = None,
) -> list[EpochStats]:
    """Train the head with Adam and BCE-with-logits; one visible loop, one callback per finished epoch.

    With `checkpoints`, training starts after the epoch its state holds, and every finished epoch is saved.
    Longer than most functions here on purpose: the whole training loop reads in one place.
    """
    cfg = prepared.config
    precision = runtime.precision_for(cfg, device)
    # The whole training set is a few MB of token ids (or the cached features): on a GPU it lives there, so a
    # step copies nothing.
    inputs, lengths = model_inputs(prepared, "train")
    ids, lengths = inputs.to(device), lengths.to(device)
    net = eval_net = trained_network(model, prepared)
    ahead = precompute.before_training(net, getattr(net, "features", None), ids, lengths, prepared, progress)
    if ahead is not None:
        # The frozen features of every training row, computed once: a step runs the head alone.
        (ids, lengths), net = ahead, FeatureHead(model)
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
        bar = tqdm(
            range(0, n, cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=None if progress is None else not progress,
        )
        for begin in bar:
            idx = perm[begin : begin + cfg.batch_size]
            x, lens, y = ids[idx], lengths[idx], labels[idx]
            with runtime.autocast(device, precision):
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
            probs = predict_inputs(eval_net, *test_inputs, runtime.eval_batch_size(cfg, device), device, precision)
            stats.test_accuracy = ACCURACY.score(prepared.test.labels, probs)
        if prepared.val is not None:
            stats.val = validate(eval_net, prepared, device, precision)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
        if checkpoints is not None:
            checkpoints.write(epoch, model, optimizer, order, history)
    return history


def validate(net: torch.nn.Module, prepared: Prepared, device: torch.device, precision: str) -> dict[str, float]:
    """The validation split's quality metrics (`val/accuracy`, `val/f1`, `val/roc_auc`) of `net` as it is now."""
    probs = predict_inputs(
        net, *model_inputs(prepared, "val"), runtime.eval_batch_size(prepared.config, device), device, precision
    )
    return {val_metric(metric): metric.score(prepared.val.labels, probs) for metric in QUALITY_METRICS if metric.score}


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
    for pick, incoming in zip(picks, rows[buffer:], strict=True):
        out.append(slots[pick])
        slots[pick] = incoming
    drain = torch.randperm(buffer, generator=generator).tolist()
    out.extend(slots[i] for i in drain)
    return torch.tensor(out, dtype=torch.long)


def train_and_evaluate(prepared: Prepared, on_epoch=None, progress: bool | None = None, checkpoints=None) -> Result:
    """Build the model, fit, evaluate on the test subset, measure its inference cost; fill in the contract's metrics."""
    from bertpooled.run import cost

    cost.reset_peak_memory(prepared.device)
    model = build_model(prepared).to(prepared.device)
    with prepared.phases.timed("train"):
        history = fit(model, prepared, prepared.device, on_epoch=on_epoch, progress=progress, checkpoints=checkpoints)
    resumed_epochs = checkpoints.resume.epoch if checkpoints is not None and checkpoints.resume is not None else 0
    return evaluate_trained(prepared, model, history, resumed_epochs)


def evaluate_trained(
    prepared: Prepared, model: torch.nn.Module, history: list[EpochStats], resumed_epochs: int = 0
) -> Result:
    """After training (here, or in a seed group: bertpooled.run.grouped): evaluate on the test subset, measure the
    inference cost, fill in the contract's metrics. `model` is on the run's device; `phases` holds its train time."""
    from bertpooled.run import cost

    cfg, phases = prepared.config, prepared.phases
    device = prepared.device
    precision = runtime.precision_for(cfg, device)
    with phases.timed("eval"):
        net = trained_network(model, prepared)
        probs = predict_inputs(
            net, *model_inputs(prepared, "test"), runtime.eval_batch_size(cfg, device), device, precision
        )
        metrics = evaluate(prepared.test.labels, probs)
    # Inference is timed in the precision the run trained and evaluated in (bf16 on a GPU by default).
    with phases.timed("cost"), runtime.autocast(device, precision):
        metrics.update(
            cost.measure(
                model,
                prepared.tokenizer,
                prepared.test.texts,
                cfg.max_len,
                device,
                latency_texts=cfg.latency_texts,
                throughput_batches=cfg.throughput_batches,
            )
        )
    head_total, head_trainable = count_parameters(model.head)
    # time/train_s of a resumed run covers every epoch: the earlier ones were timed by the process that ran them
    # (their seconds travel in the checkpoint). Otherwise a resume after the last epoch logs about 0 s.
    phases.seconds["train"] += sum(h.seconds for h in history[:resumed_epochs])
    train_s = phases.seconds["train"]
    if prepared.embeddings is not None:
        backbone_params, embedding_params, backbone_trainable = (
            prepared.embeddings.backbone_params,
            prepared.embeddings.table.numel(),
            0,
        )
    else:
        backbone_params, backbone_trainable = count_parameters(model.encoder)
        embedding_params = model.encoder.model.get_input_embeddings().weight.numel()
    metrics.update(
        {
            PARAMS_HEAD: head_total,
            PARAMS_HEAD_TRAINABLE: head_trainable,
            PARAMS_BACKBONE: backbone_params,
            "params/backbone_trainable": backbone_trainable,
            "params/embeddings": embedding_params,
            THROUGHPUT_TRAIN: len(prepared.train) * cfg.epochs / max(train_s, 1e-9),
            "data/train_examples": len(prepared.train),
            "data/test_examples": len(prepared.test),
            cache_hit_metric("tokens"): float(prepared.tokens_cache_hit),
            **cost.peak_memory_metrics(device),
        }
    )
    if prepared.cached:
        metrics[cache_hit_metric("features")] = float(prepared.features_cache_hit)
    metrics[cache_hit_metric("train_features")] = float(prepared.train_features_precomputed)
    if prepared.val is not None:
        metrics["data/val_examples"] = len(prepared.val)
    return Result(metrics, probs, history, model.cpu())
