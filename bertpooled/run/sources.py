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
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from bertpooled import data
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


def check(config, info) -> None:
    """Each source model the config names exists and can seed it; one line naming the option otherwise."""
    with tempfile.TemporaryDirectory() as tmp:
        for option in ROLES:
            source = fetch(config, option, Path(tmp) / option)
            if source is not None:
                try:  # the file is input: every field within a training config's bounds (as at serving)
                    spec_checks.check_values(source.spec, {})
                except spec_checks.DamagedModel as exc:
                    raise BertpooledError(f"config: {option}={getattr(config, option)}: {exc}") from None
                check_compatible(config, info, source.spec, option)


def check_compatible(config, info, spec: dict[str, Any], option: str) -> None:
    """Whether a model of `spec` (its model_config.json) can start (`init_from`) or teach (`distill_from`) a run
    of `config` on the backbone `info`."""
    ref = getattr(config, option)

    def refuse(why: str, fix: str) -> None:
        raise BertpooledError(f"config: {option}={ref} {why}: {fix}")

    if spec.get("backbone") != config.model:
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

    cfg, rt, toks = prepared.config, prepared.rt, prepared.train_tokens
    want_hidden = cfg.distill_hidden > 0
    subset = data_digest_of(prepared.imdb.digest, prepared.train.ids)
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

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, tap=None) -> torch.Tensor:
        """The mean loss of one batch: student `logits` (batch,), `labels`, the batch's training `rows`; `tap`
        holds the student's last hidden states and mask of this forward pass (the hidden-state term)."""
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
        outputs.logits.to(rt.device), cfg.distill_alpha, cfg.distill_temperature, cfg.distill_hidden, hidden
    )
    return loss, hit


__all__ = [
    "ROLES",
    "Distillation",
    "HiddenTap",
    "TeacherOutputs",
    "check",
    "check_compatible",
    "distillation_of",
    "fetch",
    "fetch_sources",
    "initial_state",
    "pooled_teacher_states",
    "teacher_key",
    "teacher_outputs",
]
