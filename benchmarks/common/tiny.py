"""A tiny BERT for studies whose subject is not the model (a store's first contact, a route through the package):
2 layers of width 32 on a given vocabulary, saved with its tokenizer as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path


def tiny_bert(folder: Path, vocab: list[str]) -> Path:
    """The BERT and its tokenizer saved in `folder` (made here); the same weights every time (seed 0)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder
