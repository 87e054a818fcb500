"""`bertpooled register` (a run's model into MLflow's model registry), `train --register`'s last step, and
`bertpooled runs end-abandoned` (RUNNING runs nothing drives, ended). The work lives in `tracking.registry` and
`tracking.abandoned`; these are the commands' words."""

from __future__ import annotations

from typing import Annotated

import typer

from bertpooled.cli.errors import fail, numbers_checked
from bertpooled.errors import BertpooledError

# `train --register` (an alias: train's signature stays short).
Register = Annotated[
    str | None,
    typer.Option(
        "--register",
        metavar="NAME[@ALIAS]",
        help="Register the run's model in MLflow's model registry as NAME (ALIAS points at the new version): load "
        "it as models:/NAME@ALIAS.",
    ),
]

runs_app = typer.Typer(
    help="Look after runs in the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db).",
    no_args_is_help=True,
    add_completion=False,
)


@numbers_checked
def register_command(
    run_id: str = typer.Argument(..., help="The training run whose model to register (compare-runs names the best)."),
    target: str = typer.Argument(..., metavar="NAME[@ALIAS]", help="Registered model name, and an alias to set."),
) -> None:
    """Register a finished run's model in MLflow's model registry (a new version; ALIAS points at it)."""
    from bertpooled.tracking import registry
    from bertpooled.tracking.runs import move_uri_credentials

    move_uri_credentials()  # MLflow prints the URI in lines of its own
    try:
        done = registry.register_run(run_id.strip(), registry.parse_target(target, option="NAME[@ALIAS]"))
    except BertpooledError as exc:
        fail(str(exc))
    say_registered(done)


def check_register(value: str | None):
    """`train --register`'s target, checked before any run starts (None when not asked)."""
    from bertpooled.tracking import registry

    return registry.parse_target(value) if value and value.strip() else None


def register_trained(run_id: str, model_uri: str, target) -> None:
    """`train --register`'s last step: the finished run's model registered; a failure says how to retry."""
    from bertpooled.tracking import registry

    if target is None:
        return
    try:
        done = registry.register(model_uri, target, run_id)
    except BertpooledError as exc:
        fail(f"{exc}; the run finished: register it later with `bertpooled register {run_id} {target}`", code=1)
    say_registered(done)


def say_registered(done) -> None:
    typer.echo(
        f"registered: {done.name} version {done.version}{f' as @{done.alias}' if done.alias else ''}: load it with "
        f"mlflow.pyfunc.load_model({done.uri!r}) or serve it with `bertpooled serve {done.uri}`"
    )


@runs_app.command("end-abandoned")
@numbers_checked
def end_abandoned_command(
    apply: bool = typer.Option(False, "--apply", help="End them (without it: only list what would be ended)."),
    experiment: str | None = typer.Option(None, help="Only this experiment (default: every active experiment)."),
    older_than: float = typer.Option(
        60.0, help="Minutes a run `mlflow run` created must have waited before it counts as never started."
    ),
    watch: float | None = typer.Option(
        None,
        help="Seconds to watch the heartbeats of runs owned elsewhere: one that does not move has no process "
        "behind it (default: the stale window, 3 heartbeats + 10 s).",
        show_default=False,
    ),
) -> None:
    """End RUNNING runs nothing drives: never started (FAILED) or whose owner is gone by heartbeat (KILLED)."""
    from bertpooled.tracking import abandoned, ownership
    from bertpooled.tracking.probe import check_tracking_reachable
    from bertpooled.tracking.runs import move_uri_credentials

    if watch is not None and watch <= ownership.HEARTBEAT_S:
        # Shorter than the interval a live owner beats at, a watch could see no beat and end a driven run.
        fail(
            f"--watch {watch:g} is not longer than the owners' heartbeat interval ({ownership.HEARTBEAT_S:g} s): a "
            f"live owner could be taken for gone; pass more than {ownership.HEARTBEAT_S:g} (default "
            f"{ownership.STALE_AFTER_S:g})"
        )
    move_uri_credentials()  # MLflow prints the URI in lines of its own
    check_tracking_reachable()

    def say_watching(count: int, seconds: float) -> None:
        typer.echo(f"watching the heartbeats of {count} run(s) owned elsewhere for {seconds:.0f} s ...", err=True)

    found = abandoned.end_abandoned(experiment, older_than * 60, apply=apply, watch_s=watch, on_watch=say_watching)
    for run, ended in found:
        verb = ("ended" if ended else "left (taken over since)") if apply else "would end"
        status = f" {run.status}" if ended or not apply else ""
        typer.echo(f"{verb} {run.run_name} ({run.run_id}){status}: {run.reason}")
    if not found:
        typer.echo("no abandoned runs: every RUNNING run is driven by a live process, or too new to judge")
    elif not apply:
        typer.echo(f"dry run: pass --apply to end these {len(found)} run(s)", err=True)
