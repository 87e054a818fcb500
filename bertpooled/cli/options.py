"""The config fields as command-line options: one list, read from `Config` itself.

A field's name, type and default come from the dataclass; its help is the docstring written right below the
field in config/settings.py, read with `ast` (Python keeps no attribute docstrings at run time). So a new field is a
`train` and `sweep` option, an MLproject `-P` parameter and a `--set` key the moment it is added to Config,
with the help its author wrote once.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import itertools
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import typer

from bertpooled.config import Config

# Spellings that users and scripts rely on; every other field is `--name-with-dashes` (`--x/--no-x` for a bool).
SPELLINGS = {"finetune": ("--finetune/--frozen",)}
# How the command line parses a field, by annotation. Anything else (str, `str | None`, a typed value such as a
# PoolSpec or an Enum) arrives as text that `load_config` parses and validates with its one-line errors.
PRIMITIVES = {"bool": bool, "int": int, "float": float}


@dataclass(frozen=True)
class ConfigField:
    """One Config field as the CLI sees it."""

    name: str
    kind: type  # bool, int, float or str: what the command line parses before `load_config` sees the value
    default: Any  # the dataclass default
    doc: str  # the field's docstring, verbatim

    @property
    def decls(self) -> tuple[str, ...]:
        """The option's spelling, e.g. ("--max-len",) or ("--finetune/--frozen",)."""
        dash = self.name.replace("_", "-")
        return SPELLINGS.get(self.name, (f"--{dash}/--no-{dash}",) if self.kind is bool else (f"--{dash}",))

    @property
    def help(self) -> str:
        """The docstring and the dataclass default, in parentheses (typer's rich help drops "[...]" as markup).

        A field whose default is empty says in its docstring what unset means, so it shows no default.
        """
        shown = self.shown_default
        return " ".join(part for part in (self.doc, f"(default: {shown})" if shown else "") if part)

    @property
    def shown_default(self) -> str:
        if self.default is None or self.default == "":
            return ""
        if self.kind is bool:  # the flag that is in effect, e.g. --frozen
            on, _, off = self.decls[0].partition("/")
            return on if self.default else off
        return str(self.default.value if isinstance(self.default, enum.Enum) else self.default)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring below each annotated field of a class and its bases (a string right after `name: type = ...`)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # bases first, so a subclass's own docstring wins
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (a builtin base, or a frozen build): no help, still an option
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                # One paragraph: a docstring wrapped over several lines is still one line of --help.
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).splitlines())
    return docs


def _type_name(annotation: Any) -> str:
    # config.settings has `from __future__ import annotations`: annotations are their source text ("int", "str | None").
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


@functools.cache
def config_fields(cls: type = Config) -> tuple[ConfigField, ...]:
    """Every Config field, in declaration order: the one list that the options, the MLproject and the tests read."""
    docs = field_docs(cls)
    return tuple(
        ConfigField(f.name, PRIMITIVES.get(_type_name(f.type), str), _default(f), docs.get(f.name, ""))
        for f in dataclasses.fields(cls)
        if f.init
    )


def fields_but(exclude: Iterable[str] = ()) -> tuple[ConfigField, ...]:
    """The config fields a command takes as options; `exclude` names fields the command takes in its own way."""
    exclude = set(exclude)
    unknown = exclude - {f.name for f in config_fields()}
    if unknown:
        raise TypeError(f"not Config fields: {', '.join(sorted(unknown))}")
    return tuple(f for f in config_fields() if f.name not in exclude)


def _option(field: ConfigField) -> inspect.Parameter:
    # None when not given, never the dataclass default: an option left out must not override the YAML file.
    info = typer.Option(None, *field.decls, help=field.help, show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[field.kind])  # noqa: UP045 - typing.Union at runtime: typer reads it


def with_config_options(command: Callable[..., Any], *, exclude: Iterable[str] = ()) -> Callable[..., Any]:
    """A typer command function: `command`'s own options, with one option per config field (but `exclude`) in
    place of its `fields` parameter; the fields given arrive in `fields` as {name: value}, unset ones left out.

    Typer builds a command from `inspect.signature`, which reads `__signature__`: the generated options are
    ordinary typer options (help, types, flags, errors), and `command` itself stays a plain function that
    other commands (the MLproject's) call with a `fields` mapping.
    """
    options = fields_but(exclude)
    own = inspect.signature(command, eval_str=True).parameters  # typer reads Annotated options as objects
    if "fields" not in own:
        raise TypeError(f"{command.__name__} needs a `fields` parameter where the config options go")
    clash = {f.name for f in options} & set(own)
    if clash:
        raise TypeError(f"{command.__name__}: options {', '.join(sorted(clash))} are also config fields")
    params = []
    for name, param in own.items():
        params += (
            [_option(f) for f in options] if name == "fields" else [param.replace(kind=inspect.Parameter.KEYWORD_ONLY)]
        )
    names = [f.name for f in options]

    @functools.wraps(command)
    def typer_command(**values: Any) -> Any:
        given = {name: value for name in names if (value := values.pop(name)) is not None}
        return command(fields=given, **values)

    typer_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return typer_command
