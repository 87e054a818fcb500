"""features=embedding_layer: the original's TensorFlow `get_input_embeddings()(ids)`, i.e. BertModel.embeddings(ids)."""

import pytest
import torch
from transformers import BertModel

from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model import backbone
from bertpooled.model.heads import PooledLSTMClassifier
from bertpooled.model.pooling import PoolSpec, pool
from bertpooled.run import fit, prepare


def loaded(tiny_bert):
    info = backbone.inspect(str(tiny_bert))
    return backbone.load_word_embeddings(info, whole_layer=True), BertModel.from_pretrained(str(tiny_bert)).eval()


def ids_with_padding():
    # Two reviews right-padded with [PAD] (id 0): as the original, padded positions are real inputs in `read`.
    return torch.tensor([[2, 5, 9, 14, 3, 0, 0, 0], [2, 7, 3, 0, 0, 0, 0, 0]]), torch.tensor([5, 3])


def test_embedding_layer_features_equal_bertmodel_embeddings_for_the_same_ids(tiny_bert):
    embeddings, bert = loaded(tiny_bert)
    ids, _ = ids_with_padding()
    with torch.no_grad():
        expected = bert.embeddings(input_ids=ids)
    model = PooledLSTMClassifier(embeddings.table, PoolSpec.parse("none"), units=3, layer=embeddings.layer)
    got = model.inputs(ids)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # ... and not the word table alone (PyTorch's get_input_embeddings()), which lacks positions and LayerNorm.
    assert not torch.allclose(got, bert.get_input_embeddings()(ids), atol=1e-3)
    # Padded positions get the [PAD] vector plus their position, normalised: what the original fed its LSTM.
    torch.testing.assert_close(got[1, 5], expected[1, 5])
    assert not torch.allclose(got[1, 5], got[1, 6])


def test_the_pooled_mode_pools_the_embedding_layer_output_not_the_word_table(tiny_bert):
    embeddings, bert = loaded(tiny_bert)
    ids, lengths = ids_with_padding()
    spec = PoolSpec.parse("avg:2x2")
    model = PooledLSTMClassifier(embeddings.table, spec, units=3, layer=embeddings.layer, padding="read").eval()
    with torch.no_grad():
        features = bert.embeddings(input_ids=ids)
        expected, _ = pool(features, torch.ones(ids.shape, dtype=torch.bool), spec)
        x = model.inputs(ids)
    # model.inputs pools the hidden axis; the sequence pooling follows in forward. Both together:
    from bertpooled.model.pooling import pool_sequence

    got, _ = pool_sequence(x, torch.ones(ids.shape, dtype=torch.bool), spec)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert model.head.in_features == features.shape[-1] // 2
    # The word table is kept whole (LayerNorm first, pooling after), unlike the word-table path which pre-pools it.
    assert model.embeddings.shape == embeddings.table.shape
    with torch.no_grad():
        logits = model(ids, lengths)
        head_only = model.head(expected, None)
    torch.testing.assert_close(logits, head_only)


def test_masked_padding_stays_out_of_the_embedding_layer_path(tiny_bert):
    embeddings, _ = loaded(tiny_bert)
    ids, lengths = ids_with_padding()
    other = ids.clone()
    other[0, 5:] = 11  # other tokens where the padding is
    for spec in ("none", "avg:2x2"):
        model = PooledLSTMClassifier(embeddings.table, PoolSpec.parse(spec), units=3, layer=embeddings.layer).eval()
        assert torch.equal(model(ids, lengths)[0], model(other, lengths)[0])


def test_a_backbone_without_a_bert_embedding_layer_is_refused_before_a_run(tmp_path, tiny_bert):
    from transformers import DistilBertConfig

    folder = tmp_path / "distil"
    DistilBertConfig(
        vocab_size=40, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    ).save_pretrained(folder)
    config = load_config(overrides={"model": str(folder), "features": "embedding_layer", "max_len": 16})
    with pytest.raises(BertpooledError, match="features=embedding_layer needs a BERT-family backbone") as err:
        prepare.check(config)
    assert "\n" not in str(err.value)
    prepare.check(load_config(overrides={"model": str(folder), "features": "embeddings", "max_len": 16}))


def test_an_embedding_module_that_computes_something_else_is_refused(tiny_bert):
    _, bert = loaded(tiny_bert)
    bert.config.position_embedding_type = "relative_key"
    with pytest.raises(BertpooledError, match="needs a BERT-style embedding layer"):
        backbone.embedding_layer_of(bert, "tiny")
    bert.config.position_embedding_type = "absolute"
    backbone.embedding_layer_of(bert, "tiny")
    # A module with BERT's attributes that computes something else (a scaled output, say) fails the probe.
    plain = bert.embeddings.forward
    bert.embeddings.forward = lambda **kw: plain(**kw) * 2
    with pytest.raises(BertpooledError, match="needs a BERT-style embedding layer"):
        backbone.embedding_layer_of(bert, "tiny")


def test_tf_style_shuffle_buffer_keeps_rows_near_their_stored_place_and_covers_all():
    gen = torch.Generator().manual_seed(0)
    order = fit.epoch_order(1000, 10, gen).tolist()
    assert sorted(order) == list(range(1000))
    # A row leaves the buffer at most ~buffer places before it entered; never before it was read.
    assert all(pos >= row - 10 for pos, row in enumerate(order))
    assert order != list(range(1000))
    full = fit.epoch_order(1000, 0, torch.Generator().manual_seed(0)).tolist()
    assert sorted(full) == list(range(1000)) and max(abs(p - r) for p, r in enumerate(full)) > 100
