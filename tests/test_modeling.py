import pytest
import torch

from bertpooled.modeling import LSTMHead, PooledLSTMClassifier, count_parameters
from bertpooled.pooling import PoolSpec


@pytest.mark.parametrize("inputs, expected", [(768, 50_321), (384, 25_745)])
def test_head_parameter_counts_match_pytorch_counts_of_the_seed_classifier(inputs, expected):
    # docs/original.md: Keras counts 50,257 / 25,681; PyTorch's second LSTM bias vector adds 64.
    total, trainable = count_parameters(LSTMHead(inputs, 16))
    assert total == trainable == expected
    ref = torch.nn.LSTM(inputs, 16)
    assert expected == sum(p.numel() for p in ref.parameters()) + 17


def test_head_computes_exactly_what_nn_lstm_computes():
    torch.manual_seed(0)
    head = LSTMHead(10, 4)
    ref = torch.nn.LSTM(10, 4, batch_first=True)
    ref.load_state_dict({k: v for k, v in head.state_dict().items() if k.endswith("_l0")})
    x = torch.randn(3, 7, 10)
    out, (h_n, _) = ref(x)
    torch.testing.assert_close(head(x), head.dense(h_n[0]).squeeze(-1))
    lengths = torch.tensor([7, 3, 1])
    torch.testing.assert_close(head(x, lengths), head.dense(out[torch.arange(3), lengths - 1]).squeeze(-1))


def test_head_gradients_match_nn_lstm():
    torch.manual_seed(0)
    head = LSTMHead(6, 3)
    ref = torch.nn.LSTM(6, 3, batch_first=True)
    ref.load_state_dict({k: v for k, v in head.state_dict().items() if k.endswith("_l0")})
    x = torch.randn(2, 5, 6)
    head(x).sum().backward()
    _, (h_n, _) = ref(x)
    torch.nn.functional.linear(h_n[0], head.dense.weight, head.dense.bias).sum().backward()
    for name, param in ref.named_parameters():
        torch.testing.assert_close(getattr(head, name).grad, param.grad)


def test_keras_init_sets_the_forget_gate_bias_to_one_and_the_rest_to_zero():
    head = LSTMHead(8, 4, init="keras")
    bias = head.bias_ih_l0 + head.bias_hh_l0
    assert bias[4:8].tolist() == [1.0] * 4
    assert bias[:4].abs().sum() == 0 and bias[8:].abs().sum() == 0
    w = head.weight_hh_l0
    torch.testing.assert_close(w.T @ w, torch.eye(4), atol=1e-5, rtol=0)
    assert head.dense.bias.item() == 0


def test_pooling_the_table_equals_pooling_each_looked_up_vector():
    torch.manual_seed(0)
    table = torch.randn(20, 8)
    ids = torch.randint(0, 20, (2, 6))
    spec = PoolSpec.parse("avg:2x2")
    model = PooledLSTMClassifier(table, spec, units=3)
    plain = PooledLSTMClassifier(table, PoolSpec.parse("avg:2x1"), units=3)
    # Same head weights; the plain model pools hidden features after the lookup by hand.
    looked_up = torch.nn.functional.avg_pool1d(table[ids], 2)  # (2, 6, 4)
    assert torch.allclose(model.embeddings[ids], looked_up)
    assert plain.embeddings.shape == (20, 8)


def test_masked_padding_does_not_reach_the_prediction_but_read_padding_does():
    torch.manual_seed(0)
    table = torch.randn(30, 8)
    ids = torch.randint(5, 30, (1, 10))
    lengths = torch.tensor([6])
    other = ids.clone()
    other[0, 6:] = 7  # different tokens where the padding is
    for spec in ("none", "avg:2x2", "max:2x1"):
        masked = PooledLSTMClassifier(table, PoolSpec.parse(spec), units=4, padding="mask").eval()
        assert torch.equal(masked(ids, lengths), masked(other, lengths))
    read = PooledLSTMClassifier(table, PoolSpec.parse("none"), units=4, padding="read").eval()
    assert not torch.equal(read(ids, lengths), read(other, lengths))
