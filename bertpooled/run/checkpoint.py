"""End-of-epoch checkpoints that resume a run exactly: trained weights, optimizer, RNG states, history.

Tensors go to safetensors and everything else to JSON, so loading one never unpickles an object; the
sha256 of both files is recorded with the run, and a checkpoint that does not match it is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from bertpooled.errors import BertpooledError

FORMAT = 1
TENSORS = "state.safetensors"
META = "meta.json"


def digest(folder: Path) -> str:
    """sha256 over the checkpoint's two files, in a fixed order."""
    h = hashlib.sha256()
    for name in (TENSORS, META):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def _trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Frozen tables and backbones are rebuilt from the backbone itself; only what training changes is saved.
    return {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def save(folder: Path, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         order: torch.Generator, history: list) -> str:
    """Write the state after `epoch` into `folder`; returns its digest."""
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
    meta = {"format": FORMAT, "epoch": epoch, "param_groups": optim["param_groups"],
            "history": [asdict(h) for h in history]}
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
        trained = {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}
        expected = {k for k, v in model.named_parameters() if v.requires_grad}
        if set(trained) != expected:
            raise BertpooledError("checkpoint does not fit this model (its trained weights differ): resume with the run's own config")
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


def load(folder: Path, expected_digest: str | None) -> State:
    """Read and verify a checkpoint folder; a missing, altered or unreadable one is a one-line error."""
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
        tensors = load_file(str(folder / TENSORS))
    except (ValueError, OSError, SafetensorError) as exc:
        raise BertpooledError(f"checkpoint in {folder} is unreadable ({exc}): start a new run instead") from None
    if meta.get("format") != FORMAT:
        raise BertpooledError(f"checkpoint format {meta.get('format')} is not {FORMAT}: resume with the version that wrote it")
    return State(int(meta["epoch"]), tensors, meta["param_groups"], meta["history"])


@dataclass
class Checkpointer:
    """What `train.fit` needs: a state to start from (or None) and where each finished epoch goes."""

    write: Callable[[int, torch.nn.Module, torch.optim.Optimizer, torch.Generator, list], None]
    resume: State | None = None
