"""Which of a sweep's children train together as a seed group (`sweep --group-seeds`, issue 13), and when each
starts; the training itself is bertpooled.run.grouped's (each seed still its own ordinary run).

The children to run whose configs differ only in `seed` (and that `grouped.can_group` allows, and that do not
continue a checkpointed run) form a group. A group's first child to start trains the whole group
(`grouped.train_seeds`) before any of its runs exists; then each seed goes through the ordinary run path with a
`grouped.GroupedSeedPipeline`, tagged `sweep/group_size` (S) and with the note below.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import torch

from bertpooled.config import Config
from bertpooled.contract import SWEEP_GROUP_NOTE_TAG, SWEEP_GROUP_SIZE_TAG
from bertpooled.run import grouped, runtime

NOTE = (
    "trained in one loop with the other seeds of its config (--group-seeds): time/train_s and time/epoch_s are "
    "this seed's 1/S share of the group's training (time/group_train_s); checkpoints logged after training"
)


def group_key(config: Config) -> str | None:
    """What a seed group shares: the whole config but its seed; None when the config trains alone."""
    if not grouped.can_group(config):
        return None
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"}, sort_keys=True, default=str)


def plan_groups(configs: Sequence[Config], alone: AbstractSet[int] = frozenset()) -> list[list[int]]:
    """Indices of `configs` in run order: one list per seed group (2 or more seeds) or per lone config.

    A group runs where its first member stood; `alone` are indices that must not group (e.g. a run to resume).
    """
    by_key: dict[str, list[int]] = {}
    order: list[list[int]] = []
    for i, config in enumerate(configs):
        key = None if i in alone else group_key(config)
        if key is None:
            order.append([i])
        elif key in by_key:
            by_key[key].append(i)
        else:
            by_key[key] = [i]
            order.append(by_key[key])
    return order


def enabled(group_seeds: bool | None, device: torch.device) -> bool:
    """`--group-seeds` as given, or by default (None) on where it pays: CUDA (see the sweep's help and README)."""
    if group_seeds is not None:
        return group_seeds
    return device.type == "cuda"


def schedule(
    todo: Sequence,
    resumable: dict[str, str],
    group_seeds: bool | None,
    shared,
    infos: dict,
    progress: bool | None,
    log: Callable[[str], None],
) -> list[tuple[Any, Callable[[], tuple]]]:
    """The sweep's children (`todo`: .config, .key, .label) in run order, each with `start()` -> (pipeline or
    None, extra tags): a group's first `start()` trains the whole group; a lone child gets (None, {})."""
    configs = [child.config for child in todo]
    if not todo or not enabled(group_seeds, runtime.resolve_device(configs[0].device)):
        return [(child, lambda: (None, {})) for child in todo]
    plan = plan_groups(configs, {i for i, child in enumerate(todo) if child.key in resumable})
    out: list[tuple[Any, Callable[[], tuple]]] = []
    for members in plan:
        children = [todo[i] for i in members]
        if len(children) == 1:
            out.append((children[0], lambda: (None, {})))
            continue
        trained: dict[int, grouped.TrainedSeed] = {}

        def start(child, children=children, trained=trained) -> tuple:
            if not trained:
                configs, name = [c.config for c in children], children[0].label.rsplit("-s", 1)[0]
                trained.update(grouped.train_seeds(configs, infos[children[0].key], shared, name, progress, log))
            seed = trained.pop(child.config.seed)
            pipeline = grouped.GroupedSeedPipeline(seed)
            return pipeline, {SWEEP_GROUP_SIZE_TAG: str(seed.group_size), SWEEP_GROUP_NOTE_TAG: NOTE}

        out.extend((child, functools.partial(start, child)) for child in children)
    return out
