"""Seeds trained together (bertpooled.run.grouped) equal the same seeds trained alone by `run.fit.fit` (issue 13).

Tiny synthetic data and a tiny random embedding table built here: no IMDB, no backbone download, no MLflow.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertpooled.config import Config
from bertpooled.data import Split
from bertpooled.data.tokens import Tokens
from bertpooled.model.backbone import WordEmbeddings
from bertpooled.model.heads import EmbeddingLayer, PooledLSTMClassifier
from bertpooled.run import checkpoint, grouped, measure, network, runtime
from bertpooled.run import fit as train
from bertpooled.run.checkpoint import Checkpointer
from bertpooled.run.prepare import Prepared

SEEDS = [0, 1, 7]
# Per-epoch loss/accuracy and final weights and probabilities of a grouped seed against the same seed alone.
# `per_seed` runs each seed's forward through the very kernels and shapes of a run alone; `block` runs all
# seeds as one block-diagonal LSTM, which sums the same terms in another order (float rounding only).
TOLERANCE = {"per_seed": dict(rtol=1e-5, atol=1e-6), "block": dict(rtol=1e-4, atol=1e-5)}


def make_prepared(
    pool: str = "none",
    padding: str = "mask",
    bias: str = "keras",
    *,
    layer: bool = True,
    n: int = 37,
    max_len: int = 12,
    hidden: int = 8,
    vocab: int = 50,
    epochs: int = 3,
    shuffle_buffer: int = 0,
    batch_size: int = 8,
) -> Prepared:
    """A Prepared run on random token ids whose labels depend on the tokens (so the heads learn something)."""
    gen = torch.Generator().manual_seed(1234)
    table = torch.randn(vocab, hidden, generator=gen)
    emb_layer = None
    if layer:
        emb_layer = EmbeddingLayer(
            torch.randn(max_len, hidden, generator=gen),
            torch.randn(hidden, generator=gen),
            1 + 0.1 * torch.randn(hidden, generator=gen),
            0.1 * torch.randn(hidden, generator=gen),
            1e-12,
        )
    rng = np.random.default_rng(5)

    def split(rows: int, name: str) -> tuple[Split, Tokens]:
        lengths = rng.integers(3, max_len + 1, rows)
        ids = rng.integers(5, vocab, (rows, max_len))
        ids[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
        labels = (ids[:, 1] % 2).astype(np.int64)
        return Split([f"{name}/{i}" for i in range(rows)], [""] * rows, labels), Tokens(ids, lengths)

    train_split, train_tokens = split(n, "train")
    test_split, test_tokens = split(19, "test")
    config = Config(
        mode="pool" if pool != "none" else "basic",
        pool=pool,
        epochs=epochs,
        batch_size=batch_size,
        max_len=max_len,
        padding=padding,
        lstm_bias=bias,
        lstm_units=4,
        lr=1e-2,
        shuffle_buffer=shuffle_buffer,
        features="embedding_layer" if layer else "embeddings",
        device="cpu",
        precision="fp32",
    )
    return Prepared(
        config,
        None,
        None,
        train_split,
        test_split,
        train_tokens,
        test_tokens,
        runtime.Runtime.resolve(config),
        embeddings=WordEmbeddings(table, 0, emb_layer),
    )


def alone(prepared: Prepared, seed: int):
    """Seed `seed` trained by the existing path: build_model + fit, then its test probabilities."""
    prep = grouped.with_seed(prepared, seed)
    model = network.build_model(prep)
    history = train.fit(model, prep, progress=False).history
    probs = measure.predict_proba(model, prep.test_tokens, 64, torch.device("cpu"))
    return history, model, probs


def together(prepared: Prepared, seeds, recurrence: str):
    group = grouped.build_group(prepared, seeds, recurrence)
    seen = []
    histories = grouped.fit_group(
        group, prepared, on_epoch=lambda s, st: seen.append((s, st.epoch)), progress=False
    ).histories
    models = group.split()
    probs = [measure.predict_proba(m, prepared.test_tokens, 64, torch.device("cpu")) for m in models]
    assert seen == [(s, e) for e in range(1, prepared.config.epochs + 1) for s in range(len(seeds))]
    return histories, models, probs


def assert_same_run(alone_run, group_history, group_model, group_probs, tol):
    history, model, probs = alone_run
    assert [h.epoch for h in group_history] == [h.epoch for h in history]
    np.testing.assert_allclose([h.loss for h in group_history], [h.loss for h in history], **tol)
    np.testing.assert_allclose([h.accuracy for h in group_history], [h.accuracy for h in history], **tol)
    mine, theirs = group_model.state_dict(), model.state_dict()
    assert list(mine) == list(theirs)  # same layout: checkpoints, logging and serving see no difference
    for name in theirs:
        assert mine[name].shape == theirs[name].shape and mine[name].dtype == theirs[name].dtype, name
        torch.testing.assert_close(mine[name], theirs[name], **tol, msg=lambda m: f"{name}: {m}")
    np.testing.assert_allclose(group_probs, probs, **tol)
    assert ((group_probs >= 0.5) == (probs >= 0.5)).all()


@pytest.mark.parametrize("recurrence", grouped.RECURRENCES)
@pytest.mark.parametrize("bias", ["keras", "torch"])
@pytest.mark.parametrize("padding", ["mask", "read"])
@pytest.mark.parametrize("pool", ["none", "avg:2x2"])
def test_each_seed_of_a_group_equals_that_seed_trained_alone(pool, padding, bias, recurrence):
    prepared = make_prepared(pool, padding, bias)
    histories, models, probs = together(prepared, SEEDS, recurrence)
    for s, seed in enumerate(SEEDS):
        assert_same_run(alone(prepared, seed), histories[s], models[s], probs[s], TOLERANCE[recurrence])


@pytest.mark.parametrize("recurrence", grouped.RECURRENCES)
def test_word_table_features_and_a_shuffle_buffer_group_too(recurrence):
    # features=embeddings (hidden pooling folded into the table) and tf.data's shuffle-buffer order.
    prepared = make_prepared("avg:2x2", "mask", "keras", layer=False, shuffle_buffer=10)
    histories, models, probs = together(prepared, SEEDS[:2], recurrence)
    for s, seed in enumerate(SEEDS[:2]):
        assert_same_run(alone(prepared, seed), histories[s], models[s], probs[s], TOLERANCE[recurrence])


@pytest.mark.parametrize("padding", ["mask", "read"])
def test_per_seed_step_is_bitwise_the_step_alone(padding):
    # The per_seed path calls the same kernels on the same shapes as a run alone, and each seed's loss is reduced
    # as `fit` reduces it: one step's logits and gradients are bitwise equal (the last batch, 5 rows, included).
    # Whole runs still differ in the last bits: fused Adam on CPU rounds a tensor shorter than a SIMD vector
    # (dense.weight alone: `units` values) differently from a vectorised stretch of the stacked one.
    prepared = make_prepared("avg:2x2", padding, "torch")
    group = grouped.build_group(prepared, SEEDS, "per_seed")
    models = [network.build_model(grouped.with_seed(prepared, seed)).train() for seed in SEEDS]
    ids, lengths = torch.from_numpy(prepared.train_tokens.ids), torch.from_numpy(prepared.train_tokens.lengths)
    labels = torch.from_numpy(prepared.train.labels.astype(np.float32))
    for rows in (8, 5):
        idx = torch.stack(
            [torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:rows] for seed in SEEDS]
        )
        group.zero_grad()
        logits = group(ids[idx], lengths[idx])
        torch.stack(
            [F.binary_cross_entropy_with_logits(logits[s], labels[idx[s]]) for s in range(len(SEEDS))]
        ).sum().backward()
        for s, model in enumerate(models):
            model.zero_grad()
            alone_logits = model(ids[idx[s]], lengths[idx[s]])
            F.binary_cross_entropy_with_logits(alone_logits, labels[idx[s]]).backward()
            assert torch.equal(logits[s], alone_logits)
            for (name, stacked), param in zip(group.head.head_parameters(), model.head.parameters(), strict=True):
                assert torch.equal(stacked.grad[s], param.grad), name


def test_seeds_in_a_group_differ_in_initialisation_and_order():
    prepared = make_prepared("none", "mask", "keras")
    group = grouped.build_group(prepared, SEEDS, "per_seed")
    head = group.head
    for a in range(len(SEEDS)):
        for b in range(a + 1, len(SEEDS)):
            assert not torch.equal(head.weight_ih_l0[a], head.weight_ih_l0[b])
            assert not torch.equal(head.weight_hh_l0[a], head.weight_hh_l0[b])
    n, buffer = len(prepared.train), prepared.config.shuffle_buffer
    orders = [train.epoch_order(n, buffer, torch.Generator().manual_seed(seed)) for seed in SEEDS]
    assert all(not torch.equal(orders[0], other) for other in orders[1:])
    histories = grouped.fit_group(group, prepared, progress=False).histories
    assert len({tuple(h.loss for h in history) for history in histories}) == len(SEEDS)
    trained = [m.head.weight_ih_l0 for m in group.split()]
    assert not torch.equal(trained[0], trained[1])


def test_group_starts_from_each_seeds_own_build_model_init():
    prepared = make_prepared("avg:2x2", "read", "torch")
    group = grouped.build_group(prepared, SEEDS)
    for s, seed in enumerate(SEEDS):
        model = network.build_model(grouped.with_seed(prepared, seed))
        for name, stacked in group.head.head_parameters():
            assert torch.equal(stacked[s], model.head.get_parameter(name)), name


@pytest.mark.parametrize("padding", ["mask", "read"])
def test_frozen_features_then_head_is_the_classifier(padding):
    # FrozenFeatures repeats PooledLSTMClassifier.forward before its head: guard against the two drifting apart.
    prepared = make_prepared("avg:2x2", padding, "keras")
    model = network.build_model(prepared)
    ids, lengths = torch.from_numpy(prepared.train_tokens.ids), torch.from_numpy(prepared.train_tokens.lengths)
    assert isinstance(model, PooledLSTMClassifier)
    features = grouped.FrozenFeatures(model)
    model.train()
    torch.testing.assert_close(model.head(*features(ids, lengths)), model(ids, lengths), rtol=0, atol=0)


def test_seed_snapshots_are_what_a_run_alone_would_checkpoint():
    # What a group keeps per seed and epoch (checkpoint.SeedSnapshots, the loop's on_epoch_end) is what the run
    # alone hands its Checkpointer: the head's weights, its Adam and its batch order.
    prepared = make_prepared("none", "mask", "torch", epochs=2)
    group = grouped.build_group(prepared, SEEDS[:2])
    snapshots = checkpoint.SeedSnapshots(group)
    grouped.fit_group(group, prepared, progress=False, on_epoch_end=snapshots)
    assert [len(kept) for kept in snapshots.kept] == [2, 2]
    for s, seed in enumerate(SEEDS[:2]):
        prep = grouped.with_seed(prepared, seed)
        model = network.build_model(prep)
        writes = []

        def write(epoch, m, optimizer, order, history):
            head = {k: v.clone() for k, v in m.head.state_dict().items()}
            writes.append((head, copy.deepcopy(optimizer.state_dict()), order.get_state()))  # as it is now

        train.fit(model, prep, progress=False, checkpoints=Checkpointer(write))
        assert len(writes) == 2
        for (alone_head, alone_opt, alone_order), (holder, group_opt, group_order) in zip(
            writes, snapshots.kept[s], strict=True
        ):
            group_opt = group_opt.state_dict()
            assert torch.equal(alone_order, group_order.get_state())
            assert holder.head.state_dict().keys() == alone_head.keys()
            for key, value in alone_head.items():
                torch.testing.assert_close(holder.head.state_dict()[key], value, **TOLERANCE["per_seed"])
            assert group_opt["param_groups"] == alone_opt["param_groups"]
            assert set(group_opt["state"]) == set(alone_opt["state"])
            for index, state in alone_opt["state"].items():
                for key, value in state.items():
                    torch.testing.assert_close(group_opt["state"][index][key], value, **TOLERANCE["per_seed"])


def test_fine_tuning_does_not_group():
    assert not grouped.can_group(Config(features="encoder", finetune=True))
    assert grouped.can_group(Config())


@pytest.mark.parametrize("padding", ["mask", "read"])
def test_a_group_of_one_is_the_run_alone_bitwise(padding):
    # One loop trains both (`fit.train_epochs`): a run alone is a group of one seed. A SeedGroup of one seed
    # stacks tensors of the lone run's own lengths, so even fused Adam rounds alike: every number is equal.
    prepared = make_prepared("avg:2x2", padding, "keras", epochs=2)
    histories, models, probs = together(prepared, SEEDS[:1], "per_seed")
    history, model, alone_probs = alone(prepared, SEEDS[0])
    assert [(h.loss, h.accuracy) for h in histories[0]] == [(h.loss, h.accuracy) for h in history]
    for name, value in model.state_dict().items():
        assert torch.equal(models[0].state_dict()[name], value), name
    np.testing.assert_array_equal(probs[0], alone_probs)
