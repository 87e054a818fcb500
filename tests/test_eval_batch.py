"""eval_batch_size=0 (auto): 128 rows on CPU, 512 on a GPU; a number is obeyed; predictions do not depend on it
(beyond float rounding: a 1-row batch takes other matmul kernels, about 1e-7 apart)."""

import numpy as np
import pytest
import torch

from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model.heads import EmbeddingLayer, PooledLSTMClassifier
from bertpooled.model.pooling import PoolSpec
from bertpooled.run import runtime
from bertpooled.run.measure import predict_inputs


def test_auto_eval_batch_is_small_on_cpu_and_wide_on_a_gpu():
    auto = load_config()
    assert auto.eval_batch_size == 0
    assert runtime.eval_batch_size(auto, torch.device("cpu")) == 128
    assert runtime.eval_batch_size(auto, torch.device("cuda")) == 512
    assert runtime.eval_batch_size(load_config(overrides={"eval_batch_size": 64}), torch.device("cuda")) == 64


def test_a_negative_eval_batch_is_a_config_error():
    with pytest.raises(BertpooledError, match="eval_batch_size"):
        load_config(overrides={"eval_batch_size": -1})


@pytest.mark.parametrize("pool", ["none", "avg:2x2"])
def test_predictions_are_the_same_at_every_eval_batch_size(pool):
    gen = torch.Generator().manual_seed(0)
    layer = EmbeddingLayer(
        torch.randn(16, 12, generator=gen), torch.randn(12, generator=gen), torch.ones(12), torch.zeros(12), 1e-12
    )
    torch.manual_seed(0)
    model = PooledLSTMClassifier(torch.randn(50, 12, generator=gen), PoolSpec.parse(pool), units=4, layer=layer)
    ids = torch.randint(1, 50, (37, 16), generator=gen)
    lengths = torch.randint(2, 17, (37,), generator=gen)
    ids[torch.arange(16)[None, :] >= lengths[:, None]] = 0
    device = torch.device("cpu")
    by_size = [predict_inputs(model, ids, lengths, size, device) for size in (1, 5, 32, 128)]
    for probs in by_size[1:]:
        np.testing.assert_allclose(probs, by_size[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(probs > 0.5, by_size[0] > 0.5)
