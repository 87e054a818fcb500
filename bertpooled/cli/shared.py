"""What the command modules share: the options sweep and tune both take, one-line failures, MLproject arguments,
interrupts, credentials, progress bars, the printed report."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from bertpooled.cli.errors import fail

# The options `sweep` and `tune` share (typer reads the Annotated option; the default is the parameter's own).
Modes = Annotated[
    str | None,
    typer.Option(
        help="Modes, comma-separated: basic, pool, reference (default: basic,pool); tune: one study each, no reference."
    ),
]
ConfigFile = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML experiment every run starts from, and tune's best config keeps (path, or a name in experiments/).",
    ),
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Any config field but the grid's (mode, and a sweep's seed) as key=value, for every run (repeatable); "
        "the option of the same name wins.",
    ),
]
Experiment = Annotated[
    str | None,
    typer.Option(help="Experiment for a new sweep (default: bertpooled) or study (default: bertpooled-tuning)."),
]
Progress = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars (default: sweep on a terminal, tune off)."),
]
ExecutorName = Annotated[
    str,
    typer.Option(
        "--executor",
        help="Where the runs go: local (processes here) | ray (tasks on a Ray cluster; tune's study storage must "
        "be a database every node reaches).",
    ),
]
Address = Annotated[
    str | None, typer.Option(help="Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a local Ray).")
]
CpusPerRun = Annotated[
    float, typer.Option(help="CPUs Ray reserves for each sweep child or tuning worker (--executor ray).")
]
GpusPerRun = Annotated[
    float,
    typer.Option(
        help="GPUs Ray reserves for each sweep child or tuning worker; one that asks lands only where one is."
    ),
]


def local_config(config: str | None) -> str | None:
    """`--config` as a file load_config reads: a `runs:/<run id>/best_config.yaml` (a study's best config, as
    `bertpooled tune` prints it) is downloaded through MLflow first; a path or experiment name stays as given."""
    if not config or not config.startswith("runs:/"):
        return config
    from bertpooled.tracking.tuning import download_config

    return str(download_config(config))


def start_executor(name: str | None, children=(), **options):
    """The executor `--executor` names (`sweep.runner.executor_for`), started: checked and connected before any
    run exists, so a mistake is one line and leaves nothing behind."""
    from bertpooled.sweep.runner import executor_for

    runner = executor_for(blank_to_none(name), **options)
    runner.start(children)
    return runner


def progress_bars(flag: bool | None) -> bool | None:
    """None lets tqdm decide: bars on a terminal, none in CI logs (which get one line per epoch instead).

    Libraries' own bars (MLflow's artifact transfers, transformers' weight loading) follow the same choice.
    """
    if flag is False or (flag is None and not sys.stderr.isatty()):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return flag


def hide_credentials(tracking_uri: str | None = None) -> str | None:
    """MLFLOW_TRACKING_URI (and `tracking_uri`) without `user:password@`, moved to MLflow's basic-auth
    variables before MLflow sees the URI: MLflow prints the URI in lines of its own."""
    from bertpooled.tracking.runs import move_uri_credentials

    move_uri_credentials()
    return move_uri_credentials(tracking_uri) if tracking_uri else tracking_uri


def interrupt_as_keyboard_interrupt() -> None:
    """Ctrl-C and SIGTERM (a scheduler or `kill`) unwind as KeyboardInterrupt, so the run is ended KILLED, not
    left RUNNING; never inside a tracking-store write (see bertpooled.tracking.interrupts)."""
    from bertpooled.tracking import interrupts

    interrupts.install()


def blank_to_none(value: str | None) -> str | None:
    """MLproject passes a parameter left at "" as an empty argument: that means "not given"."""
    return value if value is None or value.strip() else None


def print_report(report, format: str, output: str | None, tracking_uri: str | None = None) -> None:
    """The report on stdout, where its files and comparison run went on stderr; no runs left = exit 2."""
    from bertpooled.report.render import render
    from bertpooled.report.verdict import register_hint

    text = render(report, format).rstrip("\n")
    typer.echo(text)
    # The next step closes what the user sees: on stderr, unless the report just shown on this terminal says it.
    if report.next_step and not (sys.stdout.isatty() and report.next_step in text):
        typer.echo(report.next_step, err=True)
    if register_hint(report):
        typer.echo(register_hint(report), err=True)
    if output:
        typer.echo(f"report files: {output}", err=True)
    if report.comparison_run_id:
        typer.echo(f"comparison run: {report.comparison_run_id}", err=True)
        _point_mlflow_run_at(report.comparison_run_id, tracking_uri)
    if not report.runs:
        fail("nothing to compare: no selected run has the contract's metrics and predictions (see the notes above)")


def _point_mlflow_run_at(comparison_run_id: str, tracking_uri: str | None) -> None:
    # Under `mlflow run -e compare` MLflow made a run for this command; the report lives in its own
    # comparison run, so this one is tagged as a comparison (compare-runs leaves it out) and points there.
    run = os.environ.get("MLFLOW_RUN_ID")
    if run and run != comparison_run_id:
        from bertpooled.tracking.comparisons import point_launcher_at

        point_launcher_at(tracking_uri, run, comparison_run_id)
