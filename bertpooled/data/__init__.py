"""Data: the IMDB reviews (`imdb`), their seeded subsets (`subsets`), token ids (`tokens`) and the frozen-feature
cache (`features`).

The IMDB reader's public names are this package's, so `from bertpooled import data` reads as `data.Imdb`.
"""

from bertpooled.data.imdb import Imdb, Split, cache_dir, check_source, load_imdb, resolve_source
from bertpooled.data.subsets import balanced_subset, validation_split

__all__ = [
    "Imdb",
    "Split",
    "balanced_subset",
    "cache_dir",
    "check_source",
    "load_imdb",
    "resolve_source",
    "validation_split",
]
