"""The MLproject's entry points: one table row each (`EntryPoint`), one shim that turns `mlflow run`'s arguments
into a call of the command the row names.

The entry points declare no parameters on purpose: MLflow logs every declared parameter, its default included
('' rows in the UI), and echoes each in the command, while one it does not declare arrives as `--key value` and
is logged only when given. So `-P epochs=3` arrives as `--epochs 3` and is passed as the command's epochs option:
the same config fields as the command's options, but the ones it takes its own way (a sweep's mode and seed).
The row's own parameters keep their meaning; a malformed list is a one-line error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.models import ParameterInfo

from bertpooled.cli.errors import fail
from bertpooled.cli.options import fields_but

# MLproject spellings of a flag: `-P group_seeds=auto` (None: the default), `-P resume=true`.
TRI_STATE = {"": None, "auto": None, "true": True, "false": False}
ON_OFF = {"": False, "false": False, "true": True}
# How an MLproject parameter's text is parsed: a function of the text (int, float, ...) or a dict of spellings.
MlprojectKind = Callable[[str], Any] | Mapping[str, Any]
# What the hidden commands accept: any `--key value`, checked here rather than by click.
CONTEXT: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass(frozen=True)
class EntryPoint:
    """One MLproject entry point: the hidden command it runs and how its parameters become the command's call."""

    name: str  # the entry point in MLproject (`mlflow run -e NAME`)
    hidden: str  # the hidden command MLproject's `command:` runs
    command: Callable[..., None]  # the command it calls
    own: tuple[str, ...] = ()  # parameters that are no config field, passed on as text
    kinds: Mapping[str, MlprojectKind] = field(default_factory=dict)  # parameters that are no config field, parsed
    error: str = ""  # the one line for a parameter of `kinds` that does not parse
    axes: tuple[str, ...] | None = ()  # config fields the command takes its own way; None: no config fields at all
    renamed: Mapping[str, str] = field(default_factory=dict)  # parameter -> the command's option of another name
    required: Mapping[str, str] = field(default_factory=dict)  # parameter -> the one line when it is missing

    @property
    def own_names(self) -> tuple[str, ...]:
        """Every parameter of this entry point that is no config field."""
        return (*self.own, *self.kinds)


def pairs_of(tokens: list[str]) -> dict[str, str]:
    """`--key value` pairs as `mlflow run` passes undeclared -P parameters; a malformed list is a one-line error."""
    args, pairs = list(tokens), {}
    while args:
        key = args.pop(0)
        if not key.startswith("--") or not args:
            fail(f"MLproject parameters arrive as --key value, got {key!r}: pass -P key=value")
        pairs[key[2:].replace("-", "_")] = args.pop(0)
    return pairs


def fields_and_sets(pairs: dict[str, str], exclude: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """MLproject `--key value` pairs split as the command line would: a config field the command takes as an
    option (the same list, but `exclude`), else `--set key=value` (an old setting such as amp; anything else is
    --set's one-line error, and a sweep's mode or seed is refused by the sweep)."""
    names = {f.name for f in fields_but(exclude)}
    fields = {k: v for k, v in pairs.items() if k in names}
    return fields, [f"{k}={v}" for k, v in pairs.items() if k not in names]


def parsed(own: dict[str, str], kinds: Mapping[str, MlprojectKind], error: str) -> dict[str, Any]:
    """The parameters named in `kinds` that were given, parsed by their kind (a type such as int, or a dict of
    spellings such as TRI_STATE); a malformed one is the one-line `error`."""
    try:
        return {
            k: kind[own[k].strip().lower()] if isinstance(kind, Mapping) else kind(own[k])
            for k, kind in kinds.items()
            if k in own
        }
    except (ValueError, KeyError):
        fail(error)


def defaults(command: Callable[..., None]) -> dict[str, Any]:
    """Every option of `command` at its default as a plain value: a typer command called as a function would get
    the (truthy) OptionInfo for an option left out whose default is a `typer.Option(...)`."""
    values = {}
    for param in inspect.signature(command).parameters.values():
        default = param.default.default if isinstance(param.default, ParameterInfo) else param.default
        if default is not param.empty and default is not ...:
            values[param.name] = default
    return values


def arguments(entry: EntryPoint, tokens: list[str]) -> dict[str, Any]:
    """The keyword arguments `entry.command` is called with for `mlflow run`'s `--key value` tokens."""
    pairs = pairs_of(tokens)
    own = {k: pairs.pop(k) for k in entry.own_names if k in pairs}
    for name, line in entry.required.items():
        if not own.get(name, "").strip():
            fail(line)
    if entry.axes is None and pairs:
        fail(f"unknown {entry.name} parameter(s) {', '.join(sorted(pairs))}: use {', '.join(entry.own_names)}")
    given = {k: v for k, v in own.items() if k not in entry.kinds} | parsed(own, entry.kinds, entry.error)
    args = {entry.renamed.get(k, k): v for k, v in given.items()}
    if entry.axes is not None:
        args["fields"], args["set_"] = fields_and_sets(pairs, exclude=entry.axes)
    return defaults(entry.command) | args


def register(app: typer.Typer, entry: EntryPoint) -> None:
    """Add `entry`'s hidden command to `app`: the one shim, bound to its row."""

    def shim(ctx: typer.Context) -> None:
        entry.command(**arguments(entry, ctx.args))

    shim.__doc__ = (
        f"`{entry.command.__name__}` for the MLproject's {entry.name} entry point (see bertpooled.cli.mlproject)."
    )
    app.command(entry.hidden, hidden=True, context_settings=CONTEXT)(shim)
