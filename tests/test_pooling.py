import pytest
import torch

from bertpooled.errors import BertpooledError
from bertpooled.model.pooling import PoolSpec, lengths_mask, pool, pool_hidden, pool_sequence, pooled_lengths


@pytest.mark.parametrize(
    "text, spec",
    [
        ("avg:2x2", PoolSpec("avg", 2, 2)),
        ("max:2x1", PoolSpec("max", 2, 1)),
        ("none", PoolSpec("avg", 1, 1)),
        ("AVG:4x1", PoolSpec("avg", 4, 1)),
    ],
)
def test_pool_spec_parses_the_one_spelling(text, spec):
    assert PoolSpec.parse(text) == spec
    assert PoolSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["mean:2x2", "avg:2", "avg:0x2", "avg:2x2x2", "2x2"])
def test_pool_spec_rejects_other_spellings_in_one_line(text):
    with pytest.raises(BertpooledError, match="KIND:SxH") as err:
        PoolSpec.parse(text)
    assert "\n" not in str(err.value)


def test_seed_pooling_halves_both_axes_like_keras_valid_average_pooling():
    x = torch.arange(2 * 128 * 768, dtype=torch.float32).reshape(2, 128, 768)
    mask = torch.ones(2, 128, dtype=torch.bool)
    y, m = pool(x, mask, PoolSpec.parse("avg:2x2"))
    assert y.shape == (2, 64, 384) and m.shape == (2, 64)
    expected = torch.nn.functional.avg_pool2d(x.unsqueeze(1), 2).squeeze(1)
    torch.testing.assert_close(y, expected)


def test_odd_lengths_drop_the_trailing_partial_window():
    x = torch.randn(1, 5, 3)
    y, _ = pool(x, torch.ones(1, 5, dtype=torch.bool), PoolSpec.parse("avg:2x2"))
    assert y.shape == (1, 2, 1)


def test_masked_average_excludes_padding_exactly():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 4)
    lengths = torch.tensor([8, 5, 1])
    mask = lengths_mask(lengths, 8)
    y, m = pool_sequence(x, mask, PoolSpec.parse("avg:2x1"))
    for b in range(3):
        for w in range(4):
            real = [t for t in (2 * w, 2 * w + 1) if t < lengths[b]]
            if real:
                torch.testing.assert_close(y[b, w], x[b, real].mean(0))
                assert m[b, w]
            else:
                assert torch.all(y[b, w] == 0) and not m[b, w]
    assert pooled_lengths(lengths, PoolSpec.parse("avg:2x1"), 8).tolist() == [4, 3, 1]


def test_masked_max_ignores_padding_even_when_padding_is_larger():
    x = torch.tensor([[[1.0], [2.0], [100.0], [100.0]]])
    mask = lengths_mask(torch.tensor([3]), 4)
    y, _ = pool_sequence(x, mask, PoolSpec.parse("max:2x1"))
    assert y.flatten().tolist() == [2.0, 100.0]
    x[0, 2, 0] = -5.0
    y, _ = pool_sequence(x, mask, PoolSpec.parse("max:2x1"))
    assert y.flatten().tolist() == [2.0, -5.0]


def test_padding_values_never_change_pooled_values():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4)
    lengths = torch.tensor([3, 6])
    mask = lengths_mask(lengths, 6)
    noisy = x.clone()
    noisy[0, 3:] = 1e6
    for kind in ("avg", "max"):
        spec = PoolSpec.parse(f"{kind}:3x2")
        torch.testing.assert_close(pool(x, mask, spec)[0], pool(noisy, mask, spec)[0])


def test_hidden_max_pooling_takes_pairs_of_adjacent_features():
    x = torch.tensor([[1.0, 3.0, -2.0, -1.0]])
    assert pool_hidden(x, PoolSpec.parse("max:1x2")).tolist() == [[3.0, -1.0]]
    assert pool_hidden(x, PoolSpec.parse("avg:1x2")).tolist() == [[2.0, -1.5]]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_hidden_pooling_by_strided_slices_is_bitwise_the_window_reduction(kind, k):
    from bertpooled.model.pooling import pool_hidden

    x = torch.randn(4, 7, 6 * k + 1, generator=torch.Generator().manual_seed(k))
    windows = x[..., : 6 * k].unflatten(-1, (6, k))
    expected = windows.mean(-1) if kind == "avg" else windows.amax(-1)
    assert torch.equal(pool_hidden(x, PoolSpec(kind, 1, k)), expected)
