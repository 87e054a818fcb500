"""Inputs that several runs in one process can share: the data subsets, the tokenizer, token ids, the embeddings,
the frozen backbone and its features.

A sweep runs its children in one process; each input is memoized under what determines it, so a child that
needs what an earlier one already read, loaded or tokenized gets the same object back. Runs on their own
never see this module (`run_experiment` without `shared` behaves as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import tokens
from bertpooled.model import backbone
from bertpooled.run import prepare as preparing
from bertpooled.run import runtime
from bertpooled.run.measure import Phases, data_digest_of

T = TypeVar("T")


class Shared:
    """A memo of run inputs, keyed by what determines each; lives as long as one sweep."""

    def __init__(self) -> None:
        self._memo: dict[tuple, Any] = {}

    def get(self, key: tuple, make: Callable[[], T]) -> tuple[T, bool]:
        """(value, hit): the value stored under `key`, made by `make()` the first time."""
        if key in self._memo:
            return self._memo[key], True
        value = make()
        self._memo[key] = value
        return value, False

    def read_data(
        self, config: Config, phases: Phases, progress: bool | None = None
    ) -> tuple[data.Imdb, data.Split, data.Split]:
        """`prepare.read_data`, once per source and subset settings; a reuse is timed as `data` like a read."""
        key = (
            "data",
            data.resolve_source(config.data),
            config.train_fraction,
            config.max_train_examples,
            config.max_test_examples,
            config.data_seed,
        )
        if key in self._memo:
            with phases.timed("data"):
                return self._memo[key]
        value, _ = self.get(key, lambda: preparing.read_data(config, phases, progress=progress))
        return value

    def read_training(
        self, config: Config, phases: Phases, progress: bool | None = None
    ) -> tuple[data.Imdb, data.Split]:
        """`prepare.read_training` (no test row: a tuning trial), once per source and training subset settings."""
        source = data.resolve_source(config.data)
        key = ("training", source, config.train_fraction, config.max_train_examples, config.data_seed)
        value, _ = self.get(key, lambda: preparing.read_training(config, phases, progress))
        return value

    def tokenizer(self, info: backbone.BackboneInfo) -> tuple[Any, str]:
        """(tokenizer, fingerprint) of the backbone, loaded once."""

        def load():
            tokenizer = backbone.load_tokenizer(info)
            return tokenizer, backbone.tokenizer_fingerprint(tokenizer)

        return self.get(("tokenizer", info.path), load)[0]

    def embeddings(self, info: backbone.BackboneInfo, whole_layer: bool = False) -> backbone.WordEmbeddings:
        """The backbone's frozen word table (and embedding layer), loaded once (no run writes to them: they are
        buffers)."""
        return self.get(
            ("embeddings", info.path, whole_layer), lambda: backbone.load_word_embeddings(info, whole_layer=whole_layer)
        )[0]

    def token_ids(
        self,
        info: backbone.BackboneInfo,
        imdb: data.Imdb,
        splits: dict[str, data.Split],
        max_len: int,
        progress: bool | None = None,
    ) -> tuple[dict[str, tokens.Tokens], bool]:
        """Token ids per split, as `prepare.prepare` makes them (same disk cache key); True when none was tokenized."""
        tokenizer, fingerprint = self.tokenizer(info)
        out, hits = {}, []
        for name, split in splits.items():
            # The same key as prepare.prepare's, so sweeps and single runs share the disk cache too.
            key = tokens.cache_key(fingerprint, data_digest_of(imdb.digest, split.ids), name, max_len)

            def load(split: data.Split = split, key: str = key, name: str = name) -> tuple[tokens.Tokens, bool]:
                return tokens.load_or_tokenize(
                    tokenizer,
                    split.texts,
                    max_len,
                    key=key,
                    cache_dir=data.cache_dir(),
                    progress=progress,
                    desc=f"tokenize {name}",
                )

            (toks, disk_hit), memo_hit = self.get(("tokens", key), load)
            out[name] = toks
            hits.append(memo_hit or disk_hit)
        return out, all(hits)

    @staticmethod
    def shares(config: Config) -> bool:
        """Whether `prepare` can share this config's inputs: today's `prepare.prepare` features (token ids and
        frozen word embeddings). Other features go through `prepare.prepare` itself: unshared, but right."""
        return config.feature_kind.tokens

    def prepare(
        self,
        config: Config,
        info: backbone.BackboneInfo,
        imdb: data.Imdb,
        train_split: data.Split,
        test_split: data.Split | None,
        phases: Phases,
        progress: bool | None = None,
        rt: runtime.Runtime | None = None,
        val: data.Split | None = None,
        sources: dict | None = None,
    ) -> preparing.Prepared:
        """`prepare.prepare` with every input shared: the same phases timed, the same token ids and features."""
        if not self.shares(config):
            return preparing.prepare(
                config, info, imdb, train_split, test_split, phases, progress=progress, rt=rt, val=val, sources=sources
            )
        with phases.timed("tokenize"):
            tokenizer, _ = self.tokenizer(info)
            splits = {k: v for k, v in (("train", train_split), ("val", val), ("test", test_split)) if v is not None}
            ids, hit = self.token_ids(info, imdb, splits, config.max_len, progress)
        with phases.timed("features"):
            embeddings = self.embeddings(info, config.feature_kind.whole_layer)
        return preparing.Prepared(
            config,
            info,
            imdb,
            train_split,
            test_split,
            ids["train"],
            ids.get("test"),
            tokenizer,
            embeddings,
            hit,
            phases,
            rt=rt or runtime.Runtime.resolve(config),
            val=val,
            val_tokens=ids.get("val"),
        )
