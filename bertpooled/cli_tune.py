"""`bertpooled tune` and the MLproject's tune entry point: thin typer functions over bertpooled.run.tuning."""

from __future__ import annotations

from typing import Any

import typer

from bertpooled.cli_support import (
    _blank_to_none,
    _fields_and_sets,
    _hide_credentials,
    _interrupt_as_keyboard_interrupt,
    _mlproject_pairs,
    _progress,
    fail,
)
from bertpooled.errors import BertpooledError

# A study searches one mode at a time: `--modes` takes the place of the mode's option.
TUNE_AXES = ("mode",)
MLPROJECT_TUNE_OWN = (
    "modes",
    "space",
    "trials",
    "timeout",
    "parallel",
    "resume",
    "study",
    "storage",
    "pruner",
    "sampler_seed",
    "experiment",
    "output",
    "config",
    "executor",
    "address",
    "cpus_per_run",
    "gpus_per_run",
)


def tune_command(
    space: str = typer.Option(
        ...,
        help="What to search: field=LOW..HIGH[:log] or field=A|B|C, comma-separated (e.g. "
        "lr=1e-4..1e-2:log,lstm_units=8|16|32,batch_size=16|32|64,epochs=3..15), or a YAML file.",
    ),
    modes: str | None = typer.Option(None, help="Modes, comma-separated, one study each (default: basic,pool)."),
    trials: int = typer.Option(
        30, help="Trials per study (complete or pruned; a resumed study runs up to this many in all)."
    ),
    timeout: float | None = typer.Option(
        None, help="Stop starting trials after this many seconds (per study and worker)."
    ),
    parallel: int = typer.Option(
        1,
        min=1,
        help="Workers sharing each study: processes here (threads split between them), or Ray tasks with "
        "--executor ray.",
    ),
    executor: str = typer.Option(
        "local",
        help="Where the workers run: local (processes here) | ray (tasks on a Ray cluster; the storage must be a "
        "database every node reaches).",
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a local Ray)."
    ),
    cpus_per_run: float = typer.Option(1.0, help="CPUs Ray reserves for each worker (--executor ray)."),
    gpus_per_run: float = typer.Option(0.0, help="GPUs Ray reserves for each worker (--executor ray)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the studies of this --study name where they stopped."
    ),
    study: str = typer.Option("tune", help="Study name; each mode's study is NAME-MODE in the storage."),
    storage: str | None = typer.Option(
        None,
        help="Optuna storage URL (default: optuna.db beside an SQLite or file tracking store, the same PostgreSQL "
        "as a PostgreSQL one).",
    ),
    pruner: str = typer.Option(
        "median", help="median (stop a trial below the median val/accuracy of earlier trials at the same epoch) | none."
    ),
    sampler_seed: int = typer.Option(
        0, help="Seed of the TPE sampler (each worker and each resume draws its own stream from it)."
    ),
    experiment: str | None = typer.Option(None, help="Experiment for new studies (default: bertpooled-tuning)."),
    output: str | None = typer.Option(None, help="Also write each mode's best config to OUTPUT/best-MODE.yaml."),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML experiment the trials start from and the best config keeps (path, or a name in experiments/).",
    ),
    fields: dict[str, Any] | None = None,
    set_: list[str] | None = typer.Option(
        None,
        "--set",
        help="Any config field but mode as key=value, for every trial (repeatable); the option of the same name wins.",
    ),
    progress: bool | None = typer.Option(
        False, "--progress/--no-progress", help="Progress bars within trials (default: off)."
    ),
) -> None:
    """Search each mode's settings with Optuna on a validation split (never the test set); each trial a child run."""
    from bertpooled.config import parse_sets
    from bertpooled.run import sweep as sweeping
    from bertpooled.run import tuning

    _interrupt_as_keyboard_interrupt()
    _hide_credentials()

    def log(line: str) -> None:
        typer.echo(line, err=True)

    try:
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        plans = tuning.plan_studies(_blank_to_none(config), overrides, sweeping.parse_modes(modes), space, study)
        chosen = tuning.make_pruner(pruner)
        runner = _ray(_blank_to_none(executor) or "local", _blank_to_none(address), cpus_per_run, gpus_per_run)
        try:
            outcomes = [
                tuning.run_study(
                    plan,
                    trials=trials,
                    timeout=timeout,
                    resume=resume,
                    parallel=parallel,
                    storage=_blank_to_none(storage),
                    pruner=chosen,
                    sampler_seed=sampler_seed,
                    experiment=_blank_to_none(experiment),
                    output=_blank_to_none(output),
                    log=log,
                    progress=_progress(progress),
                    executor=runner,
                )
                for plan in plans
            ]
        finally:
            if runner is not None:
                runner.close()
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; the running trials and the study's run were marked KILLED: continue with --resume", code=130)
    for outcome in outcomes:
        params = ", ".join(f"{k}={v}" for k, v in outcome.best_params.items())
        typer.echo(
            f"{outcome.plan.mode}: best val/accuracy {outcome.best_value:.4f} (trial {outcome.best_trial}: {params}); "
            f"study run {outcome.parent_run_id}, best config: runs:/{outcome.parent_run_id}/best_config.yaml"
        )


def _ray(name: str, address: str | None, cpus: float, gpus: float):
    """None for local workers, else a connected Ray executor; a mistake is one line before any run."""
    if name == "local":
        if address:
            raise BertpooledError("--address names a Ray cluster: pass --executor ray with it, or leave it out")
        return None
    if name != "ray":
        raise BertpooledError(f"unknown executor {name!r}: pass --executor local or --executor ray")
    from bertpooled.run.ray_executor import RayExecutor

    runner = RayExecutor(address, cpus, gpus)
    runner.connect()
    return runner


def mlproject_tune(ctx: typer.Context) -> None:
    """`tune` for the MLproject's tune entry point, which declares no parameters (see `mlproject-train`): its own
    options (modes, space, trials, timeout, parallel, resume: true | false, study, storage, pruner, sampler_seed,
    experiment, output, config) keep their meaning; every other `-P key=value` is a config field for every trial."""
    pairs = _mlproject_pairs(ctx.args)
    own = {k: pairs.pop(k) for k in MLPROJECT_TUNE_OWN if k in pairs}
    if not own.get("space", "").strip():
        fail("the tune entry point needs -P space=...: e.g. -P space=lr=1e-4..1e-2:log,lstm_units=8|16|32")
    try:
        trials, parallel, seed = (
            int(own.get("trials", "30")),
            int(own.get("parallel", "1")),
            int(own.get("sampler_seed", "0")),
        )
        cpus, gpus = float(own.get("cpus_per_run", "1")), float(own.get("gpus_per_run", "0"))
        timeout = float(own["timeout"]) if own.get("timeout", "").strip() else None
        resume = {"": False, "false": False, "true": True}[own.get("resume", "").strip().lower()]
    except (ValueError, KeyError):
        fail(
            "trials, parallel and sampler_seed take integers, timeout seconds, resume true or false: pass e.g. "
            "-P trials=30 -P resume=true"
        )
    fields, sets = _fields_and_sets(pairs, exclude=TUNE_AXES)
    tune_command(
        space=own["space"],
        modes=own.get("modes"),
        trials=trials,
        timeout=timeout,
        parallel=parallel,
        executor=own.get("executor", "local"),
        address=own.get("address"),
        cpus_per_run=cpus,
        gpus_per_run=gpus,
        resume=resume,
        study=own.get("study", "tune"),
        storage=own.get("storage"),
        pruner=own.get("pruner", "median"),
        sampler_seed=seed,
        experiment=own.get("experiment"),
        output=own.get("output"),
        config=own.get("config"),
        fields=fields,
        set_=sets,
        progress=False,
    )
