"""Training and prediction: the one visible training loop, tf.data's shuffle order, and the test-set pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

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
from bertpooled.model.build import Classifier, ModelSpec, build
from bertpooled.model.heads import EncoderLSTMClassifier, FeatureHead, PooledLSTMClassifier, count_parameters
from bertpooled.run import checkpoint, prepare, runtime, sources
from bertpooled.run.measure import Trained, evaluate, predict_inputs
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


@dataclass(frozen=True)
class Fitted:
    """What training hands back: each seed's per-epoch history (one seed for a run alone, S for a seed group)
    and whether it trained on the training rows' features computed once (`run.prepare.before_training`)."""

    histories: list[list[EpochStats]]
    precomputed: bool = False

    @property
    def history(self) -> list[EpochStats]:
        """The history of a run alone (a group of one)."""
        return self.histories[0]


@dataclass
class Trainee:
    """What the training loop trains: S seeds' networks behind one forward, their optimizer and batch orders.

    A run alone is a group of one: `forward` takes inputs (S, batch, ...) and lengths (S, batch) and returns
    logits (S, batch); `orders` holds one generator per seed; `evaluating(s)` gives seed s's network as it is
    now, for the per-epoch evaluations."""

    module: torch.nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    orders: list[torch.Generator]
    evaluating: Callable[[int], contextlib.AbstractContextManager[torch.nn.Module]]
    inputs: torch.Tensor
    """Every training row as the network reads it (token ids or features), on the run's device."""
    lengths: torch.Tensor
    histories: list[list[EpochStats]] = field(default_factory=list)
    """Earlier epochs' histories per seed (a resumed run)."""
    first_epoch: int = 1
    """The epoch training starts at (a resumed run: the one after its checkpoint's)."""
    distillation: Any = None
    """A run alone with a teacher: its `run.sources.Distillation` (the loss), else the plain BCE."""
    tap: Any = None
    """The student's forward that keeps its last hidden states (`run.sources.HiddenTap`), for the hidden term."""


def build_model(prepared: Prepared) -> Classifier:
    """The run's classifier, built from its ModelSpec and initialised from the run's seed alone."""
    cfg = prepared.config
    runtime.seed_everything(cfg.seed)
    spec = spec_of(cfg)
    if not cfg.feature_kind.encoder:
        assert prepared.embeddings is not None, "a head on input features is prepared with the embeddings"
        return build(spec, table=prepared.embeddings.table, layer=prepared.embeddings.layer)
    # Fine-tuning trains a copy: the loaded backbone stays frozen for whatever else shares it.
    model = build(spec, backbone=prepared.backbone_model, trainable_backbone=cfg.finetune)
    source = prepared.sources.get("init_from")
    if source is not None:
        # The two-stage recipe: the source run's backbone and head, with this run's pooling inserted.
        model.load_state_dict(sources.initial_state(source, model))
    return model


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
        keep_layers=config.keep_layers,
        separate_cls=config.separate_cls,
        **extra,
    )


def model_spec(config, model: Classifier) -> ModelSpec:
    """The spec the logged model stores: the config's, plus what only the built model knows."""
    if config.feature_kind.whole_layer:
        assert isinstance(model, PooledLSTMClassifier) and model.layer is not None
        return spec_of(config, layer_norm_eps=model.layer.eps)
    if config.feature_kind.encoder:
        # The backbone's architecture as JSON: serving rebuilds it and loads the weights from safetensors.
        assert isinstance(model, EncoderLSTMClassifier)
        return spec_of(config, backbone_config=backbone_of(model).config.to_dict(), precision=config.precision)
    return spec_of(config)


def backbone_of(model: EncoderLSTMClassifier) -> Any:
    """The Hugging Face model inside an encoder classifier's pooling wrapper (`model.encoder.PoolingEncoder`)."""
    return cast(Any, model.encoder).model


def trained_network(model: Classifier, prepared: Prepared) -> torch.nn.Module:
    """The part of `model` a step runs: the head alone on cached features, else the whole model."""
    return FeatureHead(model) if prepared.cached else model


def fit(
    model: Classifier,
    prepared: Prepared,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
    checkpoints: checkpoint.Checkpointer | None = None,
    distillation: Any = None,
) -> Fitted:
    """Train a run alone with Adam and BCE-with-logits (or `distillation`'s loss): `train_epochs` with a group of
    one seed.

    With `checkpoints`, training starts after the epoch its state holds, and every finished epoch is saved.
    """
    cfg, rt = prepared.config, prepared.rt
    # The whole training set is a few MB of token ids (or the cached features): on a GPU it lives there, so a
    # step copies nothing.
    inputs, lengths = sources.training_inputs(prepared, model_inputs(prepared, "train"))
    ids, lengths = inputs.to(rt.device), lengths.to(rt.device)
    net = eval_net = trained_network(model, prepared)
    tap = None
    if distillation is not None and distillation.hidden_weight:
        net = tap = sources.HiddenTap(model)
    ahead = prepare.before_training(net, getattr(net, "features", None), ids, lengths, prepared, progress)
    if ahead is not None:
        # The frozen features of every training row, computed once: a step runs the head alone.
        (ids, lengths), net = ahead, FeatureHead(model)
    params: list[dict[str, Any]] = [{"params": list(model.head.parameters())}]
    if cfg.finetune and isinstance(model, EncoderLSTMClassifier):
        params.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.backbone_lr})
    # The fused kernel updates all tensors at once: about 1 ms less per step than the per-tensor loop on CPU.
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=rt.device.type in ("cpu", "cuda"))
    order = torch.Generator().manual_seed(cfg.seed)
    history: list[EpochStats] = []
    first = 1
    if checkpoints is not None and checkpoints.resume is not None:
        checkpoints.resume.restore(model, optimizer, order)
        history = [EpochStats(**h) for h in checkpoints.resume.history]
        first = checkpoints.resume.epoch + 1
    trainee = Trainee(
        net,
        lambda x, lens: net(x[0], lens[0]).unsqueeze(0),
        optimizer,
        [order],
        lambda s: contextlib.nullcontext(eval_net),
        ids,
        lengths,
        [history],
        first,
        distillation,
        tap,
    )

    def saved(epoch: int) -> None:
        if checkpoints is not None:
            checkpoints.write(epoch, model, optimizer, order, history)

    histories = train_epochs(
        trainee, prepared, (lambda s, stats: on_epoch(stats)) if on_epoch else None, saved, progress
    )
    return Fitted(histories, ahead is not None)


def train_epochs(
    trainee: Trainee,
    prepared: Prepared,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    progress: bool | None = None,
) -> list[list[EpochStats]]:
    """The one training loop: every epoch after the histories' last, each seed reading its own order of the rows.

    Seed s draws its epoch orders from `trainee.orders[s]` (`epoch_order`); a step runs one forward over the S
    batches, one backward of the sum of the S per-seed mean losses (so seed s's gradient is its own loss's) and
    one optimizer step. `on_epoch(s, stats)` per seed and finished epoch (`seconds`: the epoch's time / S, the
    seed's share), then `on_epoch_end(epoch)` once. Returns the histories, one per seed.
    """
    cfg, rt = prepared.config, prepared.rt
    seeds = len(trainee.orders)
    labels = torch.from_numpy(sources.training_labels(prepared)).to(rt.device)
    n, labelled = len(labels), len(prepared.train)
    # The order a shuffle buffer reads: fixed per data subset, like rows of a file (see `epoch_order`).
    stored = np.random.default_rng(cfg.data_seed).permutation(n) if cfg.shuffle_buffer else None
    histories = trainee.histories or [[] for _ in range(seeds)]
    group = f" ({seeds} seeds)" if seeds > 1 else ""
    for epoch in range(trainee.first_epoch, cfg.epochs + 1):
        start = time.perf_counter()
        trainee.module.train()
        orders = [epoch_order(n, cfg.shuffle_buffer, order, stored) for order in trainee.orders]
        perms = torch.stack(orders).to(rt.device)
        loss_sum = torch.zeros(seeds, device=rt.device)
        correct = torch.zeros(seeds, device=rt.device, dtype=torch.long)
        bar = tqdm(
            range(0, n, cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}{group}",
            unit="batch",
            leave=False,
            disable=None if progress is None else not progress,
        )
        for begin in bar:
            idx = perms[:, begin : begin + cfg.batch_size]
            y = labels[idx]
            losses, logits = step(trainee, trainee.inputs[idx], trainee.lengths[idx], y, rt, idx)
            # Accumulate on the device: no host sync per batch.
            loss_sum += losses * idx.shape[1]
            correct += (((logits > 0) == (y > 0.5)) & (y >= 0)).sum(1)  # unlabelled rows (-1) not counted
        seconds = (time.perf_counter() - start) / seeds
        losses_host, correct_host = loss_sum.cpu().tolist(), correct.cpu().tolist()
        for s in range(seeds):
            stats = EpochStats(epoch, losses_host[s] / n, correct_host[s] / labelled, seconds)
            with trainee.evaluating(s) as net:
                evaluate_epoch(stats, net, prepared)
            histories[s].append(stats)
            if on_epoch:
                on_epoch(s, stats)
        if on_epoch_end:
            on_epoch_end(epoch)
    return histories


def step(
    trainee: Trainee,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    rt: runtime.Runtime,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of all seeds: inputs (S, batch, ...), lengths, labels and training `rows` (S, batch).

    The loss is the sum over seeds of each seed's mean BCE: one mean-reduced loss per seed, as a run alone computes
    it, so the reduction's backward divides by the batch size the same way and the gradients are bitwise those of
    a run alone. A run with a teacher (a group of one) takes the distillation loss instead. Returns (per-seed mean
    losses (S,), logits (S, batch)), detached.
    """
    with rt.autocast():
        logits = trainee.forward(inputs, lengths).float()
    if trainee.distillation is not None:
        assert rows is not None and len(logits) == 1, "distillation trains a run alone, given its rows"
        losses = trainee.distillation.loss(logits[0], labels[0], rows[0], trainee.tap).unsqueeze(0)
    else:
        losses = torch.stack([F.binary_cross_entropy_with_logits(logits[s], labels[s]) for s in range(len(logits))])
    trainee.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    trainee.optimizer.step()
    return losses.detach(), logits.detach()


def evaluate_epoch(stats: EpochStats, net: torch.nn.Module, prepared: Prepared) -> None:
    """After an epoch: the test accuracy with `eval_each_epoch`, the validation metrics with a validation split."""
    rt = prepared.rt
    if prepared.config.eval_each_epoch:
        probs = predict_inputs(net, *model_inputs(prepared, "test"), rt.eval_batch, rt.device, rt.precision)
        stats.test_accuracy = accuracy(prepared.split("test").labels, probs)
    if prepared.val is not None:
        stats.val = validate(net, prepared)


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The contract's accuracy of probabilities against labels (at its decision threshold)."""
    assert ACCURACY.score is not None
    return ACCURACY.score(labels, probabilities)


def validate(net: torch.nn.Module, prepared: Prepared) -> dict[str, float]:
    """The validation split's quality metrics (`val/accuracy`, `val/f1`, `val/roc_auc`) of `net` as it is now."""
    rt = prepared.rt
    probs = predict_inputs(net, *model_inputs(prepared, "val"), rt.eval_batch, rt.device, rt.precision)
    labels = prepared.split("val").labels
    return {val_metric(metric): metric.score(labels, probs) for metric in QUALITY_METRICS if metric.score}


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


def train_and_evaluate(prepared: Prepared, on_epoch=None, progress: bool | None = None, checkpoints=None) -> Trained:
    """Build the model, fit, evaluate on the test subset, measure its inference cost; fill in the contract's metrics."""
    from bertpooled.run import cost

    cost.reset_peak_memory(prepared.device)
    # The teacher first: rebuilding it draws from torch's generator, which build_model then seeds for the student
    # (so a student with a teacher at alpha 1 trains bitwise as one without).
    distillation, teacher_hit = sources.distillation_of(prepared, progress)
    model = build_model(prepared).to(prepared.device)
    with prepared.phases.timed("train"):
        fitted = fit(model, prepared, on_epoch, progress, checkpoints, distillation)
    resumed_epochs = checkpoints.resume.epoch if checkpoints is not None and checkpoints.resume is not None else 0
    trained = evaluate_trained(prepared, model, fitted.history, fitted.precomputed, resumed_epochs)
    if distillation is not None:
        trained.metrics[cache_hit_metric("teacher")] = float(teacher_hit)
    return trained


def evaluate_trained(
    prepared: Prepared,
    model: Classifier,
    history: list[EpochStats],
    precomputed: bool = False,
    resumed_epochs: int = 0,
) -> Trained:
    """After training (alone, or in a seed group: bertpooled.run.grouped): evaluate on the test subset, measure the
    inference cost, fill in the contract's metrics. `model` is on the run's device; `phases` holds its train time;
    `precomputed`: whether training ran on precomputed training features (`Fitted.precomputed`)."""
    from bertpooled.run import cost

    cfg, phases, rt = prepared.config, prepared.phases, prepared.rt
    with phases.timed("eval"):
        net = trained_network(model, prepared)
        probs = predict_inputs(net, *model_inputs(prepared, "test"), rt.eval_batch, rt.device, rt.precision)
        metrics = evaluate(prepared.split("test").labels, probs)
    # Inference is timed in the precision the run trained and evaluated in (bf16 on a GPU by default).
    with phases.timed("cost"), rt.autocast():
        metrics.update(
            cost.measure(
                model,
                prepared.tokenizer,
                prepared.split("test").texts,
                cfg.max_len,
                rt.device,
                latency_texts=cfg.latency_texts,
                throughput_batches=cfg.throughput_batches,
            )
        )
    # time/train_s of a resumed run covers every epoch: the earlier ones were timed by the process that ran them
    # (their seconds travel in the checkpoint). Otherwise a resume after the last epoch logs about 0 s.
    phases.seconds["train"] += sum(h.seconds for h in history[:resumed_epochs])
    metrics.update(size_metrics(prepared, model, phases.seconds["train"]))
    metrics.update(cost.peak_memory_metrics(rt.device))
    if prepared.cached:
        metrics[cache_hit_metric("features")] = float(prepared.features_cache_hit)
    metrics[cache_hit_metric("train_features")] = float(precomputed)
    if prepared.val is not None:
        metrics["data/val_examples"] = len(prepared.val)
    return Trained(metrics, probs, model.cpu(), prepared.tokenizer, history)


def size_metrics(prepared: Prepared, model: Classifier, train_s: float) -> dict[str, float]:
    """Parameter counts, training throughput, data sizes and the token cache's hit of a trained run."""
    cfg = prepared.config
    head_total, head_trainable = count_parameters(model.head)
    if prepared.embeddings is not None:
        backbone_params, embedding_params, backbone_trainable = (
            prepared.embeddings.backbone_params,
            prepared.embeddings.table.numel(),
            0,
        )
    else:
        assert isinstance(model, EncoderLSTMClassifier), "a run without input embeddings has an encoder"
        backbone_params, backbone_trainable = count_parameters(model.encoder)
        embedding_params = backbone_of(model).get_input_embeddings().weight.numel()
    return {
        PARAMS_HEAD: head_total,
        PARAMS_HEAD_TRAINABLE: head_trainable,
        PARAMS_BACKBONE: backbone_params,
        "params/backbone_trainable": backbone_trainable,
        "params/embeddings": embedding_params,
        THROUGHPUT_TRAIN: len(sources.training_ids(prepared)) * cfg.epochs / max(train_s, 1e-9),
        "data/train_examples": len(prepared.train),
        "data/test_examples": len(prepared.split("test")),
        cache_hit_metric("tokens"): float(prepared.tokens_cache_hit),
    }
