"""S seeds of one configuration trained together: one loop, one backward, one Adam step for all (issue 13).

The network is bertpooled.model.grouped's `SeedGroup` (S heads stacked, the frozen part shared); this module
builds it exactly as each seed alone is built (`network.build_model`), gives it one Adam over the stacked
parameters (S independent Adams, because Adam is elementwise) and trains it with `fit.train_epochs`, the loop a
run alone trains with (a run alone is a group of one): each seed draws its own batch order from its own
generator (`torch.Generator().manual_seed(seed)`), the frozen features of the S batches are computed in one
call, and the loss is the sum of the S per-seed mean losses, so seed s's gradient is exactly its own.
`run.checkpoint.SeedSnapshots` keeps each seed's model and Adam per epoch as a run alone holds them, for its
checkpoints.

The feature's training lives here whole (`sweep --group-seeds`; bertpooled.sweep.groups only plans which children
form a group and when each starts): `train_seeds` prepares a group's inputs and trains it before any of its runs
exists; then each seed goes through the ordinary run path with a `GroupedSeedPipeline`, which hands back that
seed's trained model instead of training. Params, tags, datasets, predictions, plots, the servable model and the
final metrics come from the same code as a run trained alone. What differs, and is said on the run: metric
`time/group_train_s` (the group's whole training time); `time/train_s` and `time/epoch_s` are the seed's 1/S share
of it. The checkpoints are logged after training (the run is created then), so an interrupted group leaves no child
to continue: a resumed sweep trains its unfinished children again (as a group).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bertpooled.config import Config
from bertpooled.contract import TIME_GROUP_TRAIN
from bertpooled.model.grouped import RECURRENCES, FrozenFeatures, SeedGroup, default_recurrence
from bertpooled.model.heads import Classifier
from bertpooled.run import checkpoint, evaluate, fit, measure, network, precompute, runtime
from bertpooled.run.measure import Phases, Trained
from bertpooled.run.pipeline import Inputs, LSTMPipeline
from bertpooled.run.prepare import model_inputs


def with_seed(prepared, seed: int):
    """`prepared` for one seed of the group: the same data and features, `config.seed` replaced (shallow copy)."""
    return dataclasses.replace(prepared, config=dataclasses.replace(prepared.config, seed=seed))


def can_group(config) -> bool:
    """Configurations a seed group can train: the LSTM head on frozen inputs (not a fine-tuned backbone, where
    memory rules, nor the reference pipeline, which has no training loop), without a validation split (the
    group's loop evaluates none: such runs train one by one)."""
    return config.mode != "reference" and not config.finetune and not getattr(config, "validation_fraction", 0)


def build_group(prepared, seeds: Sequence[int], recurrence: str | None = None) -> SeedGroup:
    """S models built exactly as `network.build_model` builds each seed's (seed_everything(seed), then construct),
    stacked into a SeedGroup on the run's device (`prepared.rt`), where `fit_group` trains it. `recurrence` None:
    `default_recurrence(device)`."""
    device = prepared.rt.device
    if not can_group(prepared.config):
        raise ValueError("a seed group trains heads on frozen inputs: encoder fine-tuning trains seeds one by one")
    models = [network.build_model(with_seed(prepared, seed)) for seed in seeds]
    return SeedGroup(models, seeds, recurrence or default_recurrence(device)).to(device)


def make_optimizer(
    group: SeedGroup,
    lr: float,
    eps: float,
    device: torch.device,
    fused: bool | None = None,
    foreach: bool | None = None,
) -> torch.optim.Adam:
    """One Adam over the stacked head: S independent Adams, since Adam is elementwise. Fused by default, as `fit`."""
    if fused is None and not foreach:
        fused = torch.device(device).type in ("cpu", "cuda")
    params = [p for _, p in group.head.head_parameters()]
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused, foreach=foreach)


def fit_group(
    group: SeedGroup,
    prepared,
    on_epoch: Callable[[int, measure.EpochStats], None] | None = None,
    progress: bool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_end: Callable[[int, fit.Trainee], None] | None = None,
) -> fit.Fitted:
    """Train every seed of `group` for `config.epochs` epochs with `fit.train_epochs`, as `fit.fit` trains one.

    `on_epoch(s, stats)` is called per seed and finished epoch with an `EpochStats` as a run alone reports it
    (`seconds` is the group's epoch time divided by S, the seed's share; `test_accuracy` with `eval_each_epoch`).
    `on_epoch_end(epoch, trainee)` is called once per epoch after the seeds' callbacks (for per-seed checkpoints:
    `run.checkpoint.SeedSnapshots`). Returns one history per seed, in `group.seeds` order. Seed s's evaluations
    read `network.seed_network`.
    """
    cfg, rt = prepared.config, prepared.rt
    inputs, lengths = model_inputs(prepared, "train")
    inputs, lengths = inputs.to(rt.device), lengths.to(rt.device)
    ahead = precompute.before_training(group.models[0], group.features.rows, inputs, lengths, prepared, progress)
    if ahead is not None:
        # One copy of the frozen features serves every seed of the group.
        (inputs, lengths) = ahead
        group.features.precomputed()
    optimizer = optimizer or make_optimizer(group, cfg.lr, cfg.adam_eps, rt.device)
    orders = [torch.Generator().manual_seed(seed) for seed in group.seeds]
    evaluating = functools.partial(network.seed_network, group, prepared)
    trainee = fit.Trainee(group, group, optimizer, orders, evaluating, inputs, lengths)
    return fit.Fitted(fit.train_epochs(trainee, prepared, on_epoch, on_epoch_end, progress), ahead is not None)


@dataclass(frozen=True)
class TrainedSeed:
    """One seed of a trained group: what `fit` would have returned and checkpointed for it alone."""

    model: Classifier
    history: list[measure.EpochStats]
    group_seconds: float
    group_size: int
    checkpoints: list[tuple] = field(default_factory=list)
    """Per finished epoch: (model holding that epoch's head, its Adam, its order generator), as `fit` writes them."""
    precomputed: bool = False
    """Whether the group trained on precomputed frozen features (`run.precompute.before_training`), as a lone run would
    log it."""
    precompute_seconds: float = 0.0

    @property
    def share_s(self) -> float:
        """The seed's share of the group's training time: its time/train_s."""
        return self.group_seconds / self.group_size


def train_group(prepared, seeds: Sequence[int], progress: bool | None = None) -> dict[int, TrainedSeed]:
    """Train `seeds` of `prepared.config` in one loop on `prepared.device`.

    Returns each seed's model, history and checkpoints.
    """
    from bertpooled.run import cost

    device = prepared.device
    cost.reset_peak_memory(device)  # as a lone run does before building its model: memory/peak_mb covers the group
    group = build_group(prepared, seeds)
    snapshots = checkpoint.SeedSnapshots(group)
    start = time.perf_counter()
    fitted = fit_group(group, prepared, progress=progress, on_epoch_end=snapshots)
    seconds = time.perf_counter() - start
    models = group.split()
    ahead = fitted.precomputed, prepared.phases.seconds.get("precompute", 0.0)
    return {
        seed: TrainedSeed(models[s], fitted.histories[s], seconds, len(seeds), snapshots.kept[s], *ahead)
        for s, seed in enumerate(seeds)
    }


def train_seeds(
    configs: Sequence[Config], info, shared, name: str, progress: bool | None, log: Callable[[str], None]
) -> dict[int, TrainedSeed]:
    """A seed group's inputs prepared (through `shared`, the sweep's memo: nothing read twice) and its seeds (the
    `configs`, which differ in their seed alone) trained together; `name` says the group in the log."""
    config = configs[0]
    rt = runtime.Runtime.resolve(config).start()
    phases = Phases()
    imdb, train, test = shared.read_data(config, phases, progress=progress)
    prepared = shared.prepare(config, info, imdb, train, test, phases, progress=progress, rt=rt)
    seeds = [c.seed for c in configs]
    log(f"training seeds {','.join(map(str, seeds))} of {name} together on {rt.device}")
    trained = train_group(prepared, seeds, progress)
    log(f"seed group of {len(seeds)}: trained in {next(iter(trained.values())).group_seconds:.1f}s")
    return trained


class GroupedSeedPipeline(LSTMPipeline):
    """The LSTM pipeline for one seed of a trained group: everything a lone run does, but the training.

    It replays the seed's per-epoch history through `on_epoch` (what each epoch logs, at steps 1..E) and its
    per-epoch checkpoints through the run's `Checkpointer`, records the seed's share of the group's training as
    its `train` phase (and of the precomputation, where there was one), then evaluates and measures the model
    with the code a lone run uses (`evaluate.evaluate_trained`). The share, done before the run started, comes back
    as `Trained.trained_ahead_s`; the group's whole training time as metric time/group_train_s."""

    def __init__(self, seed: TrainedSeed) -> None:
        self.seed = seed

    def fit_and_evaluate(self, inputs: Inputs, on_epoch=None, checkpoints=None, progress=None) -> Trained:
        prepared = self._prepare(inputs, progress)
        seed = self.seed
        for epoch, stats in enumerate(seed.history, 1):
            if on_epoch:
                on_epoch(stats)
            if checkpoints is not None and epoch <= len(seed.checkpoints):
                checkpoints.write(epoch, *seed.checkpoints[epoch - 1], seed.history[:epoch])
        inputs.phases.add("train", seed.share_s)  # its time/train_s (throughput/train follows from it)
        if seed.precomputed:
            inputs.phases.add("precompute", seed.precompute_seconds / seed.group_size)
        trained = evaluate.evaluate_trained(prepared, seed.model.to(prepared.device), seed.history, seed.precomputed)
        metrics = {**trained.metrics, TIME_GROUP_TRAIN: seed.group_seconds}
        return dataclasses.replace(trained, metrics=metrics, trained_ahead_s=seed.share_s)


__all__ = [
    "RECURRENCES",
    "FrozenFeatures",
    "GroupedSeedPipeline",
    "SeedGroup",
    "TrainedSeed",
    "build_group",
    "can_group",
    "default_recurrence",
    "fit_group",
    "make_optimizer",
    "train_group",
    "train_seeds",
    "with_seed",
]
