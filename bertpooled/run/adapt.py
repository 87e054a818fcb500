"""A pooled backbone as a model of its own (issue 29, item 6): the small, CPU-sized form of "a language model with
pooling layers".

Funnel-Transformer is pretrained with its pooling; a pretrained BERT with pooling inserted cold is not. Here the
backbone is adapted to its pooling once, on unlabelled reviews, before any task: the student (the backbone with
the pooling inside, every weight trainable) learns to give the last hidden states the unpooled backbone gives,
pooled to the student's length (the windows the student pools with, once per stage; [CLS] apart with
`separate_cls`): a masked MSE, the hidden-state term of `distill_hidden` without a task. No label is read, and
no test review: the reviews are IMDB's `train/unsup` where the data has them, else training reviews with their
labels dropped. The result is logged as an MLflow model (tracking/adapted.py) that later runs take as `model:`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import tokens
from bertpooled.errors import BertpooledError
from bertpooled.model import backbone
from bertpooled.model.pooling import lengths_mask, pool_sequence_cls
from bertpooled.run import frozen, prepare, runtime
from bertpooled.run.measure import Phases
from bertpooled.run.sources import UNSUP_SOURCE, rows_digest

if TYPE_CHECKING:
    from bertpooled.tracking.registry import Target

TRAIN_SOURCE = "train (labels dropped)"


@dataclass(frozen=True)
class AdaptPlan:
    """An adaptation, checked before any run exists: the pooling (a `Config` of mode=pool, features=encoder, so
    every rule of a training run's pooling holds), how many reviews, how long, how fast."""

    config: Config
    reviews: int = 8000
    """Unlabelled reviews to adapt on (a further `held_out` are kept aside to measure the match)."""
    held_out: int = 256
    epochs: int = 1
    lr: float = 1e-4

    def check(self) -> backbone.BackboneInfo:
        """Every bound and the backbone, data and device checks of a run: one-line errors, nothing created."""
        for name, value, ok in (
            ("reviews", self.reviews, self.reviews >= 1),
            ("held_out", self.held_out, self.held_out >= 1),
            ("epochs", self.epochs, self.epochs >= 1),
            ("lr", self.lr, math.isfinite(self.lr) and self.lr > 0),
        ):
            if not ok:
                raise BertpooledError(f"adapt: --{name.replace('_', '-')} {value} is not valid: use a positive number")
        cfg = self.config
        if cfg.position.where != "layer" or cfg.pool_spec.is_identity or cfg.pool_spec.is_topk:
            raise BertpooledError(
                f"adapt: pool={cfg.pool} at pool_at={cfg.pool_at} is no window pooling inside the encoder: adapt "
                "to an avg or max window at layer:K (e.g. --pool avg:2x1 --pool-at layer:2)"
            )
        if cfg.keep_layers:
            raise BertpooledError("adapt: keep_layers truncates rather than pools: adapt with keep_layers=0")
        return prepare.check(cfg)


@dataclass(frozen=True)
class Adapted:
    """What an adaptation made: the adapted backbone (a `PreTrainedModel` of the same architecture), its match."""

    model: object
    history: list[dict[str, float]]
    """Per epoch: `adapt/loss` (mean over the training rows) and `adapt/held_out_mse`."""
    before_mse: float
    """The held-out MSE of the cold-inserted pooling, before any step."""
    source: str
    digest: str
    """sha256 over the data's digest and the adapted-on rows' ids."""
    rows: int
    phases: Phases


def reviews_for(plan: AdaptPlan, imdb: data.Imdb) -> tuple[data.Split, data.Split, str]:
    """(adaptation rows, held-out rows, where they come from): `train/unsup`, else training reviews with their labels
    dropped; never a test review. Drawn without replacement, seeded by the config's `data_seed`."""
    pool, source = (
        (imdb.unsup, UNSUP_SOURCE) if imdb.unsup is not None and len(imdb.unsup) else (imdb.train, TRAIN_SOURCE)
    )
    need = plan.reviews + plan.held_out
    if need > len(pool):
        raise BertpooledError(
            f"adapt: --reviews {plan.reviews} and --held-out {plan.held_out} need {need:,} reviews, and this data has "
            f"{len(pool):,} ({source}): use fewer"
        )
    chosen = np.random.default_rng(plan.config.data_seed).choice(len(pool), size=need, replace=False)
    return pool.take(np.sort(chosen[: plan.reviews])), pool.take(np.sort(chosen[plan.reviews :])), source


def teacher_goal(teacher, ids: torch.Tensor, mask: torch.Tensor, config: Config) -> torch.Tensor:
    """The unpooled backbone's last hidden states pooled to the student's length, once per stage."""
    with torch.no_grad():
        hidden = teacher(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        for _ in config.position.layers:
            hidden, mask = pool_sequence_cls(hidden, mask, config.pool_spec, config.separate_cls)
    return hidden


def masked_mse(student: torch.Tensor, goal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean squared difference over the real positions and every feature."""
    weights = mask.unsqueeze(-1).to(student.dtype)
    return ((student - goal) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def held_out_mse(student, teacher, toks: tokens.Tokens, config: Config, rt: runtime.Runtime) -> float:
    """The student's mean masked MSE to the teacher's pooled states on the held-out rows (evaluation mode)."""
    student.eval()
    total, weight = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(toks), rt.eval_batch):
            ids = torch.from_numpy(toks.ids[begin : begin + rt.eval_batch]).to(rt.device)
            mask = lengths_mask(
                torch.from_numpy(toks.lengths[begin : begin + rt.eval_batch]).to(rt.device), ids.shape[1]
            )
            with rt.autocast():
                goal = teacher_goal(teacher, ids, mask, config)
                hidden, out_mask = student(ids, mask)
            total += float(masked_mse(hidden.float(), goal, out_mask)) * len(ids)
            weight += len(ids)
    return total / max(weight, 1)


def adapt(
    plan: AdaptPlan,
    info: backbone.BackboneInfo,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    imdb: data.Imdb | None = None,
) -> Adapted:
    """Adapt the backbone to the plan's pooling: Adam on every weight, the masked MSE to the unpooled backbone's
    pooled states, in the run's precision; the held-out match before the first step and after every epoch."""
    cfg = plan.config
    rt = runtime.Runtime.resolve(cfg).start()
    runtime.seed_everything(cfg.seed)
    phases = Phases()
    with phases.timed("data"):
        imdb = imdb or data.load_imdb(cfg.data, progress=progress)
        rows, held, source = reviews_for(plan, imdb)
    with phases.timed("tokenize"):
        tokenizer = backbone.load_tokenizer(info)
        made = {}
        for name, split in (("adapt", rows), ("adapt-held-out", held)):
            key = tokens.cache_key(backbone.tokenizer_fingerprint(tokenizer), digest_of(imdb, split), name, cfg.max_len)
            made[name], _ = tokens.load_or_tokenize(
                tokenizer, split.texts, cfg.max_len, key=key, cache_dir=data.cache_dir(), progress=progress, desc=name
            )
    teacher: Any = backbone.load_model(info)
    teacher = teacher.to(rt.device)
    student = frozen.encoder_for(cfg, copy.deepcopy(teacher).requires_grad_(True)).to(rt.device)
    before = held_out_mse(student, teacher, made["adapt-held-out"], cfg, rt)
    optimizer = torch.optim.Adam(student.parameters(), lr=plan.lr, fused=rt.device.type in ("cpu", "cuda"))
    order = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, plan.epochs + 1):
        with phases.timed("train"):
            loss = _epoch(
                student, teacher, optimizer, made["adapt"], order, cfg, rt, f"adapt {epoch}/{plan.epochs}", progress
            )
        stats = {
            "adapt/loss": loss,
            "adapt/held_out_mse": held_out_mse(student, teacher, made["adapt-held-out"], cfg, rt),
        }
        history.append(stats)
        if on_epoch:
            on_epoch(epoch, stats)
    return Adapted(student.model, history, before, source, digest_of(imdb, rows), len(rows), phases)


def digest_of(imdb: data.Imdb, split: data.Split) -> str:
    """The rows' digest (`sources.rows_digest`: the unlabelled reviews' digest included for `train/unsup` rows)."""
    return rows_digest(imdb, split.ids)


def _epoch(student, teacher, optimizer, toks, order, cfg: Config, rt, desc: str, progress) -> float:
    """One pass over the rows in a seeded order; the mean loss."""
    student.train()
    perm = torch.randperm(len(toks), generator=order)
    ids_all, lengths_all = torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths)
    total = torch.zeros((), device=rt.device)
    bar = tqdm(
        range(0, len(toks), cfg.batch_size),
        desc=desc,
        unit="batch",
        leave=False,
        disable=None if progress is None else not progress,
    )
    for begin in bar:
        idx = perm[begin : begin + cfg.batch_size]
        ids = ids_all[idx].to(rt.device)
        mask = lengths_mask(lengths_all[idx].to(rt.device), ids.shape[1])
        with rt.autocast():
            goal = teacher_goal(teacher, ids, mask, cfg)
            hidden, out_mask = student(ids, mask)
        loss = masked_mse(hidden.float(), goal, out_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
    return float(total) / len(toks)


__all__ = ["AdaptPlan", "Adapted", "adapt", "masked_mse", "reviews_for", "teacher_goal"]


def plan_params(plan: AdaptPlan) -> dict[str, object]:
    """The adaptation's settings as `adapt/*` params."""
    cfg = plan.config
    fields = ("model", "pool", "pool_at", "separate_cls", "max_len", "batch_size", "seed", "data_seed", "precision")
    return {
        **{f"adapt/{k}": getattr(cfg, k) for k in fields},
        **{f"adapt/{k}": getattr(plan, k) for k in ("reviews", "held_out", "epochs", "lr")},
    }


def adaptation_of(cfg: Config, result: Adapted) -> dict[str, object]:
    """`adaptation.json`: what the backbone was adapted to, from what, on what, and how closely it matches."""
    return {
        "adapted_from": cfg.model,
        "pool": cfg.pool,
        "pool_at": cfg.pool_at,
        "separate_cls": cfg.separate_cls,
        "max_len": cfg.max_len,
        "reviews": result.rows,
        "data_source": result.source,
        "data_digest": result.digest,
        "held_out_mse_before": result.before_mse,
        "held_out_mse_after": result.history[-1]["adapt/held_out_mse"],
    }


@dataclass(frozen=True)
class AdaptOutcome:
    """Where an adaptation landed: its run, the backbone's model URI (a later run's `model:`), its registration."""

    run_id: str
    model_uri: str
    registered: str
    """`models:/<name>@<alias>` or `models:/<name>/<version>` when registered, else ""."""
    before_mse: float
    after_mse: float


def run_adaptation(
    plan: AdaptPlan, register: Target | None = None, log=print, progress: bool | None = None
) -> AdaptOutcome:
    """Check the plan, then adapt as one MLflow run (kind `adapt`): the plan and where the reviews came from as
    params, the match per epoch as metrics, the backbone as the model `backbone`, registered when asked."""
    from bertpooled.contract import KIND_ADAPT, KIND_TAG
    from bertpooled.tracking import adapted as tracked
    from bertpooled.tracking import registry
    from bertpooled.tracking import runs as tracking
    from bertpooled.tracking.probe import check_tracking_reachable
    from bertpooled.tracking.provenance import code_provenance

    check_tracking_reachable()
    tracking.check_experiment_name()
    info = plan.check()
    cfg = plan.config
    imdb = data.load_imdb(cfg.data, progress=progress)
    reviews_for(plan, imdb)  # enough reviews: known before the run exists
    name = f"adapt-{cfg.pool}@{cfg.pool_at}{'-sepcls' if cfg.separate_cls else ''}-s{cfg.seed}"
    note = (
        f"{cfg.model} adapted to pool={cfg.pool} at {cfg.pool_at} on {plan.reviews:,} unlabelled reviews by matching "
        "the unpooled backbone's last hidden states (bertpooled adapt)"
    )
    with tracking.training_run(name, {KIND_TAG: KIND_ADAPT, "pool": cfg.pool, "backbone": cfg.model}, note) as run:

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            tracking.log_metrics(stats, step=epoch)
            log(
                f"adapt epoch {epoch}/{plan.epochs}: loss {stats['adapt/loss']:.4f}, "
                f"held-out MSE {stats['adapt/held_out_mse']:.4f}"
            )

        tracking.log_params({**plan_params(plan), **code_provenance()})
        result = adapt(plan, info, on_epoch, progress, imdb)
        tracking.log_params({"adapt/data_source": result.source, "adapt/data_digest": result.digest})
        tracking.log_metrics(
            {
                "adapt/held_out_mse_before": result.before_mse,
                **{f"time/{k}_s": v for k, v in result.phases.seconds.items()},
            }
        )
        uri = tracked.log_backbone(result.model, backbone.load_tokenizer(info), adaptation_of(cfg, result))
        registered = registry.register(uri, register, run.info.run_id).uri if register else ""
        return AdaptOutcome(
            run.info.run_id,
            f"runs:/{run.info.run_id}/{tracked.BACKBONE_NAME}",
            registered,
            result.before_mse,
            result.history[-1]["adapt/held_out_mse"],
        )
