"""One typed experiment config (`Config`, `load_config`): its fields and loading (settings), what each setting may be
(rules) and the one bounded YAML reader (files). Import from here; the modules are the layout."""

from bertpooled.config.files import read_yaml, resolve_config_path
from bertpooled.config.rules import (
    FEATURES,
    INITS,
    LSTM_BIASES,
    MAX_SEED,
    MAX_TEXT,
    MODE_ALIASES,
    MODE_POOL,
    MODES,
    PADDINGS,
    PRECISIONS,
    REFERENCE_TEXTS,
    TOKEN_FEATURES,
    FeatureKind,
)
from bertpooled.config.settings import FIELD_TYPES, LEGACY_SETTINGS, Config, load_config, parse_sets, typed_value

__all__ = [
    "FEATURES",
    "FIELD_TYPES",
    "INITS",
    "LEGACY_SETTINGS",
    "LSTM_BIASES",
    "MAX_SEED",
    "MAX_TEXT",
    "MODES",
    "MODE_ALIASES",
    "MODE_POOL",
    "PADDINGS",
    "PRECISIONS",
    "REFERENCE_TEXTS",
    "TOKEN_FEATURES",
    "Config",
    "FeatureKind",
    "load_config",
    "parse_sets",
    "read_yaml",
    "resolve_config_path",
    "typed_value",
]
