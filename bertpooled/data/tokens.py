"""Token ids for a split, cached on disk per (tokenizer, data digest, split, max_len): a second run skips
tokenizing."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bertpooled import files

CACHE_VERSION = "2"  # 2: each entry carries the sha256 of its arrays, checked on read
CHUNK = 2048
# Characters kept before tokenizing when the cut is provably harmless (see `_cut`); generous, because a
# wordpiece rarely covers more than a few characters, and a short result falls back to the full text.
CHARS_PER_TOKEN = 10


@dataclass(frozen=True)
class Tokens:
    """Right-padded ids (n, max_len) with [CLS] ... [SEP], and each row's real length."""

    ids: np.ndarray
    lengths: np.ndarray

    def take(self, idx: np.ndarray) -> Tokens:
        return Tokens(self.ids[idx], self.lengths[idx])

    def __len__(self) -> int:
        return len(self.lengths)


def cache_key(fingerprint: str, data_digest: str, split: str, max_len: int) -> str:
    """The cache file's name: changes whenever anything that changes the ids changes."""
    raw = "\0".join([CACHE_VERSION, fingerprint, data_digest, split, str(max_len)])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _cut_is_exact(tokenizer) -> bool:
    # BERT's normalizer works per character and its pre-tokenizer splits at whitespace, so the tokens of
    # text[:i] (i at whitespace) are a prefix of the tokens of text. Other tokenizers get the full text.
    backend = tokenizer.backend_tokenizer
    normalizer = type(backend.normalizer).__name__ if backend.normalizer is not None else "BertNormalizer"
    return type(backend.pre_tokenizer).__name__ == "BertPreTokenizer" and normalizer == "BertNormalizer"


def _cut(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    space = text.find(" ", chars)
    return text if space < 0 else text[:space]


def tokenize(
    tokenizer, texts: list[str], max_len: int, *, progress: bool | None = None, desc: str = "tokenize"
) -> Tokens:
    """Tokenize with truncation to `max_len` and right padding, in chunks, with a progress bar on a terminal."""
    ids = np.full((len(texts), max_len), tokenizer.pad_token_id or 0, dtype=np.int32)
    lengths = np.zeros(len(texts), dtype=np.int32)
    exact_cut = _cut_is_exact(tokenizer)
    limit = max_len * CHARS_PER_TOKEN
    bar = tqdm(
        total=len(texts), desc=desc, unit="review", disable=None if progress is None else not progress, leave=False
    )
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        cut = [_cut(t, limit) for t in chunk] if exact_cut else chunk
        enc = tokenizer(cut, truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]
        for j, row in enumerate(enc):
            # A cut text that came out short may have lost tokens: tokenize the whole review instead.
            if len(row) < max_len and cut[j] is not chunk[j]:
                row = tokenizer(chunk[j], truncation=True, max_length=max_len)["input_ids"]
            ids[start + j, : len(row)] = row
            lengths[start + j] = len(row)
        bar.update(len(chunk))
    bar.close()
    return Tokens(ids, lengths)


def load_or_tokenize(
    tokenizer,
    texts: list[str],
    max_len: int,
    *,
    key: str,
    cache_dir: Path | None,
    progress: bool | None = None,
    desc: str = "tokenize",
) -> tuple[Tokens, bool]:
    """Tokens from `cache_dir/tokens/<key>.npz` when present and intact, else tokenize and store them.

    Returns (tokens, hit).

    An entry holds the sha256 of its arrays and is used only when they still match it and the request's shape: a
    truncated, bit-flipped or replaced entry is rebuilt, with one warning line. A cache that cannot be written
    (read-only, full) only costs the next run the tokenizing; nothing half-written is left behind.
    """
    path = Path(cache_dir) / "tokens" / f"{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        tokens = _read_entry(path, len(texts), max_len)
        if tokens is not None:
            return tokens, True
    tokens = tokenize(tokenizer, texts, max_len, progress=progress, desc=desc)
    if path is not None:
        _write_entry(path, tokens)
    return tokens, False


def _digest(ids: np.ndarray, lengths: np.ndarray) -> str:
    h = hashlib.sha256(f"{ids.dtype}{ids.shape}{lengths.dtype}{lengths.shape}".encode())
    h.update(np.ascontiguousarray(ids).tobytes())
    h.update(np.ascontiguousarray(lengths).tobytes())
    return h.hexdigest()


def _read_entry(path: Path, rows: int, max_len: int) -> Tokens | None:
    """The entry at `path` if it is intact and has the requested shape; None (after a warning) otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, lengths, stored = data["ids"], data["lengths"], str(data["sha256"])
        if stored != _digest(ids, lengths):
            reason = "its content does not match its sha256"
        elif len(lengths) != rows or ids.shape != (rows, max_len):
            reason = f"it holds {ids.shape} ids, not ({rows}, {max_len})"
        else:
            return Tokens(ids, lengths)
    except Exception as exc:
        reason = f"unreadable ({type(exc).__name__})"
    print(
        f"warning: token cache entry {path} is damaged ({reason}): tokenizing again and replacing it", file=sys.stderr
    )
    return None


def _write_entry(path: Path, tokens: Tokens) -> None:
    """Store an entry: write then rename, so a concurrent or killed run never leaves a half-written one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.replacing(path, ".npz") as tmp:
            np.savez(tmp, ids=tokens.ids, lengths=tokens.lengths, sha256=np.array(_digest(tokens.ids, tokens.lengths)))
    except OSError as exc:
        print(
            f"warning: cannot write the token cache in {path.parent} ({exc.strerror or exc}): running without it; "
            "set BERTPOOLED_CACHE to a writable folder to keep token ids between runs",
            file=sys.stderr,
        )
