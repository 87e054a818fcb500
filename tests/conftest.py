"""Fixtures: a tiny BERT saved like a real checkpoint, a tiny IMDB archive, a private tracking store."""

from __future__ import annotations

import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "waste", "hated"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and", "of", "this"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, ".", ","]


def make_review(rng, words: list[str], n: int) -> str:
    picks = [rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(n)]
    return " ".join(picks) + " ."


def write_imdb_tree(root: Path, per_label: int = 24, seed: int = 0) -> Path:
    """An aclImdb/ folder with `per_label` reviews per split and label, learnable from its words."""
    import random

    rng = random.Random(seed)
    base = root / "aclImdb"
    for split in ("train", "test"):
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            folder = base / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_label):
                rating = 9 if label == "pos" else 2
                (folder / f"{i}_{rating}.txt").write_text(make_review(rng, words, rng.randint(5, 30)), encoding="utf-8")
    return base


def write_imdb_archive(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    return path


@pytest.fixture(scope="session")
def tiny_imdb(tmp_path_factory) -> Path:
    """A tiny aclImdb_v1.tar.gz, in the official layout."""
    root = tmp_path_factory.mktemp("imdb")
    tree = write_imdb_tree(root)
    return write_imdb_archive(tree, root / "aclImdb_v1.tar.gz")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with a 40-word vocabulary, saved with save_pretrained: the hub-name loading path."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    if len(tokenizer) != len(VOCAB):
        # transformers 5 ignores vocab_file (the tokenizer would hold the special tokens only and map
        # every word to [UNK]); it takes the vocabulary itself instead.
        tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)}, do_lower_case=True)
    assert tokenizer("great film")["input_ids"] == [2, VOCAB.index("great"), VOCAB.index("film"), 3]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _no_experiment_carried_between_tests(monkeypatch):
    """`mlflow.set_experiment` writes MLFLOW_EXPERIMENT_ID into os.environ; each test starts without it."""
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _no_user_imdb(request, monkeypatch):
    """Only the imdb-marked test sees the user's BERTPOOLED_IMDB: a stale path there must not fail other tests,
    and no other test may read the real archive."""
    if request.node.get_closest_marker("imdb") is None:
        monkeypatch.delenv("BERTPOOLED_IMDB", raising=False)


@pytest.fixture()
def store(tmp_path, monkeypatch) -> str:
    """A private SQLite tracking store and token cache under tmp_path; returns the tracking URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return uri


def tiny_bert_model(layers: int = 2, seed: int = 0):
    """A tiny BertModel in memory (40-word vocabulary, hidden 32), in eval mode."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def id_batch(seed: int = 0, n: int = 4, length: int = 16):
    """Right-padded token ids (padding id 0) of real lengths length, length-5, 3 and 1, and those lengths."""
    import torch

    from bertpooled.model.pooling import lengths_mask

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, length), generator=gen)
    lengths = torch.tensor([length, length - 5, 3, 1][:n])
    ids[lengths_mask(lengths, length).logical_not()] = 0
    return ids, lengths


def wait_for_http(url: str, proc, timeout: float, log=lambda: "") -> None:
    """Poll `url` until it answers; fail if `proc` exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert proc.poll() is None, f"server exited: {log()}"
            assert time.time() < deadline, f"{url} did not come up"
            time.sleep(0.5)
