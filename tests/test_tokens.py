import random

import numpy as np
import pytest

from bertpooled.data import tokens
from bertpooled.model import backbone


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return backbone.load_tokenizer(backbone.inspect("minilm"))


def _long_texts(n=60, seed=0):
    rng = random.Random(seed)
    words = [
        "the",
        "film",
        "was",
        "surprisingly",
        "good",
        ",",
        "but",
        "un-believably",
        "long",
        ";",
        "acting",
        ":",
        "10/10",
        "!!",
        "<br",
        "/><br",
        "/>",
        "café",
        "naïve",
        "supercalifragilisticexpialidocious",
        "1990s",
        "isn't",
    ]
    texts = []
    for _ in range(n):
        k = rng.choice([3, 50, 120, 400, 2000])
        texts.append(" ".join(rng.choice(words) for _ in range(k)))
    texts.append("x" * 5000)  # one huge 'word': the cut finds no space and keeps the whole review
    texts.append(("a" * 3000 + " ") * 3)  # words longer than the cut: falls back to the full text
    return texts


@pytest.mark.parametrize("max_len", [8, 128])
def test_cutting_long_reviews_before_tokenizing_gives_exactly_the_full_tokenization(minilm_tokenizer, max_len):
    texts = _long_texts()
    fast = tokens.tokenize(minilm_tokenizer, texts, max_len, progress=False)
    full = minilm_tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    for row, ref, n in zip(fast.ids, full, fast.lengths, strict=True):
        assert row[:n].tolist() == ref
        assert (row[n:] == minilm_tokenizer.pad_token_id).all()


def test_tokens_are_cached_and_reused(tmp_path, minilm_tokenizer, monkeypatch):
    texts = ["a fine film", "a dull film"]
    first, hit = tokens.load_or_tokenize(minilm_tokenizer, texts, 16, key="k1", cache_dir=tmp_path, progress=False)
    assert not hit
    monkeypatch.setattr(tokens, "tokenize", lambda *a, **k: pytest.fail("tokenized again"))
    second, hit = tokens.load_or_tokenize(minilm_tokenizer, texts, 16, key="k1", cache_dir=tmp_path, progress=False)
    assert hit and np.array_equal(first.ids, second.ids) and np.array_equal(first.lengths, second.lengths)


def test_the_cache_key_changes_with_everything_that_changes_the_ids():
    base = tokens.cache_key("tok", "data", "train", 128)
    assert (
        len(
            {
                base,
                tokens.cache_key("tok2", "data", "train", 128),
                tokens.cache_key("tok", "data2", "train", 128),
                tokens.cache_key("tok", "data", "test", 128),
                tokens.cache_key("tok", "data", "train", 64),
            }
        )
        == 5
    )


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path, minilm_tokenizer):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "k.npz").write_bytes(b"not a zip")
    toks, hit = tokens.load_or_tokenize(minilm_tokenizer, ["ok"], 8, key="k", cache_dir=tmp_path, progress=False)
    assert not hit and toks.lengths.tolist() == [3]
