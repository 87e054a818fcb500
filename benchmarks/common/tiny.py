"""The tiny BERT of the tests and of the studies whose subject is not the model (a store's first contact, a route
through the package): layers of width 32, the same weights for the same seed; in memory, or saved with its tokenizer
as a Hugging Face folder. tests/conftest.py takes it from here, so both read the same model."""

from __future__ import annotations

from pathlib import Path


def tiny_bert_model(vocab_size: int, layers: int = 2, seed: int = 0):
    """A BertModel of `layers` layers (hidden 32, 2 heads, 64 positions) in eval mode, its weights drawn from `seed`."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def tiny_bert(folder: Path, vocab: list[str], layers: int = 2) -> Path:
    """`tiny_bert_model` on `vocab` (seed 0) and its tokenizer, saved in `folder` (made here when missing)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tiny_bert_model(len(vocab), layers).save_pretrained(folder)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder
