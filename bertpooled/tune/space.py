"""A tuning study's search space: parsed from text or YAML, checked against the config before any run, and
sampled by an Optuna trial.

Text: comma-separated `field=LOW..HIGH` (a range; `:log` samples it on a log scale, `:step=S` in steps of S) or
`field=A|B|C` (a choice), e.g. `lr=1e-4..1e-2:log,lstm_units=8|16|32|64,batch_size=16|32|64,epochs=3..15`. A
range is integer when its field is (`epochs`, `lstm_units`), else float. YAML: a mapping of field to the same
text, to a list (a choice) or to `{low: .., high: .., log: true, step: ..}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertpooled.config import FIELD_TYPES, Config, load_config, typed_value
from bertpooled.config.files import read_yaml
from bertpooled.errors import BertpooledError

# Fields a study may not search: the data every trial is scored on must stay the same (a trial on another
# subset or validation split is not comparable), the mode is the study's, and the rest change no result.
NOT_SEARCHABLE = {
    "mode": "a study searches one mode: pass --modes",
    "data": "every trial must read the same data",
    "data_seed": "every trial must be scored on the same validation split",
    "train_fraction": "every trial must be scored on the same validation split",
    "max_train_examples": "every trial must be scored on the same validation split",
    "validation_fraction": "every trial must be scored on the same validation split",
    "max_test_examples": "the search never reads the test set",
    "eval_each_epoch": "the search never reads the test set",
    "seed": "a seed is no setting to choose: compare tuned configs over several seeds instead",
    "device": "it changes no result",
    "eval_batch_size": "it changes no result",
    "precompute_mb": "it changes no result",
    "num_threads": "it changes no result",
    "latency_texts": "it changes no result",
    "throughput_batches": "it changes no result",
    "description": "it changes no result",
    "system_metrics": "it changes no result",
}


@dataclass(frozen=True)
class Dimension:
    """One searched field: a range (low, high, log, step) or a choice among `choices`."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This field's value for an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None, "a range has both ends (parse_space checks)"
        if FIELD_TYPES[self.name] == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """Values that between them reach every edge of this dimension (checked against the config up front)."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def __str__(self) -> str:
        if self.choices:
            return f"{self.name}={'|'.join(map(str, self.choices))}"
        extra = (":log" if self.log else "") + (f":step={self.step}" if self.step else "")
        return f"{self.name}={self.low}..{self.high}{extra}"


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    def suggest(self, trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def __str__(self) -> str:
        return ",".join(map(str, self.dimensions))


def shown(values: dict[str, Any]) -> str:
    """Sampled values as printed: `lr=0.01234, lstm_units=8` (4 significant digits; the run logs them whole)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def parse_space(text: str) -> SearchSpace:
    """`--space`: the text form, or a path to a YAML file (.yaml/.yml) holding the mapping form."""
    text = (text or "").strip()
    if not text:
        raise BertpooledError(
            "--space is empty: name what to search, e.g. --space lr=1e-4..1e-2:log,lstm_units=8|16|32"
        )
    if text.lower().endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        raw = read_yaml(path, "search space file")  # bounded: a space file is user input like a config file
        if not raw:
            raise BertpooledError(
                f"search space file {path} must map fields to ranges or choices, e.g. lr: 1e-4..1e-2:log"
            )
        return SearchSpace(tuple(_dimension(str(k), v, f"search space file {path}") for k, v in raw.items()))
    items = [item.strip() for item in text.split(",") if item.strip()]
    dims = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise BertpooledError(
                f"--space item {item!r} is not field=LOW..HIGH or field=A|B: write e.g. lr=1e-4..1e-2:log"
            )
        dims.append(_dimension(name.strip(), spec.strip(), "--space"))
    names = [d.name for d in dims]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BertpooledError(
            f"--space names {', '.join(repeated)} more than once: give each field one range or choice"
        )
    return SearchSpace(tuple(dims))


def _dimension(name: str, spec: Any, where: str) -> Dimension:
    if name not in FIELD_TYPES:
        raise BertpooledError(f"{where}: unknown field {name!r}; searchable fields: {', '.join(searchable())}")
    if name in NOT_SEARCHABLE:
        raise BertpooledError(
            f"{where}: {name} cannot be searched ({NOT_SEARCHABLE[name]}); searchable fields: {', '.join(searchable())}"
        )
    if isinstance(spec, list):
        return _choice(name, [str(v) for v in spec], where)
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or "low" not in spec or "high" not in spec:
            raise BertpooledError(
                f"{where}: {name} needs low and high (and optionally log, step), e.g. "
                f"{{low: 1e-4, high: 1e-2, log: true}}"
            )
        return _range(
            name,
            str(spec["low"]),
            str(spec["high"]),
            bool(spec.get("log")),
            None if spec.get("step") is None else str(spec["step"]),
            where,
        )
    text = str(spec).strip()
    if ".." in text:
        bounds, *flags = text.split(":")
        low, _, high = bounds.partition("..")
        log, step = False, None
        for flag in flags:
            key, _, value = flag.strip().partition("=")
            if key == "log" and not value:
                log = True
            elif key == "step" and value:
                step = value
            else:
                raise BertpooledError(f"{where}: {name}={text!r} has an unknown flag {flag!r}: use :log or :step=S")
        return _range(name, low.strip(), high.strip(), log, step, where)
    return _choice(name, [v.strip() for v in text.split("|")], where)


def _number(name: str, text: str, where: str) -> float | int:
    kind = FIELD_TYPES[name]
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise BertpooledError(
            f"{where}: {name} range bound {text!r} is not {'an integer' if kind == 'int' else 'a number'}"
        ) from None
    if not math.isfinite(value):
        raise BertpooledError(f"{where}: {name} range bound {text!r} is not a finite number")
    return value


def _range(name: str, low_text: str, high_text: str, log: bool, step_text: str | None, where: str) -> Dimension:
    if FIELD_TYPES[name] not in ("int", "float"):
        raise BertpooledError(f"{where}: {name} is not a number: search it as a choice, e.g. {name}=A|B")
    low, high = _number(name, low_text, where), _number(name, high_text, where)
    if not low < high:
        raise BertpooledError(
            f"{where}: {name} range {low_text}..{high_text} is empty: write LOW..HIGH with LOW < HIGH"
        )
    if log and low <= 0:
        raise BertpooledError(f"{where}: {name} range {low_text}..{high_text}:log needs LOW > 0 (a log scale has no 0)")
    step = _number(name, step_text, where) if step_text is not None else None
    if step is not None and (step <= 0 or log):
        raise BertpooledError(f"{where}: {name} step {step_text} must be positive, and cannot go with :log")
    return Dimension(name, low, high, log, step)


def _choice(name: str, values: list[str], where: str) -> Dimension:
    values = [v for v in values if v != ""]
    if len(values) < 2 or len(set(values)) != len(values):
        raise BertpooledError(f"{where}: {name} choice needs two or more distinct values, e.g. {name}=A|B")
    # Typed as the field is, through the config's own coercion: `lstm_units=8|16` is ints, `init=keras|torch` text.
    return Dimension(name, choices=tuple(typed_value(name, v) for v in values))


def searchable() -> list[str]:
    return [name for name in FIELD_TYPES if name not in NOT_SEARCHABLE]


def check_space(space: SearchSpace, base: Config) -> None:
    """Every edge of every dimension on top of `base` is a valid config (one-line error otherwise), before any run."""
    overrides = {k: v for k, v in base.to_dict().items() if v is not None}
    for dim in space.dimensions:
        for value in dim.corners():
            try:
                load_config(None, {**overrides, dim.name: value})
            except BertpooledError as exc:
                raise BertpooledError(
                    f"--space {dim}: {dim.name}={value} does not run with the base config ({exc})"
                ) from None
