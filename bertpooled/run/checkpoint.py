"""End-of-epoch checkpoints that resume a run exactly: trained weights, optimizer, RNG states, history.

Tensors go to safetensors and everything else to JSON, so loading one never unpickles an object. A checkpoint
verifies itself: its JSON holds the sha256 of its tensors and its identity (the run it belongs to, the seed, a
digest of the run's config), all checked on resume whatever the run's tags say; the sha256 of both files is
also recorded with the run (tag `checkpoint/sha256`) and checked when present. So deleting the tag and altering
the weights, or copying another run's checkpoint with its tag, is refused. (Whoever can rewrite both files can
rewrite the digests inside too: against deliberate tampering the tag, kept in the tracking store apart from the
artifacts, is the check; against corruption and mix-ups the checkpoint needs nothing outside itself.)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from bertpooled.errors import BertpooledError
from bertpooled.model.grouped import SeedGroup, head_of

FORMAT = 2  # 2: the tensors' sha256 and the identity inside meta.json; 1 had them only in the run's tags
READABLE_FORMATS = (1, 2)
TENSORS = "state.safetensors"
META = "meta.json"
# Config fields left out of a checkpoint's config digest: where the data lives may change between attempts
# (its content is checked against the run's data digest instead).
NOT_IDENTITY = ("data",)


def identity(run_id: str, config: dict) -> dict:
    """Who a checkpoint belongs to: the run, its seed and a sha256 of its config (but `NOT_IDENTITY`)."""
    kept = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    return {
        "run_id": run_id,
        "seed": config.get("seed"),
        "config_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest(),
    }


def digest(folder: Path) -> str:
    """sha256 over the checkpoint's two files, in a fixed order."""
    h = hashlib.sha256()
    for name in (TENSORS, META):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def _trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Frozen tables and backbones are rebuilt from the backbone itself; only what training changes is saved.
    return {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def save(
    folder: Path,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    history: list,
    owner: dict | None = None,
) -> str:
    """Write the state after `epoch` into `folder`, with its tensors' digest and `owner` (see `identity`) inside;
    returns the digest of both files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _trained(model)
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous()
    tensors["rng/order"] = order.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    save_file(tensors, str(folder / TENSORS))
    meta = {
        "format": FORMAT,
        "epoch": epoch,
        "param_groups": optim["param_groups"],
        "history": [asdict(h) for h in history],
        "identity": owner or {},
        "tensors_sha256": hashlib.sha256((folder / TENSORS).read_bytes()).hexdigest(),
    }
    meta["meta_sha256"] = _meta_digest(meta)
    (folder / META).write_text(json.dumps(meta, indent=1))
    return digest(folder)


@dataclass
class State:
    """A checkpoint read back and verified; `restore` puts it into a freshly built model and optimizer."""

    epoch: int
    tensors: dict[str, torch.Tensor]
    param_groups: list
    history: list[dict]

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, order: torch.Generator) -> None:
        trained = {k[len("model/") :]: v for k, v in self.tensors.items() if k.startswith("model/")}
        expected = {k for k, v in model.named_parameters() if v.requires_grad}
        if set(trained) != expected:
            raise BertpooledError(
                "checkpoint does not fit this model (its trained weights differ): resume with the run's own config"
            )
        device = next(model.parameters()).device
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in trained.items():
                params[name].copy_(value.to(device))
        state: dict = {}
        for key, value in self.tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                # Adam keeps `step` on the CPU (or with the params when fused); put each where it came from.
                state.setdefault(int(index), {})[name] = value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": self.param_groups})
        order.set_state(self.tensors["rng/order"])
        torch.set_rng_state(self.tensors["rng/torch"])


def load(folder: Path, expected_digest: str | None, owner: dict | None = None) -> State:
    """Read and verify a checkpoint folder; a missing, altered, unreadable or foreign one is a one-line error.

    `expected_digest` is the run's tag (None when it is missing); `owner` is what `identity` gives for the run
    being resumed. A format-2 checkpoint is checked against its own tensors' digest and `owner` whatever the tag
    says; a format-1 one (no digest inside) only with the tag.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / TENSORS).is_file() or not (folder / META).is_file():
        raise BertpooledError(f"checkpoint in {folder} is incomplete: the run finished no epoch to resume from")
    if expected_digest and digest(folder) != expected_digest:
        raise BertpooledError(
            "checkpoint does not match the sha256 recorded with its run (altered or corrupt): refusing to load it; "
            "start a new run instead"
        )
    try:
        meta = json.loads((folder / META).read_text())
        if not isinstance(meta, dict):
            raise ValueError("meta.json holds no mapping")
        _verify_itself(meta, folder, expected_digest, owner)
        tensors = load_file(str(folder / TENSORS))
    except (ValueError, OSError, SafetensorError) as exc:
        raise BertpooledError(f"checkpoint in {folder} is unreadable ({exc}): start a new run instead") from None
    return State(int(meta["epoch"]), tensors, meta["param_groups"], meta["history"])


def _meta_digest(meta: dict) -> str:
    """sha256 of meta.json's content but this digest itself, in a canonical form."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _verify_itself(meta: dict, folder: Path, expected_digest: str | None, owner: dict | None) -> None:
    """The checks a checkpoint carries: its format, its tensors' digest, whose it is."""
    if meta.get("format") not in READABLE_FORMATS:
        raise BertpooledError(
            f"checkpoint format {meta.get('format')} is not {FORMAT}: resume with the version that wrote it"
        )
    if meta["format"] == 1:
        if not expected_digest:
            raise BertpooledError(
                "checkpoint has no digest of its own (format 1) and its run records none (tag "
                "checkpoint/sha256 missing): it cannot be verified; start a new run instead"
            )
        return
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise BertpooledError(
            "checkpoint meta.json does not match the sha256 written inside it (altered or corrupt): "
            "refusing to load it; start a new run instead"
        )
    inside = meta.get("tensors_sha256")
    if not inside or hashlib.sha256((folder / TENSORS).read_bytes()).hexdigest() != inside:
        raise BertpooledError(
            "checkpoint weights do not match the sha256 written inside it (altered or corrupt): "
            "refusing to load them; start a new run instead"
        )
    mine = meta.get("identity") or {}
    for key, what in (("run_id", "run"), ("seed", "seed"), ("config_sha256", "config")):
        if owner is not None and mine.get(key) != owner.get(key):
            raise BertpooledError(
                f"checkpoint belongs to another {what} ({key} {str(mine.get(key))[:16]!s}, this run's is "
                f"{str(owner.get(key))[:16]!s}): it was copied from another run; refusing it, start a new run instead"
            )


class CheckpointSink(Protocol):
    """Where a run's checkpoints are kept (`tracking.sink.Sink.checkpoint`): a folder `save` wrote, its epoch and
    its tensors' sha256."""

    def checkpoint(self, folder: Path, epoch: int, sha256: str) -> None: ...


@dataclass
class Checkpointer:
    """What `fit.fit` needs: a state to start from (or None) and where each finished epoch goes."""

    write: Callable[[int, torch.nn.Module, torch.optim.Optimizer, torch.Generator, list], None]
    resume: State | None = None

    @classmethod
    def to_sink(cls, sink: CheckpointSink, owner: dict, resume: State | None = None) -> Checkpointer:
        """Each finished epoch saved with the run's `owner` identity (`identity`) and handed to `sink`."""
        return cls(functools.partial(save_to, sink, owner), resume)


def save_to(
    sink: CheckpointSink,
    owner: dict,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    history: list,
) -> None:
    """One epoch's checkpoint written to a temporary folder (`save`) and handed to `sink.checkpoint`."""
    with tempfile.TemporaryDirectory() as tmp:
        sha256 = save(Path(tmp), epoch, model, optimizer, order, history, owner)
        sink.checkpoint(Path(tmp), epoch, sha256)


def seed_optimizer_state(optimizer: torch.optim.Optimizer, group: SeedGroup, s: int) -> dict:
    """Seed s's part of a seed group's Adam state, laid out as `torch.optim.Adam(model.head.parameters())
    .state_dict()` of a run trained alone (state indexed 0.. in LSTMHead's parameter order; `step` shared, as every
    seed steps)."""
    full = optimizer.state_dict()
    stacked = [p for _, p in group.head.head_parameters()]
    index = {id(p): i for i, p in enumerate(optimizer.param_groups[0]["params"])}
    state = {}
    for i, param in enumerate(stacked):
        entry = full["state"].get(index[id(param)])
        if entry is None:
            continue
        state[i] = {k: (v.clone() if k == "step" or v.dim() == 0 else v[s].clone()) for k, v in entry.items()}
    groups = [{**full["param_groups"][0], "params": list(range(len(stacked)))}]
    return {"state": state, "param_groups": groups}


def seed_snapshot(
    group: SeedGroup, optimizer: torch.optim.Optimizer, s: int
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Seed s of a seed group now, as `fit` alone would hold it: its model (trained weights written in) and an Adam
    over its head with its state: what `save` / a `Checkpointer.write` takes for that seed."""
    model = group.seed_model(s)
    head = head_of(model)
    defaults = optimizer.defaults
    seed_opt = torch.optim.Adam(head.parameters(), lr=defaults["lr"], eps=defaults["eps"], fused=defaults.get("fused"))
    seed_opt.load_state_dict(seed_optimizer_state(optimizer, group, s))
    return model, seed_opt


class Training(Protocol):
    """What a checkpoint reads of the training loop's state (`run.fit.Trainee`): the optimizer and each seed's
    batch-order generator."""

    optimizer: torch.optim.Optimizer
    orders: list[torch.Generator]


class SeedSnapshots:
    """A seed group's checkpoints, kept while it trains (its runs are created after): the training loop's
    `on_epoch_end`. After epoch e, `kept[s][e - 1]` is what `Checkpointer.write` takes for seed s alone: (a module
    holding that epoch's head, its Adam, its batch-order generator)."""

    def __init__(self, group: SeedGroup) -> None:
        self.group = group
        self.kept: list[list[tuple[nn.Module, torch.optim.Optimizer, torch.Generator]]] = [[] for _ in group.seeds]

    def __call__(self, epoch: int, trainee: Training) -> None:
        for s, kept in enumerate(self.kept):
            model, seed_optimizer = seed_snapshot(self.group, trainee.optimizer, s)
            holder = nn.Module()  # what `save` reads: the trainable parameters, named as in the model
            holder.head = copy.deepcopy(model.head)
            order = torch.Generator()
            order.set_state(trainee.orders[s].get_state())
            kept.append((holder, seed_optimizer, order))
