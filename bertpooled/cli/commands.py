"""The `bertpooled` command: thin typer functions; the work lives in plain functions elsewhere."""

from __future__ import annotations

from typing import Any

import typer

from bertpooled.cli.adapt import adapt_command
from bertpooled.cli.errors import OneLineErrors, numbers_checked
from bertpooled.cli.mlproject import ON_OFF, EntryPoint, register
from bertpooled.cli.options import with_config_options
from bertpooled.cli.runs import Register, check_register, register_command, register_trained, runs_app
from bertpooled.cli.shared import (
    blank_to_none,
    fail,
    hide_credentials,
    interrupt_as_keyboard_interrupt,
    local_config,
    print_report,
    progress_bars,
)
from bertpooled.cli.sweep import MLPROJECT_SWEEP, SWEEP_AXES, sweep_command
from bertpooled.cli.tune import MLPROJECT_TUNE, TUNE_AXES, tune_command
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


app.command("adapt")(adapt_command)


def config_command(name: str, *, exclude: tuple[str, ...] = ()):
    """Register the decorated function as command `name`, with one option per Config field (but `exclude`) where
    its `fields` parameter is (see bertpooled.cli.options); the function itself is returned unchanged."""

    def register(command):
        app.command(name)(with_config_options(command, exclude=exclude))
        return command

    return register


@config_command("train")
@numbers_checked
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
    register: Register = None,
) -> None:
    """Train and evaluate one configuration as an MLflow run."""
    from bertpooled.config import parse_sets
    from bertpooled.run.experiment import run_experiment

    interrupt_as_keyboard_interrupt()
    hide_credentials()
    try:
        overrides = {**parse_sets(set_), **(fields or {})}  # an option wins over --set
        registry_target = check_register(register)  # a bad name is refused before the run starts
        config = local_config(blank_to_none(config))
        cfg, target = _config_to_train(config, overrides, blank_to_none(resume), allow_code_change, take_over)
        try:
            outcome = run_experiment(
                cfg, progress=progress_bars(progress), log=lambda line: typer.echo(line, err=True), resume=target
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
    _print_trained(cfg, outcome, registry_target)


def _config_to_train(config: str | None, overrides: dict, resume: str | None, allow_code_change: bool, take_over: bool):
    """(config, None) for a new run; for `--resume`, the run's own config (checked against the options given)
    and the claimed run to continue."""
    from bertpooled.config import load_config
    from bertpooled.run.resume import prepare_resume

    if not resume:
        return load_config(config or None, overrides), None
    given = {k: v for k, v in overrides.items() if str(v).strip()}
    if config:
        given["config"] = config
    return prepare_resume(resume, given, allow_code_change=allow_code_change, take_over=take_over)


def _print_trained(cfg, outcome, registry_target=None) -> None:
    """What a finished `train` says: its headline numbers, where the run and its model are (and, with --register,
    the registered version)."""
    from bertpooled.contract import ACCURACY, PARAMS_HEAD, TIME_TOTAL, TIME_TRAIN

    m = outcome.metrics
    typer.echo(
        f"{cfg.mode} {cfg.model} seed {cfg.seed}: test accuracy {m[ACCURACY.key]:.4f}, "
        f"total {m[TIME_TOTAL]:.1f}s (train {m[TIME_TRAIN]:.1f}s), "
        f"head params {int(m[PARAMS_HEAD]):,}, run {outcome.run_id}"
    )
    typer.echo(f"runs: {outcome.runs_link}")
    from bertpooled.tracking.experiments import experiment_line
    from bertpooled.tracking.runs import tracking_uri, ui_hint

    typer.echo(f"run:  {outcome.run_link}   ({ui_hint()})")
    typer.echo(
        f"model: runs:/{outcome.run_id}/model   (from another folder, set MLFLOW_TRACKING_URI={tracking_uri()} "
        "to load or serve it)"
    )
    where = experiment_line(outcome.experiment_id)
    if where:
        typer.echo(where)
    register_trained(outcome.run_id, outcome.model_uri, registry_target)


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
@numbers_checked
def compare_runs_command(
    format: str = typer.Option("table", "--format", "-f", help="table | markdown | json | csv."),
    output: str | None = typer.Option(
        None, help="Also write report.md, report.json, report.csv and the plots to this folder."
    ),
    group_by: str | None = typer.Option(None, help="Config keys to group by, comma-separated (default: mode)."),
    baseline: str | None = typer.Option(
        "basic", help="Group (a value of the first group key) the others are compared with."
    ),
    experiment: str | None = typer.Option(
        None,
        help="Experiment whose runs to compare (default: bertpooled, or where the newest training runs are when "
        "it has none).",
    ),
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
    tracking_uri = hide_credentials(blank_to_none(tracking_uri))
    try:
        report = compare.compare_runs(
            format=blank_to_none(format) or "table",
            output=blank_to_none(output),
            group_by=blank_to_none(group_by) or ("mode",),
            baseline=baseline,
            experiment=blank_to_none(experiment),
            parent=blank_to_none(parent),
            run_id=ids or None,
            filter=blank_to_none(filter),
            tracking_uri=blank_to_none(tracking_uri),
            include_unfinished=include_unfinished,
            no_log=no_log,
            comparison_experiment=blank_to_none(comparison_experiment),
        )
    except BertpooledError as exc:
        fail(str(exc))
    print_report(
        report, blank_to_none(format) or "table", blank_to_none(output), tracking_uri=blank_to_none(tracking_uri)
    )


@app.command("serve")
@numbers_checked
def serve_command(
    model_uri: str = typer.Argument(
        ..., help="The logged model, e.g. runs:/<run id>/model or models:/<name>/<version>."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 keeps it on this machine."),
    port: int = typer.Option(5000, min=1, max=65535, help="Port to listen on."),
    max_body_mb: float = typer.Option(10.0, help="Largest request body in MB; larger ones get a 413."),
    max_text_chars: int = typer.Option(100_000, min=1, help="Longest text in one request; longer ones get a 413."),
    batch_size: int = typer.Option(256, min=1, help="Texts predicted at once: memory follows this, not the request."),
    max_inflight_mb: float = typer.Option(
        0.0, help="Request MB answered at once; past it a request gets a 503 with Retry-After (0: 2 x --max-body-mb)."
    ),
    threads: int = typer.Option(4, min=1, help="The server's own threads that parse and predict requests."),
) -> None:
    """Serve a logged model like `mlflow models serve --env-manager local`, bounded (413s, fixed-size batches)."""
    from bertpooled.serving.server import ServeLimits, serve

    hide_credentials()
    limits = ServeLimits(max_body_mb, max_text_chars, batch_size, max_inflight_mb, threads)
    serve(model_uri, host, port, limits, echo=typer.echo)


config_command("sweep", exclude=SWEEP_AXES)(sweep_command)
config_command("tune", exclude=TUNE_AXES)(tune_command)
app.command("register")(register_command)
app.add_typer(runs_app, name="runs")

# The MLproject's entry points, one row each (see bertpooled.cli.mlproject); sweep's and tune's beside their commands.
MLPROJECT_TRAIN = EntryPoint(
    "main",
    "mlproject-train",
    train,
    own=("config", "resume", "register"),
    kinds={"allow_code_change": ON_OFF},
    error="allow_code_change takes true or false: pass -P allow_code_change=true or leave it out",
)
MLPROJECT_COMPARE = EntryPoint(
    "compare",
    "mlproject-compare",
    compare_runs_command,
    own=("experiment", "parent", "filter", "group_by", "baseline", "format", "output", "comparison_experiment"),
    kinds={"run_ids": lambda text: [text]},
    axes=None,  # no config fields: an unknown parameter is refused
    renamed={"run_ids": "run_id"},
)
MLPROJECT_ADAPT = EntryPoint(
    "adapt",
    "mlproject-adapt",
    adapt_command,
    own=("pool", "pool_at", "model", "data", "precision", "register"),
    kinds={
        **dict.fromkeys(("reviews", "held_out", "epochs", "batch_size", "max_len", "seed", "data_seed"), int),
        "lr": float,
        "separate_cls": ON_OFF,
    },
    error="adapt's counts, seeds and lr take numbers and separate_cls true or false: e.g. -P reviews=8000 -P lr=1e-4",
    axes=None,  # no config fields beyond its own options: an unknown parameter is refused
)
MLPROJECT = (MLPROJECT_TRAIN, MLPROJECT_SWEEP, MLPROJECT_COMPARE, MLPROJECT_TUNE, MLPROJECT_ADAPT)
for entry_point in MLPROJECT:
    register(app, entry_point)


def main() -> None:  # pragma: no cover - console entry point for `python -m bertpooled`
    app(prog_name="bertpooled")


if __name__ == "__main__":  # pragma: no cover
    main()
