"""What the command modules share: one-line failures, MLproject arguments, interrupts, credentials, progress bars."""

from __future__ import annotations

import os
import sys

from bertpooled.cli_errors import fail
from bertpooled.cli_options import fields_but


def _progress(flag: bool | None) -> bool | None:
    """None lets tqdm decide: bars on a terminal, none in CI logs (which get one line per epoch instead).

    Libraries' own bars (MLflow's artifact transfers, transformers' weight loading) follow the same choice.
    """
    if flag is False or (flag is None and not sys.stderr.isatty()):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return flag


def _hide_credentials(tracking_uri: str | None = None) -> str | None:
    """MLFLOW_TRACKING_URI (and `tracking_uri`) without `user:password@`, moved to MLflow's basic-auth
    variables before MLflow sees the URI: MLflow prints the URI in lines of its own."""
    from bertpooled.tracking.runs import move_uri_credentials

    move_uri_credentials()
    return move_uri_credentials(tracking_uri) if tracking_uri else tracking_uri


def _interrupt_as_keyboard_interrupt() -> None:
    """Ctrl-C and SIGTERM (a scheduler or `kill`) unwind as KeyboardInterrupt, so the run is ended KILLED, not
    left RUNNING; never inside a tracking-store write (see bertpooled.run.interrupts)."""
    from bertpooled.run import interrupts

    interrupts.install()


def _fields_and_sets(pairs: dict[str, str], exclude: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """MLproject `--key value` pairs split as the command line would: a config field the command takes as an
    option (the same list, but `exclude`), else `--set key=value` (an old setting such as amp; anything else is
    --set's one-line error, and a sweep's mode or seed is refused by the sweep)."""
    names = {f.name for f in fields_but(exclude)}
    fields = {k: v for k, v in pairs.items() if k in names}
    return fields, [f"{k}={v}" for k, v in pairs.items() if k not in names]


def _mlproject_pairs(tokens: list[str]) -> dict[str, str]:
    """`--key value` pairs as `mlflow run` passes undeclared -P parameters; a malformed list is a one-line error."""
    args, pairs = list(tokens), {}
    while args:
        key = args.pop(0)
        if not key.startswith("--") or not args:
            fail(f"MLproject parameters arrive as --key value, got {key!r}: pass -P key=value")
        pairs[key[2:].replace("-", "_")] = args.pop(0)
    return pairs


def _blank_to_none(value: str | None) -> str | None:
    """MLproject passes a parameter left at "" as an empty argument: that means "not given"."""
    return value if value is None or value.strip() else None
