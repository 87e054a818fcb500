"""`bertpooled sweep` and the MLproject's sweep entry point: thin typer functions over bertpooled.sweep."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bertpooled.cli import shared
from bertpooled.cli.errors import fail, numbers_checked
from bertpooled.cli.mlproject import TRI_STATE, EntryPoint, MlprojectKind
from bertpooled.errors import BertpooledError

# A sweep's grid: `--modes` and `--seeds`/`--seed-list` take the place of these fields' options.
SWEEP_AXES = ("mode", "seed")
# The MLproject parameters that are no config field, and how each is parsed (text when no kind is given).
MLPROJECT_SWEEP_KINDS: dict[str, MlprojectKind] = {
    "parallel": int,
    "cpus_per_run": float,
    "gpus_per_run": float,
    "group_seeds": TRI_STATE,
}
MLPROJECT_SWEEP_OWN: tuple[str, ...] = (
    "modes",
    "seeds",
    "seed_list",
    "config",
    "format",
    "output",
    "executor",
    "address",
)

Seeds = Annotated[str | None, typer.Option(help="How many seeds: 3 means seeds 0,1,2 (default: 3).")]
SeedList = Annotated[str | None, typer.Option(help="Which seeds, comma-separated (instead of --seeds), e.g. 0,5.")]
ResumeParent = Annotated[
    str | None, typer.Option(help="A sweep's parent run id: run only its missing or unfinished children.")
]
TakeOver = Annotated[
    bool,
    typer.Option(
        "--take-over",
        help="With --resume-parent: continue a sweep that looks driven by another process you know is gone.",
    ),
]
Parallel = Annotated[
    int, typer.Option(min=1, help="Children run side by side in this many processes (threads split between them).")
]
GroupSeeds = Annotated[
    bool | None,
    typer.Option(
        "--group-seeds/--no-group-seeds",
        help="Train the seeds of each config together in one loop, each still its own child run (local sweeps one "
        "child at a time). Default: on for CUDA, off on CPU, where it measured slower (README, 'Seeds for free').",
    ),
]
Format = Annotated[str, typer.Option("--format", "-f", help="The closing comparison: table | markdown | json | csv.")]
Output = Annotated[str | None, typer.Option(help="Also write the comparison's report files to this folder.")]


@numbers_checked
def sweep_command(
    modes: shared.Modes = None,
    seeds: Seeds = None,
    seed_list: SeedList = None,
    resume_parent: ResumeParent = None,
    take_over: TakeOver = False,
    parallel: Parallel = 1,
    executor: shared.ExecutorName = "local",
    address: shared.Address = None,
    cpus_per_run: shared.CpusPerRun = 1.0,
    gpus_per_run: shared.GpusPerRun = 0.0,
    experiment: shared.Experiment = None,
    group_seeds: GroupSeeds = None,
    format: Format = "table",
    output: Output = None,
    config: shared.ConfigFile = None,
    fields: dict[str, Any] | None = None,
    set_: shared.Sets = None,
    progress: shared.Progress = None,
) -> None:
    """Train a grid of modes x seeds as child runs of one MLflow run, then compare them. Resumable."""
    from bertpooled.config import parse_sets
    from bertpooled.report.render import FORMATS
    from bertpooled.sweep import plan as planning

    shared.interrupt_as_keyboard_interrupt()
    shared.hide_credentials()
    fmt, said = shared.blank_to_none(format) or "table", []

    def log(line: str) -> None:
        said.append(line)  # "sweep <id>: ..." comes once the parent run exists
        typer.echo(line, err=True)

    try:
        if fmt not in FORMATS:
            raise BertpooledError(f"unknown report format {fmt!r}: pass --format one of {', '.join(FORMATS)}")
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        seed_values = planning.parse_seeds(seeds, seed_list)
        children = planning.plan(
            shared.local_config(shared.blank_to_none(config)), overrides, planning.parse_modes(modes), seed_values
        )
        where = dict(parallel=parallel, address=shared.blank_to_none(address), group_seeds=group_seeds)
        runner = shared.start_executor(
            executor, children, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, **where
        )
        resume_parent, experiment = shared.blank_to_none(resume_parent), shared.blank_to_none(experiment)
        report = _sweep_and_compare(children, runner, fmt, output, experiment, resume_parent, progress, log, take_over)
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if not any(line.startswith("sweep ") for line in said):
            fail("interrupted before the sweep's parent run was created; nothing to resume", code=130)
        fail("interrupted; the sweep and its running child were marked KILLED: resume with --resume-parent", code=130)
    shared.print_report(report, fmt, shared.blank_to_none(output))


def _sweep_and_compare(children, runner, fmt, output, experiment, resume_parent, progress, log, take_over):
    """Run the sweep on the started executor (closed after), then compare its children: the report."""
    from bertpooled.sweep import runner as sweeping

    try:
        outcome = sweeping.run_sweep(
            children,
            experiment=experiment,
            resume_parent=resume_parent,
            progress=shared.progress_bars(progress),
            log=log,
            executor=runner,
            take_over=take_over,
        )
    finally:
        runner.close()
    typer.echo(
        f"sweep {outcome.parent_run_id}: ran {len(outcome.ran)}, "
        f"{len(outcome.already_finished)} already finished; comparing its children",
        err=True,
    )
    return sweeping.compare_children(outcome, format=fmt, output=shared.blank_to_none(output))


# `mlflow run -e sweep`: the sweep's own parameters (group_seeds: true | false | auto) keep their meaning; every
# other `-P key=value` is a config field for every child, the same fields as `sweep`'s options (mode and seed are
# the grid's: -P modes=, -P seeds=).
MLPROJECT_SWEEP = EntryPoint(
    "sweep",
    "mlproject-sweep",
    sweep_command,
    own=MLPROJECT_SWEEP_OWN,
    kinds=MLPROJECT_SWEEP_KINDS,
    error="parallel, cpus_per_run and gpus_per_run take numbers, group_seeds true, false or auto: pass e.g. "
    "-P parallel=2 or -P group_seeds=true",
    axes=SWEEP_AXES,
)
