"""Training: the one visible training loop (`train_epochs`, with a seed axis), a run alone through it (`fit`),
tf.data's shuffle order, and `train_and_evaluate` (build, fit, then `run.evaluate`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bertpooled.contract import cache_hit_metric
from bertpooled.model.build import Classifier
from bertpooled.model.heads import EncoderLSTMClassifier, FeatureHead
from bertpooled.run import checkpoint, precompute, runtime, sources
from bertpooled.run.evaluate import evaluate_epoch, evaluate_trained
from bertpooled.run.measure import EpochStats, Trained
from bertpooled.run.network import build_model, trained_network
from bertpooled.run.prepare import Prepared, model_inputs


@dataclass(frozen=True)
class Fitted:
    """What training hands back: each seed's per-epoch history (one seed for a run alone, S for a seed group)
    and whether it trained on the training rows' features computed once (`run.precompute.before_training`)."""

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
    ahead = precompute.before_training(net, getattr(net, "features", None), ids, lengths, prepared, progress)
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

    def saved(epoch: int, state: Trainee) -> None:
        if checkpoints is not None:
            checkpoints.write(epoch, model, state.optimizer, state.orders[0], state.histories[0])

    histories = train_epochs(
        trainee, prepared, (lambda s, stats: on_epoch(stats)) if on_epoch else None, saved, progress
    )
    return Fitted(histories, ahead is not None)


def train_epochs(
    trainee: Trainee,
    prepared: Prepared,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
    on_epoch_end: Callable[[int, Trainee], None] | None = None,
    progress: bool | None = None,
) -> list[list[EpochStats]]:
    """The one training loop: every epoch after the histories' last, each seed reading its own order of the rows.

    Seed s draws its epoch orders from `trainee.orders[s]` (`epoch_order`); a step runs one forward over the S
    batches, one backward of the sum of the S per-seed mean losses (so seed s's gradient is its own loss's) and
    one optimizer step. `on_epoch(s, stats)` per seed and finished epoch (`seconds`: the epoch's time / S, the
    seed's share), then `on_epoch_end(epoch, trainee)` once. Returns the histories, one per seed.
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
                stats = evaluate_epoch(stats, net, prepared)
            histories[s].append(stats)
            if on_epoch:
                on_epoch(s, stats)
        if on_epoch_end:
            on_epoch_end(epoch, trainee)
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
