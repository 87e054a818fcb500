"""A sweep's seeds trained together (`sweep --group-seeds`, issue 13), each still its own ordinary run.

The children to run whose configs differ only in `seed` (and that `grouped.can_group` allows, and that do not
continue a checkpointed run) form a group. The group is trained in one loop (`grouped.fit_group`) before any of
its runs exists; then each seed goes through the ordinary `run_experiment` with a `GroupedSeedPipeline`, which
hands back that seed's trained model instead of training: it replays the seed's per-epoch history through
`on_epoch` (train/loss, train/accuracy, time/epoch_s at steps 1..E) and its per-epoch checkpoints through the
run's `Checkpointer`, then evaluates and measures the model with the code a lone run uses
(`fit.evaluate_trained`). Params, tags, datasets, predictions, plots, the servable model and the final metrics
come from the same code as a run trained alone.

What differs, and is said on the run: tag `sweep/group_size` (S), metric `time/group_train_s` (the group's
whole training time); `time/train_s` and `time/epoch_s` are the seed's 1/S share of it. The checkpoints are
logged after training (the run is created then), so an interrupted group leaves no child to continue: a
resumed sweep trains its unfinished children again (as a group).
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bertpooled.config import Config
from bertpooled.contract import SWEEP_GROUP_NOTE_TAG, SWEEP_GROUP_SIZE_TAG, TIME_GROUP_TRAIN
from bertpooled.model.heads import Classifier
from bertpooled.run import fit, grouped, runtime
from bertpooled.run.measure import Phases, Trained
from bertpooled.run.pipeline import Inputs, LSTMPipeline

NOTE = (
    "trained in one loop with the other seeds of its config (--group-seeds): time/train_s and time/epoch_s are "
    "this seed's 1/S share of the group's training (time/group_train_s); checkpoints logged after training"
)


@dataclass
class TrainedSeed:
    """One seed of a trained group: what `fit` would have returned and checkpointed for it alone."""

    model: Classifier
    history: list[fit.EpochStats]
    group_seconds: float
    group_size: int
    checkpoints: list[tuple] = field(default_factory=list)
    """Per finished epoch: (model holding that epoch's head, its Adam, its order generator), as `fit` writes them."""
    precomputed: bool = False
    """Whether the group trained on precomputed frozen features (`run.prepare.before_training`), as a lone run would
    log it."""
    precompute_seconds: float = 0.0


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


def train_group(prepared, seeds: Sequence[int], progress: bool | None = None) -> dict[int, TrainedSeed]:
    """Train `seeds` of `prepared.config` in one loop on `prepared.device`.

    Returns each seed's model, history and checkpoints.
    """
    from bertpooled.run import cost

    device = prepared.device
    cost.reset_peak_memory(device)  # as a lone run does before building its model: memory/peak_mb covers the group
    group = grouped.build_group(prepared, seeds)
    snapshots: dict[int, list[tuple]] = {s: [] for s in range(len(seeds))}

    def keep(epoch: int, optimizer, orders) -> None:
        for s in range(len(seeds)):
            model, seed_optimizer = grouped.seed_snapshot(group, optimizer, s)
            holder = nn.Module()  # what checkpoint.save reads: the trainable parameters, named as in the model
            holder.head = copy.deepcopy(model.head)
            order = torch.Generator()
            order.set_state(orders[s].get_state())
            snapshots[s].append((holder, seed_optimizer, order))

    start = time.perf_counter()
    fitted = grouped.fit_group(group, prepared, progress=progress, on_epoch_end=keep)
    seconds = time.perf_counter() - start
    models = group.split()
    ahead = fitted.precomputed, prepared.phases.seconds.get("precompute", 0.0)
    return {
        seed: TrainedSeed(models[s], fitted.histories[s], seconds, len(seeds), snapshots[s], *ahead)
        for s, seed in enumerate(seeds)
    }


class GroupedSeedPipeline(LSTMPipeline):
    """The LSTM pipeline for one seed of a trained group: everything a lone run does, but the training."""

    def __init__(self, seed: TrainedSeed) -> None:
        self.seed = seed
        self.trained_ahead_s = seed.group_seconds / seed.group_size
        """The seed's share of the group's training, done before its run started: counted in its time/total_s."""

    def fit_and_evaluate(self, inputs: Inputs, on_epoch=None, checkpoints=None, progress=None) -> Trained:
        prepared = self._prepare(inputs, progress)
        seed = self.seed
        for epoch, stats in enumerate(seed.history, 1):
            if on_epoch:
                on_epoch(stats)
            if checkpoints is not None and epoch <= len(seed.checkpoints):
                checkpoints.write(epoch, *seed.checkpoints[epoch - 1], seed.history[:epoch])
        # The seed's share of the group's training, as its time/train_s (throughput/train follows from it).
        inputs.phases.seconds["train"] = self.trained_ahead_s
        if seed.precomputed:
            inputs.phases.seconds["precompute"] = seed.precompute_seconds / seed.group_size
        trained = fit.evaluate_trained(prepared, seed.model.to(prepared.device), seed.history, seed.precomputed)
        trained.metrics[TIME_GROUP_TRAIN] = seed.group_seconds
        return trained


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
        trained: dict[int, TrainedSeed] = {}

        def start(child, children=children, trained=trained) -> tuple:
            if not trained:
                trained.update(_train(children, shared, infos, progress, log))
            seed = trained.pop(child.config.seed)
            return GroupedSeedPipeline(seed), {SWEEP_GROUP_SIZE_TAG: str(seed.group_size), SWEEP_GROUP_NOTE_TAG: NOTE}

        out.extend((child, functools.partial(start, child)) for child in children)
    return out


def _train(children: Sequence, shared, infos: dict, progress: bool | None, log: Callable[[str], None]) -> dict:
    """Prepare the group's shared inputs (the sweep's memo: nothing read twice) and train its seeds together."""
    config = children[0].config
    rt = runtime.Runtime.resolve(config).start()
    device = rt.device
    phases = Phases()
    prepared = shared.prepare(
        config,
        infos[children[0].key],
        *shared.read_data(config, phases, progress=progress),
        phases,
        progress=progress,
        rt=rt,
    )
    seeds = [child.config.seed for child in children]
    log(f"training seeds {','.join(map(str, seeds))} of {children[0].label.rsplit('-s', 1)[0]} together on {device}")
    trained = train_group(prepared, seeds, progress)
    log(f"seed group of {len(seeds)}: trained in {next(iter(trained.values())).group_seconds:.1f}s")
    return trained
