import pytest
import torch

from bertpooled.model.heads import LSTMHead, PooledLSTMClassifier, count_parameters
from bertpooled.model.pooling import PoolSpec


@pytest.mark.parametrize("inputs, expected", [(768, 50_257), (384, 25_681)])
def test_head_parameter_counts_equal_the_originals_keras_counts(inputs, expected):
    # docs/original.md: Keras counts 4*((in+16)*16+16) + 17 (one gate bias vector).
    total, trainable = count_parameters(LSTMHead(inputs, 16))
    assert total == trainable == expected == 4 * ((inputs + 16) * 16 + 16) + 17


@pytest.mark.parametrize("inputs, expected", [(768, 50_321), (384, 25_745)])
def test_the_torch_bias_layout_counts_nn_lstms_two_bias_vectors(inputs, expected):
    total, trainable = count_parameters(LSTMHead(inputs, 16, bias="torch"))
    assert total == trainable == expected
    ref = torch.nn.LSTM(inputs, 16)
    assert expected == sum(p.numel() for p in ref.parameters()) + 17


def keras_layout_state(head: LSTMHead) -> dict:
    """nn.LSTM's state for a one-bias head: its second bias vector held at zero."""
    state = {k: v for k, v in head.state_dict().items() if k.endswith("_l0")}
    return {**state, "bias_hh_l0": torch.zeros_like(head.bias_ih_l0)}


def test_head_computes_exactly_what_nn_lstm_computes():
    torch.manual_seed(0)
    head = LSTMHead(10, 4)
    with torch.no_grad():
        head.bias_ih_l0.normal_()  # a bias that is not Keras's init, so a dropped bias would show
    ref = torch.nn.LSTM(10, 4, batch_first=True)
    ref.load_state_dict(keras_layout_state(head))
    x = torch.randn(3, 7, 10)
    out, (h_n, _) = ref(x)
    torch.testing.assert_close(head(x), head.dense(h_n[0]).squeeze(-1))
    lengths = torch.tensor([7, 3, 1])
    torch.testing.assert_close(head(x, lengths), head.dense(out[torch.arange(3), lengths - 1]).squeeze(-1))


@pytest.mark.parametrize("bias", ["keras", "torch"])
def test_head_gradients_match_nn_lstm(bias):
    torch.manual_seed(0)
    head = LSTMHead(6, 3, bias=bias)
    ref = torch.nn.LSTM(6, 3, batch_first=True)
    ref.load_state_dict(
        keras_layout_state(head)
        if bias == "keras"
        else {k: v for k, v in head.state_dict().items() if k.endswith("_l0")}
    )
    x = torch.randn(2, 5, 6)
    head(x).sum().backward()
    _, (h_n, _) = ref(x)
    torch.nn.functional.linear(h_n[0], head.dense.weight, head.dense.bias).sum().backward()
    trained = dict(head.named_parameters())
    for name, param in ref.named_parameters():
        if bias == "keras" and name == "bias_hh_l0":
            assert name not in trained  # held at zero: the one gate bias takes the whole gradient
            torch.testing.assert_close(trained["bias_ih_l0"].grad, param.grad)
        else:
            torch.testing.assert_close(trained[name].grad, param.grad)


def test_one_bias_takes_one_adam_step_where_two_biases_take_two():
    torch.manual_seed(0)
    x, y = torch.randn(4, 5, 6), torch.tensor([0.0, 1.0, 1.0, 0.0])
    moved = {}
    for bias in ("keras", "torch"):
        torch.manual_seed(1)
        head = LSTMHead(6, 3, bias=bias)
        before = (head.bias_ih_l0 + head.bias_hh_l0).detach().clone()
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        torch.nn.functional.binary_cross_entropy_with_logits(head(x), y).backward()
        opt.step()
        moved[bias] = (head.bias_ih_l0 + head.bias_hh_l0 - before).abs()
    # Adam's first step moves every parameter by about lr: the effective gate bias moves twice as far with two.
    torch.testing.assert_close(moved["torch"], 2 * moved["keras"], rtol=1e-3, atol=1e-6)


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
