"""The `bertpooled` command: thin typer functions; the work lives in plain functions elsewhere."""

from __future__ import annotations

import os
from typing import Any

import typer

from bertpooled.cli_errors import OneLineErrors
from bertpooled.cli_options import with_config_options
from bertpooled.cli_support import (
    _blank_to_none,
    _fields_and_sets,
    _hide_credentials,
    _interrupt_as_keyboard_interrupt,
    _mlproject_pairs,
    _progress,
    fail,
)
from bertpooled.cli_tune import TUNE_AXES, mlproject_tune, tune_command
from bertpooled.errors import BertpooledError

app = typer.Typer(
    cls=OneLineErrors,
    help="Does a pooling layer cut the compute of a language model without costing accuracy? MLflow-tracked "
    "experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Does a pooling layer cut the compute of a language model without costing accuracy?"""


def config_command(name: str, *, exclude: tuple[str, ...] = ()):
    """Register the decorated function as command `name`, with one option per Config field (but `exclude`) where
    its `fields` parameter is (see bertpooled.cli_options); the function itself is returned unchanged."""

    def register(command):
        app.command(name)(with_config_options(command, exclude=exclude))
        return command

    return register


@config_command("train")
def train(
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML experiment (path, or a name in experiments/); unset options come from it (default: the "
        "defaults below).",
    ),
    fields: dict[str, Any] | None = None,
    set_: list[str] | None = typer.Option(
        None,
        "--set",
        help="Any config field as key=value (repeatable); key= is ignored; the option of the same name wins.",
    ),
    resume: str | None = typer.Option(None, help="Continue this run from its last checkpoint (same run, same config)."),
    allow_code_change: bool = typer.Option(
        False,
        "--allow-code-change",
        help="With --resume: accept code that differs from the run's, recorded as tag resume/code_change.",
    ),
    take_over: bool = typer.Option(
        False,
        "--take-over",
        help="With --resume: continue a run that looks driven by another process (its heartbeat fresh) that you "
        "know is gone.",
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."
    ),
) -> None:
    """Train and evaluate one configuration as an MLflow run."""
    from bertpooled.config import load_config, parse_sets

    _interrupt_as_keyboard_interrupt()
    _hide_credentials()
    try:
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        from bertpooled.run.experiment import run_experiment
        from bertpooled.run.resume import prepare_resume

        resume = _blank_to_none(resume)
        if resume:
            given = {k: v for k, v in overrides.items() if str(v).strip()}
            if config:
                given["config"] = config
            cfg, target = prepare_resume(resume, given, allow_code_change=allow_code_change, take_over=take_over)
        else:
            cfg, target = load_config(config or None, overrides), None
        try:
            outcome = run_experiment(
                cfg, progress=_progress(progress), log=lambda line: typer.echo(line, err=True), resume=target
            )
        finally:
            if target is not None:
                target.release()
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(_interrupted_line(), code=130)
    except Exception as exc:
        from bertpooled.tracking.probe import is_store_failure, store_error

        if not is_store_failure(exc):
            raise  # a bug: its traceback is what a report needs
        fail(str(store_error(None, exc)))
    m = outcome.metrics
    typer.echo(
        f"{cfg.mode} {cfg.model} seed {cfg.seed}: test accuracy {m['test/accuracy']:.4f}, "
        f"total {m['time/total_s']:.1f}s (train {m['time/train_s']:.1f}s), "
        f"head params {int(m['params/head']):,}, run {outcome.run_id}"
    )
    typer.echo(f"runs: {outcome.runs_link}")
    from bertpooled.tracking.runs import tracking_uri, ui_hint

    typer.echo(f"run:  {outcome.run_link}   ({ui_hint()})")
    typer.echo(
        f"model: runs:/{outcome.run_id}/model   (from another folder, set MLFLOW_TRACKING_URI={tracking_uri()} "
        "to load or serve it)"
    )


# The MLproject parameters that are no config field, per entry point (every other one is a config field).
MLPROJECT_TRAIN_OWN = ("config", "resume", "allow_code_change")
MLPROJECT_SWEEP_OWN = (
    "modes",
    "seeds",
    "seed_list",
    "config",
    "format",
    "output",
    "parallel",
    "executor",
    "address",
    "cpus_per_run",
    "gpus_per_run",
    "group_seeds",
)
MLPROJECT_COMPARE = (
    "experiment",
    "parent",
    "run_ids",
    "filter",
    "group_by",
    "baseline",
    "format",
    "output",
    "comparison_experiment",
)


@app.command(
    "mlproject-train", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def mlproject_train(ctx: typer.Context) -> None:
    """`train` for the MLproject's main entry point, which declares no parameters.

    MLflow logs every declared parameter, its default included ('' rows in the UI), and echoes each in the
    command; a parameter it does not declare arrives as `--key value` and is logged only when given. So
    `-P epochs=3` arrives here as `--epochs 3` and is passed as `train`'s epochs option: the same config fields
    as `train`'s options; `config`, `resume` and `allow_code_change` keep their own meaning. A malformed list
    is a one-line error.
    """
    pairs = _mlproject_pairs(ctx.args)
    own = {k: pairs.pop(k) for k in MLPROJECT_TRAIN_OWN if k in pairs}
    config, resume = own.get("config"), own.get("resume")
    allow = own.get("allow_code_change", "false").strip().lower()
    if allow not in ("true", "false"):
        fail(f"allow_code_change={allow!r} is not valid: pass -P allow_code_change=true or leave it out")
    fields, sets = _fields_and_sets(pairs)
    # Every argument is passed: one left out would be typer's OptionInfo default, which is truthy.
    train(
        config=_blank_to_none(config),
        fields=fields,
        set_=sets,
        resume=resume,
        allow_code_change=allow == "true",
        take_over=False,
        progress=None,
    )


def _interrupted_line() -> str:
    """What an interrupted `train` says: only a run that exists was marked KILLED, and only one with a checkpoint
    can be resumed (a run stopped before its first epoch is refused by --resume)."""
    from bertpooled.tracking.runs import last_run

    run_id, checkpointed = last_run()
    if run_id is None:
        return "interrupted before any run was created; nothing to resume"
    if not checkpointed:
        return f"interrupted; run {run_id} was marked KILLED before its first checkpoint: start it again"
    return f"interrupted; the run was marked KILLED; resume it with: bertpooled train --resume {run_id}"


@app.command("compare-runs")
def compare_runs_command(
    format: str = typer.Option("table", "--format", "-f", help="table | markdown | json | csv."),
    output: str | None = typer.Option(
        None, help="Also write report.md, report.json, report.csv and the plots to this folder."
    ),
    group_by: str | None = typer.Option(None, help="Config keys to group by, comma-separated (default: mode)."),
    baseline: str | None = typer.Option(
        "basic", help="Group (a value of the first group key) the others are compared with."
    ),
    experiment: str | None = typer.Option(None, help="Experiment whose runs to compare (default: bertpooled)."),
    parent: str | None = typer.Option(None, help="A sweep's parent run id: compare its children."),
    run_id: list[str] | None = typer.Option(
        None, "--run-id", help="Compare these runs (repeatable, or comma-separated)."
    ),
    filter: str | None = typer.Option(
        None, "--filter", help="MLflow search filter, e.g. \"params.`config/epochs` = '10'\"."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="Tracking store (default: MLFLOW_TRACKING_URI, else MLflow's local default)."
    ),
    include_unfinished: bool = typer.Option(False, "--include-unfinished", help="Also count runs that did not finish."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log the report as a comparison run."),
    comparison_experiment: str | None = typer.Option(
        None, help="Experiment the comparison run is logged to (default: bertpooled-comparisons)."
    ),
) -> None:
    """Compare tracked runs by group: accuracy with CIs, costs, ratios and significance against a baseline."""
    from bertpooled.report import compare

    ids = [i.strip() for value in run_id or [] for i in value.split(",") if i.strip()]
    tracking_uri = _hide_credentials(_blank_to_none(tracking_uri))
    try:
        report = compare.compare_runs(
            format=_blank_to_none(format) or "table",
            output=_blank_to_none(output),
            group_by=_blank_to_none(group_by) or ("mode",),
            baseline=baseline,
            experiment=_blank_to_none(experiment) or compare.DEFAULT_EXPERIMENT,
            parent=_blank_to_none(parent),
            run_id=ids or None,
            filter=_blank_to_none(filter),
            tracking_uri=_blank_to_none(tracking_uri),
            include_unfinished=include_unfinished,
            no_log=no_log,
            comparison_experiment=_blank_to_none(comparison_experiment),
        )
    except BertpooledError as exc:
        fail(str(exc))
    _print_report(
        report, _blank_to_none(format) or "table", _blank_to_none(output), tracking_uri=_blank_to_none(tracking_uri)
    )


def _print_report(report, format: str, output: str | None, tracking_uri: str | None = None) -> None:
    """The report on stdout, where its files and comparison run went on stderr; no runs left = exit 2."""
    typer.echo(report.render(format).rstrip("\n"))
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


@app.command(
    "mlproject-compare", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def mlproject_compare(ctx: typer.Context) -> None:
    """`compare-runs` for the MLproject's compare entry point, which declares no parameters (see `mlproject-train`)."""
    pairs = _mlproject_pairs(ctx.args)
    unknown = sorted(set(pairs) - set(MLPROJECT_COMPARE))
    if unknown:
        fail(f"unknown compare parameter(s) {', '.join(unknown)}: use {', '.join(MLPROJECT_COMPARE)}")
    compare_runs_command(
        format=pairs.get("format", "table"),
        output=pairs.get("output"),
        group_by=pairs.get("group_by"),
        baseline=pairs.get("baseline", "basic"),
        experiment=pairs.get("experiment"),
        parent=pairs.get("parent"),
        run_id=[pairs["run_ids"]] if "run_ids" in pairs else None,
        filter=pairs.get("filter"),
        tracking_uri=None,
        include_unfinished=False,
        no_log=False,
        comparison_experiment=pairs.get("comparison_experiment"),
    )


# A sweep's grid: `--modes` and `--seeds`/`--seed-list` take the place of these fields' options.
SWEEP_AXES = ("mode", "seed")


@config_command("sweep", exclude=SWEEP_AXES)
def sweep_command(
    modes: str | None = typer.Option(
        None, help="Modes, comma-separated: basic, pool, reference (default: basic,pool)."
    ),
    seeds: str | None = typer.Option(None, help="How many seeds: 3 means seeds 0,1,2 (default: 3)."),
    seed_list: str | None = typer.Option(None, help="Which seeds, comma-separated (instead of --seeds), e.g. 0,5."),
    resume_parent: str | None = typer.Option(
        None, help="A sweep's parent run id: run only its missing or unfinished children."
    ),
    take_over: bool = typer.Option(
        False,
        "--take-over",
        help="With --resume-parent: continue a sweep that looks driven by another process you know is gone.",
    ),
    parallel: int = typer.Option(
        1, min=1, help="Children run side by side in this many processes (threads split between them)."
    ),
    executor: str = typer.Option(
        "local", help="Where children run: local (processes here) | ray (tasks on a Ray cluster)."
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a local Ray)."
    ),
    cpus_per_run: float = typer.Option(1.0, help="CPUs Ray reserves for each child (--executor ray)."),
    gpus_per_run: float = typer.Option(
        0.0, help="GPUs Ray reserves for each child; a GPU child lands only where one is."
    ),
    experiment: str | None = typer.Option(None, help="Experiment for a new sweep (default: bertpooled)."),
    group_seeds: bool | None = typer.Option(
        None,
        "--group-seeds/--no-group-seeds",
        help="Train the seeds of each config together in one loop, each still its own child run (local sweeps one "
        "child at a time). Default: on for CUDA, off on CPU, where it measured slower (README, 'Seeds for free').",
    ),
    format: str = typer.Option(
        "table", "--format", "-f", help="The closing comparison: table | markdown | json | csv."
    ),
    output: str | None = typer.Option(None, help="Also write the comparison's report files to this folder."),
    config: str | None = typer.Option(
        None, "--config", "-c", help="YAML experiment (path, or a name in experiments/)."
    ),
    fields: dict[str, Any] | None = None,
    set_: list[str] | None = typer.Option(
        None,
        "--set",
        help="Any config field but mode/seed as key=value, for every child (repeatable); the option of the same "
        "name wins.",
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."
    ),
) -> None:
    """Train a grid of modes x seeds as child runs of one MLflow run, then compare them. Resumable."""
    from bertpooled.config import parse_sets
    from bertpooled.report.render import FORMATS
    from bertpooled.run import sweep as sweeping

    _interrupt_as_keyboard_interrupt()
    _hide_credentials()
    fmt, said = _blank_to_none(format) or "table", []

    def log(line: str) -> None:
        said.append(line)  # "sweep <id>: ..." comes once the parent run exists
        typer.echo(line, err=True)

    try:
        if fmt not in FORMATS:
            raise BertpooledError(f"unknown report format {fmt!r}: pass --format one of {', '.join(FORMATS)}")
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        seed_values = sweeping.parse_seeds(seeds, seed_list)
        children = sweeping.plan(_blank_to_none(config), overrides, sweeping.parse_modes(modes), seed_values)
        runner = _sweep_executor(
            _blank_to_none(executor) or "local", _blank_to_none(address), parallel, cpus_per_run, gpus_per_run, children
        )
        try:
            outcome = sweeping.run_sweep(
                children,
                experiment=_blank_to_none(experiment),
                resume_parent=_blank_to_none(resume_parent),
                progress=_progress(progress),
                log=log,
                parallel=parallel,
                executor=runner,
                group_seeds=group_seeds,
                take_over=take_over,
            )
        finally:
            if runner is not None:
                runner.close()
        typer.echo(
            f"sweep {outcome.parent_run_id}: ran {len(outcome.ran)}, "
            f"{len(outcome.already_finished)} already finished; comparing its children",
            err=True,
        )
        report = sweeping.compare_children(outcome, format=fmt, output=_blank_to_none(output))
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if not any(line.startswith("sweep ") for line in said):
            fail("interrupted before the sweep's parent run was created; nothing to resume", code=130)
        fail("interrupted; the sweep and its running child were marked KILLED: resume with --resume-parent", code=130)
    _print_report(report, fmt, _blank_to_none(output))


def _sweep_executor(name: str, address: str | None, parallel: int, cpus: float, gpus: float, children):
    """None for local processes, else a connected Ray executor; every mistake is a one-line error before any run."""
    if name == "local":
        if address:
            raise BertpooledError("--address names a Ray cluster: pass --executor ray with it, or leave it out")
        return None
    if name != "ray":
        raise BertpooledError(f"unknown executor {name!r}: pass --executor local or --executor ray")
    if parallel > 1:
        raise BertpooledError(
            "--parallel is for --executor local; with ray, the cluster's CPUs and --cpus-per-run "
            "decide how many children run at once"
        )
    from bertpooled.run.ray_executor import RayExecutor

    runner = RayExecutor(address, cpus, gpus)
    runner.check(children)
    runner.connect()
    return runner


@app.command(
    "mlproject-sweep", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def mlproject_sweep(ctx: typer.Context) -> None:
    """`sweep` for the MLproject's sweep entry point, which declares no parameters (see `mlproject-train`).

    The sweep's own options (modes, seeds, seed_list, config, format, output, parallel, executor, address, cpus_per_run,
    gpus_per_run, group_seeds: true | false | auto) keep their meaning; every other `-P key=value` is a config field for
    every child, the same fields as `sweep`'s options (mode and seed are the grid's: -P modes=, -P seeds=).
    """
    pairs = _mlproject_pairs(ctx.args)
    own = {k: pairs.pop(k) for k in MLPROJECT_SWEEP_OWN if k in pairs}
    try:
        parallel = int(own.get("parallel", "1"))
        cpus, gpus = float(own.get("cpus_per_run", "1")), float(own.get("gpus_per_run", "0"))
        group = {"": None, "auto": None, "true": True, "false": False}[own.get("group_seeds", "").strip().lower()]
    except (ValueError, KeyError):
        fail(
            "parallel, cpus_per_run and gpus_per_run take numbers, group_seeds true, false or auto: pass e.g. "
            "-P parallel=2 or -P group_seeds=true"
        )
    fields, sets = _fields_and_sets(pairs, exclude=SWEEP_AXES)
    sweep_command(
        modes=own.get("modes"),
        seeds=own.get("seeds"),
        seed_list=own.get("seed_list"),
        resume_parent=None,
        take_over=False,
        parallel=parallel,
        executor=own.get("executor", "local"),
        address=own.get("address"),
        cpus_per_run=cpus,
        gpus_per_run=gpus,
        experiment=None,
        group_seeds=group,
        format=own.get("format", "table"),
        output=own.get("output"),
        config=own.get("config"),
        fields=fields,
        set_=sets,
        progress=None,
    )


@app.command("serve")
def serve_command(
    model_uri: str = typer.Argument(
        ..., help="The logged model, e.g. runs:/<run id>/model or models:/<name>/<version>."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 keeps it on this machine."),
    port: int = typer.Option(5000, min=1, max=65535, help="Port to listen on."),
    max_body_mb: float = typer.Option(10.0, help="Largest request body in MB; larger ones get a 413."),
    max_text_chars: int = typer.Option(100_000, min=1, help="Longest text in one request; longer ones get a 413."),
    batch_size: int = typer.Option(256, min=1, help="Texts predicted at once: memory follows this, not the request."),
) -> None:
    """Serve a logged model like `mlflow models serve --env-manager local`, bounded (413s, fixed-size batches)."""
    from bertpooled.serving.server import ServeLimits, serve

    _hide_credentials()
    serve(model_uri, host, port, ServeLimits(max_body_mb, max_text_chars, batch_size), echo=typer.echo)


# `tune` and its MLproject form: bertpooled.cli_tune (kept apart: this module stays readable in one sitting).
config_command("tune", exclude=TUNE_AXES)(tune_command)
app.command("mlproject-tune", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    mlproject_tune
)


def main() -> None:  # pragma: no cover - console entry point for `python -m bertpooled`
    app(prog_name="bertpooled")


if __name__ == "__main__":  # pragma: no cover
    main()
