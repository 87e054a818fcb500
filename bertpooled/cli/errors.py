"""How every `bertpooled` command fails: one line on stderr, a non-zero exit, no traceback, for anything but a bug."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from bertpooled.errors import BertpooledError, os_error_line


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, a non-zero exit, no traceback: for user mistakes only."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """The one boundary every command's failures cross: a user mistake (BertpooledError), an OS error on a path
    or location the user gave (a name too long, a symlink loop, a file where a folder goes, a device, no
    permission, a full disk) or a failing tracking store becomes one line and exit 2; anything else is a bug and
    keeps its traceback. A command may report its own failures earlier; this catches the ones it does not."""

    def invoke(self, ctx):
        from bertpooled.tracking.probe import keep_tracebacks_out

        keep_tracebacks_out()  # a store failure is reported below in one line, not after MLflow's pages
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # a command's own exit (its own one line already printed), or click's usage errors
        except BertpooledError as exc:
            fail(str(exc))
        except Exception as exc:
            from bertpooled.tracking.probe import is_store_failure, store_error

            if isinstance(exc, OSError) and exc.filename is not None:
                fail(os_error_line(exc))  # the path says more than "the store": an artifact folder, a cache
            if is_store_failure(exc):
                fail(str(store_error(None, exc)))
            raise


def numbers_checked(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with every number it is given (its int and float options; config fields are checked by the
    config) refused in one line when it is not finite or is negative, before the command runs. Click takes
    `nan` and `inf` for a float option: `serve --max-body-mb nan` started and answered every request 500.
    Each command applies it once, so an option added later is held too (tests/test_fault_doors.py)."""

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(command).bind_partial(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name == "fields" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or value < 0:
                option = f"--{name.rstrip('_').replace('_', '-')}"
                fail(f"{option} {value} is not a finite number >= 0: pass e.g. {option} 1")
        return command(*args, **kwargs)

    checked.numbers_checked = True  # type: ignore[attr-defined]
    return checked
