"""A sweep's plan: the grid of modes x seeds resolved into children, each known by the sha256 of its resolved
config (tag `sweep/key`), every config resolved and checked before the parent run exists."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from bertpooled.config import MODE_ALIASES, Config, load_config
from bertpooled.contract import MAX_TAG_VALUE
from bertpooled.errors import BertpooledError, short_text

DEFAULT_MODES = ("basic", "pool")
DEFAULT_SEEDS = 3
# What one sweep parent can hold: its tags list the grid (MLflow keeps at most 8,000 characters a tag), its note
# names every seed, and each child is a run that compare-runs reads back. Checked before any config is built.
MAX_CHILDREN = 1000
# The grid's own axes: everything else in a child's config is the sweep's base, the same for all children.
GRID_FIELDS = ("mode", "seed", "pool")


@dataclass(frozen=True)
class Child:
    """One cell of the grid: its resolved config, its identity in the store, a readable label."""

    config: Config
    key: str
    label: str


def parse_modes(text: str | None) -> list[str]:
    """`basic,pool` -> ["basic", "pool"]; empty = the default; aliases resolved, repeats refused."""
    names = [m.strip().lower() for m in (text or "").split(",") if m.strip()] or list(DEFAULT_MODES)
    resolved = [MODE_ALIASES.get(m, m) for m in names]
    repeated = sorted({m for m in resolved if resolved.count(m) > 1})
    if repeated:
        raise BertpooledError(f"--modes {text!r} names {', '.join(repeated)} more than once: list each mode once")
    return resolved


def parse_seeds(count: str | None = None, seed_list: str | None = None) -> list[int]:
    """`--seeds N` means 0..N-1, `--seed-list 0,5` those seeds; neither = 0..2; empty text = not given."""
    count, seed_list = (count or "").strip(), (seed_list or "").strip()
    if count and seed_list:
        raise BertpooledError("--seeds and --seed-list both given: pass one (--seeds 3 means --seed-list 0,1,2)")
    if seed_list:
        try:
            seeds = [int(s) for s in seed_list.split(",") if s.strip()]
        except ValueError:
            raise BertpooledError(
                f"--seed-list {seed_list!r} is not a list of integers: write e.g. --seed-list 0,5"
            ) from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise BertpooledError(
                f"--seed-list {short_text(repr(seed_list))} must list distinct integers >= 0, e.g. --seed-list 0,5"
            )
        _check_grid_size(1, seeds)
        return seeds
    if not count:
        return list(range(DEFAULT_SEEDS))
    try:
        n = int(count)
    except ValueError:
        raise BertpooledError(f"--seeds {count!r} is not a number: pass how many seeds, e.g. --seeds 3") from None
    if n < 1:
        raise BertpooledError(f"--seeds {n} runs nothing: pass 1 or more, or --seed-list")
    if n > MAX_CHILDREN:  # before range(n) is built
        raise BertpooledError(
            f"--seeds {n:,} is more than one sweep holds ({MAX_CHILDREN:,} children): split it into "
            "sweeps of --seed-list ranges"
        )
    seeds = list(range(n))
    _check_grid_size(1, seeds)
    return seeds


def _check_grid_size(n_modes: int, seeds: Sequence[int]) -> None:
    """A grid the parent run can hold: at most MAX_CHILDREN children and a seed list that fits in one tag."""
    if n_modes * len(seeds) > MAX_CHILDREN:
        raise BertpooledError(
            f"{n_modes} mode(s) x {len(seeds):,} seeds is {n_modes * len(seeds):,} children, more than "
            f"one sweep holds ({MAX_CHILDREN:,}): split the seeds over several sweeps"
        )
    # The parent's note lists the seeds with ", " (see _parent_tags); 200 characters for the rest of the note.
    if len(", ".join(map(str, seeds))) + 200 > MAX_TAG_VALUE:
        raise BertpooledError(
            f"the {len(seeds):,} seeds do not fit in the sweep's tags ({MAX_TAG_VALUE:,} "
            "characters): pass fewer or smaller seeds"
        )


def child_key(config: Config) -> str:
    """The child's identity: sha256 of its whole resolved config (16 hex digits)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def plan(config: str | None, overrides: dict[str, object], modes: Sequence[str], seeds: Sequence[int]) -> list[Child]:
    """Resolve every child's config (defaults, then `config`, then `overrides`, then its mode and seed)."""
    for name in ("mode", "seed"):
        if str(overrides.get(name) or "").strip():
            raise BertpooledError(f"--set {name}=... does not apply to a sweep: use --{name}s (and --seed-list)")
    _check_grid_size(len(modes), seeds)
    children = []
    for seed in seeds:  # seed-major: an interrupted sweep has every mode for its first seeds
        for mode in modes:
            cfg = load_config(config or None, {**overrides, "mode": mode, "seed": seed})
            children.append(Child(cfg, child_key(cfg), f"{cfg.mode}-s{cfg.seed}"))
    return children


def base_config(children: Sequence[Child]) -> dict[str, object]:
    """What all children share, as the parent's `config/<field>` params (the grid's axes left out)."""
    return {k: ("" if v is None else v) for k, v in children[0].config.to_dict().items() if k not in GRID_FIELDS}
