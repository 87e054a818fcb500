"""Inputs that several runs in one process can share: the data subsets, the tokenizer, token ids, the embeddings,
the frozen backbone and its features.

A sweep runs its children in one process; each input is memoized under what determines it, so a child that
needs what an earlier one already read, loaded or tokenized gets the same object back. Runs on their own
never see this module (`run_experiment` without `shared` behaves as before).
"""

from __future__ import annotations

import contextlib
from typing import Any

from bertpooled import data
from bertpooled.config import Config
from bertpooled.data import tokens
from bertpooled.model import backbone
from bertpooled.run import prepare as preparing
from bertpooled.run import runtime
from bertpooled.run.measure import Phases


class Shared(preparing.Memo):
    """The memo of run inputs the runs of one process share (`prepare.Memo`, whose `get` the one tokenizing path
    calls); lives as long as one sweep or tuning worker."""

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
        with phases.timed("data") if key in self else contextlib.nullcontext():
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
        return preparing.tokenizer_of(info, self)

    def token_ids(
        self,
        info: backbone.BackboneInfo,
        imdb: data.Imdb,
        splits: dict[str, data.Split],
        max_len: int,
        progress: bool | None = None,
    ) -> tuple[dict[str, tokens.Tokens], bool]:
        """`prepare.token_ids` through this memo: each split's ids tokenized (or read from disk) once."""
        return preparing.token_ids(info, imdb, splits, max_len, progress, self)

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
        *,
        rt: runtime.Runtime,
        progress: bool | None = None,
        val: data.Split | None = None,
        sources: dict | None = None,
    ) -> preparing.Prepared:
        """`prepare.prepare` with the inputs this config can share (`shares`) taken from this memo."""
        return preparing.prepare(
            config,
            info,
            imdb,
            train_split,
            test_split,
            phases,
            rt=rt,
            progress=progress,
            val=val,
            sources=sources,
            memo=self if self.shares(config) else None,
        )
