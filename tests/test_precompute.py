"""The training rows' frozen features computed once (bertpooled.run.precompute.before_training) train exactly as per
batch.

Tiny synthetic data and a tiny random embedding table (from test_grouped): no IMDB, no backbone, no MLflow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_grouped import make_prepared

from bertpooled.contract import CACHED_PHASES, TIME_TOTAL, TIME_TRAIN
from bertpooled.report.verdict import _cost_sentence
from bertpooled.run import fit as train
from bertpooled.run import grouped, measure, network, precompute
from bertpooled.run.measure import Phases

CPU = torch.device("cpu")


def run(prepared, budget_mb: int):
    prepared = dataclasses.replace(
        prepared, config=dataclasses.replace(prepared.config, precompute_mb=budget_mb), phases=Phases()
    )
    model = network.build_model(prepared)
    fitted = train.fit(model, prepared, progress=False)
    probs = measure.predict_proba(model, prepared.test_tokens, 64, CPU)
    return prepared, fitted.history, model, probs, fitted.precomputed


@pytest.mark.parametrize(
    "pool, padding, layer",
    [
        ("none", "mask", True),
        ("avg:2x2", "mask", True),
        ("max:2x1", "read", True),
        ("avg:2x2", "mask", False),
        ("avg:2x2", "read", False),
    ],
)
def test_training_on_precomputed_features_is_bitwise_training_per_batch(pool, padding, layer):
    base = make_prepared(pool, padding, layer=layer, epochs=2)
    per_batch = run(base, 0)
    ahead = run(base, 1024)
    assert not per_batch[4] and ahead[4]
    assert [(h.loss, h.accuracy) for h in ahead[1]] == [(h.loss, h.accuracy) for h in per_batch[1]]
    for name, value in ahead[2].state_dict().items():
        assert torch.equal(value, per_batch[2].state_dict()[name]), name
    np.testing.assert_array_equal(ahead[3], per_batch[3])
    assert "precompute" in ahead[0].phases.seconds and "precompute" not in per_batch[0].phases.seconds


def test_features_over_the_budget_are_computed_per_batch():
    prepared = make_prepared("none", n=37, max_len=12, hidden=8)
    model = network.build_model(prepared)
    ids, lengths = torch.from_numpy(prepared.train_tokens.ids), torch.from_numpy(prepared.train_tokens.lengths)
    row_mib = 12 * 8 * 4 / precompute.MIB
    # 37 rows of 12 x 8 float32: just under and just over the budget.
    tiny = 37 * row_mib
    assert precompute.train_features(model.features, ids, lengths, tiny * 0.99, 16) is None
    features, head_lengths = precompute.train_features(model.features, ids, lengths, tiny * 1.01, 16)
    assert features.shape == (37, 12, 8) and features.dtype == torch.float32
    assert torch.equal(head_lengths, lengths)
    # 0 switches it off, whatever fits; a model without a per-batch frozen part never precomputes.
    assert not precompute.applies(model, 0) and precompute.applies(model, 1)
    assert not precompute.applies(torch.nn.Linear(2, 2), 1024)


def test_a_seed_group_shares_one_precomputed_copy_and_matches_its_seeds_alone():
    prepared = make_prepared("avg:2x2", epochs=2)
    group = grouped.build_group(prepared, [0, 1], "per_seed")
    fitted = grouped.fit_group(group, prepared, progress=False)
    histories = fitted.histories
    assert fitted.precomputed and group.features.kind == "precomputed"
    for s, model in enumerate(group.split()):
        _, history, _alone_model, alone_probs, _ = run(grouped.with_seed(prepared, [0, 1][s]), 1024)
        np.testing.assert_allclose([h.loss for h in histories[s]], [h.loss for h in history], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            measure.predict_proba(model, prepared.test_tokens, 64, CPU), alone_probs, rtol=1e-5, atol=1e-6
        )


def test_a_verdict_between_runs_that_differ_in_precomputed_features_marks_training_time():
    ratios = {TIME_TOTAL: 0.5, TIME_TRAIN: 0.4}
    assert TIME_TRAIN in CACHED_PHASES["train_features"]
    sentence = _cost_sentence("basic", ratios, ["train_features"])
    assert "total time and training time compare cache states, not modes." in sentence
    tokens = _cost_sentence("basic", ratios, ["tokens"])
    assert "total time compares cache states, not modes; training time does not depend on them." in tokens
