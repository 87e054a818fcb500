"""One model spec for training and serving; one table of pooling kinds."""

import pytest
import torch

from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model import pooling
from bertpooled.model.build import ModelSpec, build, from_state
from bertpooled.model.heads import EmbeddingLayer
from bertpooled.model.pooling import PoolPosition, PoolSpec
from bertpooled.run.network import spec_of


def _layer(hidden=8, positions=12):
    g = torch.Generator().manual_seed(1)
    return EmbeddingLayer(
        torch.randn(positions, hidden, generator=g),
        torch.randn(hidden, generator=g),
        torch.ones(hidden),
        torch.zeros(hidden),
        1e-12,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"mode": "basic"},
        {"mode": "pool"},
        {"mode": "pool", "features": "embeddings"},
        {"mode": "pool", "padding": "read", "lstm_bias": "torch"},
    ],
)
def test_the_spec_survives_its_json_and_comes_from_the_config_parsed_once(overrides):
    config = load_config(None, overrides)
    spec = spec_of(config, layer_norm_eps=1e-12)
    assert spec.pool == config.pool_spec and isinstance(spec.pool_at, PoolPosition)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert spec.to_json()["pool"] == config.pool  # the file keeps the canonical spelling


def test_a_model_logged_before_lstm_bias_and_features_existed_reads_as_it_was_trained():
    old = {"pool": "avg:2x2", "padding": "mask", "lstm_units": 16, "max_len": 128, "backbone": "minilm"}
    spec = ModelSpec.from_json(old)
    assert (spec.lstm_bias, spec.features, str(spec.pool_at), spec.init) == ("torch", "embeddings", "input", "keras")


def test_building_draws_from_the_generator_as_it_stands_and_never_reseeds_it():
    spec = spec_of(load_config(None, {"mode": "pool"}))
    table = torch.randn(30, 8)
    torch.manual_seed(3)
    first = build(spec, table=table, layer=_layer()).state_dict()
    torch.manual_seed(3)
    again = build(spec, table=table, layer=_layer()).state_dict()
    other = build(spec, table=table, layer=_layer()).state_dict()  # the generator moved on: other weights
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["head.weight_ih_l0"], other["head.weight_ih_l0"])


@pytest.mark.parametrize("features", ["embedding_layer", "embeddings"])
def test_serving_rebuilds_from_the_spec_and_weights_what_training_built(features):
    config = load_config(None, {"mode": "pool", "features": features})
    layer = _layer() if features == "embedding_layer" else None
    torch.manual_seed(0)
    model = build(spec_of(config), table=torch.randn(30, 8), layer=layer).eval()
    spec = spec_of(config, layer_norm_eps=1e-12 if layer is not None else None)
    served = from_state(ModelSpec.from_json(spec.to_json()), model.state_dict())
    ids, lengths = torch.randint(0, 30, (3, 12)), torch.tensor([12, 5, 2])
    assert torch.equal(served(ids, lengths), model(ids, lengths))


def test_a_new_pooling_kind_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(
        pooling.REDUCERS,
        "min",
        pooling.Reducer(
            lambda x, k: x.unflatten(-1, (-1, k)).amin(-1),
            lambda x, m, real: (
                x.masked_fill(~m.unsqueeze(-1), float("inf")).amin(2).masked_fill(~real.unsqueeze(-1), 0.0)
            ),
        ),
    )
    spec = PoolSpec.parse("min:2x2")
    x = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [5.0, 6.0], [0.0, 0.0]]])
    assert torch.equal(pooling.pool_hidden(x, spec), torch.tensor([[[1.0], [-4.0], [5.0], [0.0]]]))
    pooled, mask = pooling.pool_sequence(x, torch.tensor([[True, True, True, False]]), spec)
    assert torch.equal(pooled, torch.tensor([[[1.0, -4.0], [5.0, 6.0]]])) and mask.tolist() == [[True, True]]
    with pytest.raises(BertpooledError, match="avg or max or min"):
        PoolSpec.parse("median:2x2")
