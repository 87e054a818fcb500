"""Runs that build on runs: start from another run's model (`init_from`), learn from a teacher (`distill_from`).

The two-stage recipe every published token-reduction method uses (PoWER-BERT, LTP, TR-BERT, the
Length-Adaptive Transformer): fine-tune the unpooled model, then insert the reduction into *that* model and
train on, distilling from it. Here each stage is a tracked run: the student names the teacher's run, and logs
its URI, run id and weights digest (`init/*`, `teacher/*`), so the chain is visible in the UI and in compare-runs.

- `check`: before any run is created, each source is fetched and checked against the config (one line when it
  cannot seed it: another backbone, another head).
- `initial_state`: the source's weights for the run's model (layers a truncated student drops are left out).
- `teacher_outputs`: the teacher's logits (and last hidden states, for `distill_hidden`) on the training rows,
  computed once and cached like the token and feature caches, keyed by the teacher's weights digest and the
  rows' digest. The teacher never sees a validation or test review.
- `Distillation.loss`: alpha * BCE + (1 - alpha) * T^2 * KL(teacher || student), plus the hidden-state term.
- `unlabelled_split`: the unlabelled reviews (`unlabelled`) the teacher labels for the student: rows with the
  teacher's soft targets alone, appended to the training rows (`training_rows`; label -1, no BCE term).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from bertpooled import data
from bertpooled.data import tokens as tokens_
from bertpooled.errors import BertpooledError
from bertpooled.model import spec_checks
from bertpooled.model.pooling import PoolSpec, lengths_mask, pool_sequence_cls
from bertpooled.run.measure import data_digest_of, predict_logits

ROLES = {"init_from": "init", "distill_from": "teacher"}
TEACHER_CACHE_VERSION = "1"


def fetch(config, option: str, dest: Path):
    """The source model `config.<option>` names, downloaded under `dest` (None when the option is unset)."""
    from bertpooled.tracking.models import fetch_model

    ref = getattr(config, option)
    return fetch_model(ref, dest, option) if ref else None


def backbone_info(config):
    """The run's backbone (`backbone.inspect`); an adapted backbone named by its model URI is fetched into the cache
    first, and must have been adapted to this run's pooling (one line otherwise)."""
    import dataclasses

    from bertpooled.model import backbone
    from bertpooled.tracking.adapted import fetch_backbone, is_model_uri

    if not is_model_uri(config.model):
        return backbone.inspect(config.model)
    fetched = fetch_backbone(config.model)
    about = fetched.adaptation
    theirs = (about["pool"], about["pool_at"], bool(about.get("separate_cls", False)))
    if theirs != (config.pool, config.pool_at, config.separate_cls):
        cls = " separate_cls=true" if theirs[2] else ""
        raise BertpooledError(
            f"config: model={config.model} was adapted to pool={theirs[0]} pool_at={theirs[1]}{cls}, this run has "
            f"pool={config.pool} pool_at={config.pool_at}: run with the pooling it was adapted to, or use "
            f"model={about['adapted_from']}"
        )
    info = backbone.inspect(str(fetched.folder))
    return dataclasses.replace(info, name=config.model, adapted_from=str(about["adapted_from"]))


def check(config, info) -> None:
    """Each source model the config names exists and can seed it; one line naming the option otherwise."""
    with tempfile.TemporaryDirectory() as tmp:
        for option in ROLES:
            source = fetch(config, option, Path(tmp) / option)
            if source is not None:
                try:  # the file is input: every field within a training config's bounds (as at serving)
                    spec_checks.check_values(source.spec, {})
                    spec_checks.check_weights(source.spec, str(source.weights))
                except spec_checks.DamagedModel as exc:
                    raise BertpooledError(f"config: {option}={getattr(config, option)}: {exc}") from None
                check_compatible(config, info, source.spec, option)


def check_compatible(config, info, spec: dict[str, Any], option: str) -> None:
    """Whether a model of `spec` (its model_config.json) can start (`init_from`) or teach (`distill_from`) a run
    of `config` on the backbone `info`."""
    ref = getattr(config, option)

    def refuse(why: str, fix: str) -> None:
        raise BertpooledError(f"config: {option}={ref} {why}: {fix}")

    if spec.get("backbone") not in (config.model, info.adapted_from or config.model):
        refuse(
            f"was trained on backbone {spec.get('backbone')!r}, this run uses {config.model!r}",
            "pass a model of the same backbone (its tokens and weights must match)",
        )
    backbone_config = spec.get("backbone_config") or {}
    if option == "init_from" or config.distill_hidden:
        if spec.get("features") != "encoder":
            refuse(f"is a features={spec.get('features')} model", "pass a features=encoder model")
        for key, mine in (("hidden_size", info.hidden_size), ("vocab_size", info.vocab_size)):
            if backbone_config.get(key) != mine:
                refuse(f"has {key} {backbone_config.get(key)}, this backbone {mine}", "pass a model of this backbone")
    if option != "init_from":
        return
    for key in ("lstm_units", "lstm_bias"):
        if spec.get(key) != getattr(config, key):
            refuse(f"has {key}={spec.get(key)}, this run {getattr(config, key)}", f"set {key}={spec.get(key)}")
    theirs = PoolSpec.parse(spec.get("pool")) if spec.get("pool_at") == "output" else PoolSpec()
    mine = config.pool_spec if config.position.where == "output" else PoolSpec()
    if theirs.out_hidden(info.hidden_size) != mine.out_hidden(info.hidden_size):
        refuse(
            f"has a head on {theirs.out_hidden(info.hidden_size)} features, this run's reads "
            f"{mine.out_hidden(info.hidden_size)}",
            "pool the hidden axis at the output as the source did",
        )
    layers = int(backbone_config.get("num_hidden_layers", 0))
    needed = config.keep_layers or info.num_layers
    if layers < needed:
        refuse(f"has {layers} encoder layers, this run needs {needed}", f"set keep_layers={layers} or less")


def initial_state(source, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The source's weights for `model`: every parameter and buffer of `model` from the source, and nothing it
    lacks but the encoder layers a truncated student drops (`keep_layers`). One line on anything else."""
    state = source.state()
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise BertpooledError(
            f"config: init_from={source.uri} lacks {len(missing)} of this model's weights (e.g. {missing[0]}): "
            "pass a model of the same architecture"
        )
    for key, value in wanted.items():
        if state[key].shape != value.shape:
            raise BertpooledError(
                f"config: init_from={source.uri} has {key} of shape {tuple(state[key].shape)}, this model "
                f"{tuple(value.shape)}: pass a model of the same architecture"
            )
    return {k: state[k] for k in wanted}


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's outputs on every training row, in row order: logits (n,) float32, and its last hidden
    states (n, seq, hidden) float16 and real lengths when the student matches hidden states."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


def teacher_key(sha256: str, subset_digest: str, max_len: int, precision: str, hidden: bool) -> str:
    """Changes whenever anything that changes the teacher's outputs changes."""
    raw = "\0".join([TEACHER_CACHE_VERSION, sha256, subset_digest, str(max_len), precision, str(hidden)])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def teacher_outputs(source, prepared, progress: bool | None = None) -> tuple[TeacherOutputs, bool]:
    """(outputs, cache hit): the teacher's outputs on the training rows, from `<cache>/teacher/<key>` or computed
    in the run's precision on its device."""
    from bertpooled.data.features import STORED_DTYPE, compute, load_or_store
    from bertpooled.model.build import ModelSpec, from_state

    cfg, rt, toks = prepared.config, prepared.rt, training_tokens(prepared)
    want_hidden = cfg.distill_hidden > 0
    subset = rows_digest(prepared.imdb, training_ids(prepared))
    key = teacher_key(source.sha256, subset, cfg.max_len, rt.precision, want_hidden)

    def make() -> dict[str, torch.Tensor]:
        teacher = from_state(ModelSpec.from_json(source.spec), source.state()).to(rt.device)
        out = {
            "logits": predict_logits(
                teacher,
                torch.from_numpy(toks.ids),
                torch.from_numpy(toks.lengths),
                rt.eval_batch,
                rt.device,
                rt.precision,
            )
        }
        if want_hidden:
            states = compute(
                cast(Any, teacher).encoder,
                toks.ids,
                toks.lengths,
                rt.eval_batch,
                rt.device,
                progress,
                "teacher",
                rt.autocast,
            )
            out.update(hidden=states.hidden.to(STORED_DTYPE), lengths=states.lengths)
        return out

    path = data.cache_dir() / "teacher" / f"{key}.safetensors"
    meta = {"teacher": source.uri, "weights_sha256": source.sha256, "max_len": str(cfg.max_len)}
    stored, hit = load_or_store(make, path=path, rows=len(toks), rows_of=lambda t: len(t["logits"]), meta=meta)
    return TeacherOutputs(stored["logits"].float(), stored.get("hidden"), stored.get("lengths")), hit


@dataclass(frozen=True)
class Distillation:
    """The distillation loss of a run with a teacher: `alpha` * BCE on the labels + (1 - `alpha`) * T^2 *
    KL(teacher || student) on the logits at temperature T (Hinton et al.; the binary case of the softmax), plus
    `hidden_weight` * MSE between the student's last hidden states and the teacher's pooled to its length."""

    logits: torch.Tensor
    """The teacher's logit for every training row, on the run's device."""
    alpha: float
    temperature: float
    hidden_weight: float = 0.0
    hidden: torch.Tensor | None = None
    """The teacher's last hidden states pooled as the student pools (on the run's device), for the MSE term."""
    unlabelled: bool = False
    """Some training rows have no label (-1, `unlabelled`): the BCE term is the mean over the labelled rows of a
    batch (0 in a batch of unlabelled rows alone); without them the loss is computed exactly as it always was."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, tap=None) -> torch.Tensor:
        """The mean loss of one batch: student `logits` (batch,), `labels`, the batch's training `rows`; `tap`
        holds the student's last hidden states and mask of this forward pass (the hidden-state term)."""
        if self.unlabelled:
            known = (labels >= 0).to(logits.dtype)
            each = F.binary_cross_entropy_with_logits(logits, labels.clamp_min(0), reduction="none")
            ce = (each * known).sum() / known.sum().clamp_min(1.0)
        else:
            ce = F.binary_cross_entropy_with_logits(logits, labels)
        t = self.temperature
        teacher = self.logits[rows] / t
        target = torch.sigmoid(teacher)
        # KL(p_t || p_s) of the two Bernoulli distributions: cross-entropy minus the teacher's own entropy.
        kl = F.binary_cross_entropy_with_logits(logits / t, target) - F.binary_cross_entropy_with_logits(
            teacher, target
        )
        loss = self.alpha * ce + (1 - self.alpha) * t * t * kl
        if self.hidden_weight and self.hidden is not None and tap is not None:
            student, mask = tap.last
            goal = self.hidden[rows][:, : student.shape[1]].to(student.dtype)
            weights = mask.unsqueeze(-1).to(student.dtype)
            mse = ((student - goal) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)
            loss = loss + self.hidden_weight * mse.float()
        return loss


def pooled_teacher_states(outputs: TeacherOutputs, config) -> torch.Tensor:
    """The teacher's last hidden states pooled to the student's length: the student's window, once per stage
    inside the encoder (at the output the student's own states are compared before output pooling)."""
    assert outputs.hidden is not None and outputs.lengths is not None
    hidden = outputs.hidden
    mask = lengths_mask(outputs.lengths.long(), hidden.shape[1])
    if config.position.where == "layer":
        for _ in config.position.layers:
            hidden, mask = pool_sequence_cls(hidden.float(), mask, config.pool_spec, config.separate_cls)
    return hidden.to(torch.float16)


class HiddenTap(torch.nn.Module):
    """The student's forward pass, keeping its last hidden states and mask for the hidden-state term."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, mask = self.model.encoder(ids, lengths_mask(lengths, ids.shape[1]))
        self.last = (hidden, mask)
        return self.model.classify(hidden, mask.sum(1))


def fetch_sources(config) -> dict[str, Any]:
    """The tracked models the config builds on (`init_from`, `distill_from`), their weights read into memory."""
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for option in ROLES:
            source = fetch(config, option, Path(tmp) / option)
            if source is not None:
                found[option] = source.loaded()
    return found


def distillation_of(prepared, progress: bool | None = None) -> tuple[Any, bool]:
    """(the distillation loss, teacher cache hit) of a run with `distill_from`, else (None, False). The teacher's
    outputs on the training rows are computed (or read from the cache) here, timed as the `teacher` phase so
    training time can be read with and without the teacher's share."""
    source = prepared.sources.get("distill_from")
    if source is None:
        return None, False
    cfg, rt = prepared.config, prepared.rt
    with prepared.phases.timed("teacher"):
        outputs, hit = teacher_outputs(source, prepared, progress)
        hidden = pooled_teacher_states(outputs, cfg).to(rt.device) if cfg.distill_hidden else None
    loss = Distillation(
        outputs.logits.to(rt.device),
        cfg.distill_alpha,
        cfg.distill_temperature,
        cfg.distill_hidden,
        hidden,
        unlabelled=prepared.unlabelled is not None,
    )
    return loss, hit


UNSUP_SOURCE = "train/unsup"
OUTSIDE_SOURCE = "train outside the labelled subset (labels dropped)"


def unlabelled_split(config, imdb, *labelled) -> tuple[data.Split | None, str]:
    """(the `config.unlabelled` unlabelled reviews, where they come from), or (None, "") when it is 0.

    IMDB's `train/unsup` reviews where the data has them; else the training reviews that none of the `labelled`
    splits (the run's training and validation rows) holds, their labels replaced by -1. Never a test review.
    Drawn without replacement, seeded by `data_seed` (the same rows for every seed of a study), kept in id order.
    """
    n = config.unlabelled
    if not n:
        return None, ""
    if imdb.unsup is not None and len(imdb.unsup):
        pool, source = imdb.unsup, UNSUP_SOURCE
    else:
        taken = {rid for split in labelled if split is not None for rid in split.ids}
        pool = imdb.train.take(np.array([rid not in taken for rid in imdb.train.ids], dtype=bool))
        source = OUTSIDE_SOURCE
    if n > len(pool):
        raise BertpooledError(
            f"config: unlabelled={n} is more than the {len(pool):,} unlabelled reviews this data has ({source}): "
            f"use unlabelled={len(pool)} or less"
        )
    chosen = np.sort(np.random.default_rng(config.data_seed).choice(len(pool), size=n, replace=False))
    rows = pool.take(chosen)
    return data.Split(rows.ids, rows.texts, np.full(n, -1, dtype=np.int64)), source


def rows_digest(imdb, ids: list[str]) -> str:
    """The digest of these rows of the data: `data_digest_of` over the labelled data's digest, and the unlabelled
    reviews' too when a row is one of them (rows of the labelled data keep the keys they always had)."""
    if imdb.unsup_digest and any(rid.startswith(UNSUP_SOURCE + "/") for rid in ids):
        return data_digest_of(imdb.digest + imdb.unsup_digest, ids)
    return data_digest_of(imdb.digest, ids)


def training_ids(prepared) -> list[str]:
    """The ids of every row the run trains on: its labelled training rows, then its unlabelled ones."""
    return prepared.train.ids + (prepared.unlabelled.ids if prepared.unlabelled is not None else [])


def training_tokens(prepared) -> tokens_.Tokens:
    """The token ids of every training row (`training_ids`' order)."""
    toks = prepared.train_tokens
    extra = prepared.unlabelled_tokens
    if extra is None:
        return toks
    return tokens_.Tokens(np.concatenate([toks.ids, extra.ids]), np.concatenate([toks.lengths, extra.lengths]))


def training_inputs(prepared, labelled: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the student trains on: the `labelled` rows' (ids, lengths), then the unlabelled rows' token ids."""
    if prepared.unlabelled_tokens is None:
        return labelled
    toks = training_tokens(prepared)
    return torch.from_numpy(toks.ids), torch.from_numpy(toks.lengths)


def training_labels(prepared) -> np.ndarray:
    """The label of every training row as float32 (`training_ids`' order): 0/1, and -1 for an unlabelled row."""
    labels = prepared.train.labels.astype(np.float32)
    if prepared.unlabelled is None:
        return labels
    return np.concatenate([labels, np.full(len(prepared.unlabelled), -1.0, dtype=np.float32)])


__all__ = [
    "ROLES",
    "Distillation",
    "HiddenTap",
    "TeacherOutputs",
    "backbone_info",
    "check",
    "check_compatible",
    "distillation_of",
    "fetch",
    "fetch_sources",
    "initial_state",
    "pooled_teacher_states",
    "rows_digest",
    "teacher_key",
    "teacher_outputs",
    "training_ids",
    "training_inputs",
    "training_labels",
    "training_tokens",
    "unlabelled_split",
]
