"""`bertpooled tune` and the MLproject's tune entry point: thin typer functions over bertpooled.tune."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bertpooled.cli import shared
from bertpooled.cli.errors import fail, numbers_checked
from bertpooled.cli.mlproject import ON_OFF, EntryPoint, MlprojectKind
from bertpooled.errors import BertpooledError

# A study searches one mode at a time: `--modes` takes the place of the mode's option.
TUNE_AXES = ("mode",)
# The MLproject parameters that are no config field, and how each is parsed (text when no kind is given).
MLPROJECT_TUNE_KINDS: dict[str, MlprojectKind] = {
    "trials": int,
    "parallel": int,
    "sampler_seed": int,
    "cpus_per_run": float,
    "gpus_per_run": float,
    "timeout": lambda text: float(text) if text.strip() else None,
    "resume": ON_OFF,
}
MLPROJECT_TUNE_OWN: tuple[str, ...] = (
    "modes",
    "space",
    "study",
    "storage",
    "pruner",
    "experiment",
    "output",
    "config",
    "executor",
    "address",
)

Space = Annotated[
    str,
    typer.Option(
        help="What to search: field=LOW..HIGH[:log] or field=A|B|C, comma-separated (e.g. lr=1e-4..1e-2:log,"
        "lstm_units=8|16|32,batch_size=16|32|64,epochs=3..15), or a YAML file."
    ),
]
Trials = Annotated[
    int, typer.Option(help="Trials per study (complete or pruned; a resumed study runs up to this many in all).")
]
Timeout = Annotated[
    float | None, typer.Option(help="Stop starting trials after this many seconds (per study and worker).")
]
Workers = Annotated[
    int,
    typer.Option(
        min=1,
        help="Workers sharing each study: processes here (threads split between them), or Ray tasks with "
        "--executor ray.",
    ),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the studies of this --study name where they stopped.")]
Study = Annotated[str, typer.Option(help="Study name; each mode's study is NAME-MODE in the storage.")]
Storage = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage URL (default: optuna.db beside an SQLite or file tracking store, the same PostgreSQL as "
        "a PostgreSQL one)."
    ),
]
Pruner = Annotated[
    str,
    typer.Option(
        help="median (stop a trial below the median val/accuracy of earlier trials at the same epoch) | none."
    ),
]
SamplerSeed = Annotated[
    int, typer.Option(help="Seed of the TPE sampler (each worker and each resume draws its own stream from it).")
]
Output = Annotated[str | None, typer.Option(help="Also write each mode's best config to OUTPUT/best-MODE.yaml.")]


@numbers_checked
def tune_command(
    space: Space,
    modes: shared.Modes = None,
    trials: Trials = 30,
    timeout: Timeout = None,
    parallel: Workers = 1,
    executor: shared.ExecutorName = "local",
    address: shared.Address = None,
    cpus_per_run: shared.CpusPerRun = 1.0,
    gpus_per_run: shared.GpusPerRun = 0.0,
    resume: Resume = False,
    study: Study = "tune",
    storage: Storage = None,
    pruner: Pruner = "median",
    sampler_seed: SamplerSeed = 0,
    experiment: shared.Experiment = None,
    output: Output = None,
    config: shared.ConfigFile = None,
    fields: dict[str, Any] | None = None,
    set_: shared.Sets = None,
    progress: shared.Progress = False,
) -> None:
    """Search each mode's settings with Optuna on a validation split (never the test set); each trial a child run."""
    from bertpooled.config import parse_sets
    from bertpooled.sweep.plan import parse_modes
    from bertpooled.tune import plan as planning
    from bertpooled.tune import study as tuning

    shared.interrupt_as_keyboard_interrupt()
    shared.hide_credentials()
    try:
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        plans = planning.plan_studies(
            shared.local_config(shared.blank_to_none(config)), overrides, parse_modes(modes), space, study
        )
        chosen = tuning.make_pruner(pruner)
        runner = shared.start_executor(
            executor, address=shared.blank_to_none(address), cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run
        )
        options: dict[str, Any] = dict(
            trials=trials, timeout=timeout, resume=resume, parallel=parallel, sampler_seed=sampler_seed
        )
        options.update(storage=shared.blank_to_none(storage), experiment=shared.blank_to_none(experiment))
        outcomes = _run_studies(
            plans, runner, chosen, shared.blank_to_none(output), shared.progress_bars(progress), **options
        )
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; the running trials and the study's run were marked KILLED: continue with --resume", code=130)
    for outcome in outcomes:
        typer.echo(best_line(outcome))


def best_line(outcome) -> str:
    """What a finished study says: its best trial and run, and the command that trains the best config and
    registers the model (a trial logs none: it never sees the test set)."""
    from bertpooled.tune.space import shown

    params = shown(outcome.best_params)
    return (
        f"{outcome.plan.mode}: best val/accuracy {outcome.best_value:.4f} (trial {outcome.best_trial}, run "
        f"{outcome.best_run_id}: {params}); study run {outcome.parent_run_id}; train it and register its model: "
        f"bertpooled train --config runs:/{outcome.parent_run_id}/best_config.yaml "
        f"--register bertpooled-{outcome.plan.mode}@tuned"
    )


def _run_studies(plans, runner, pruner, output, progress, **options) -> list:
    """Each mode's study in turn, on the started executor (closed after)."""
    from bertpooled.tune import study as tuning

    try:
        return [
            tuning.run_study(
                plan, pruner=pruner, output=output, log=_say, progress=progress, executor=runner, **options
            )
            for plan in plans
        ]
    finally:
        runner.close()


# `mlflow run -e tune`: its own parameters (resume: true | false) keep their meaning; every other `-P key=value`
# is a config field for every trial.
MLPROJECT_TUNE = EntryPoint(
    "tune",
    "mlproject-tune",
    tune_command,
    own=MLPROJECT_TUNE_OWN,
    kinds=MLPROJECT_TUNE_KINDS,
    error="trials, parallel and sampler_seed take integers, timeout seconds, resume true or false: pass e.g. "
    "-P trials=30 -P resume=true",
    axes=TUNE_AXES,
    required={"space": "the tune entry point needs -P space=...: e.g. -P space=lr=1e-4..1e-2:log,lstm_units=8|16|32"},
)


def _say(line: str) -> None:
    typer.echo(line, err=True)
