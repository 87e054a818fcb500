"""The `bertpooled` command: thin typer functions; the work lives in plain functions elsewhere."""

from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

import typer

from bertpooled.errors import BertpooledError

app = typer.Typer(
    help="Does a pooling layer cut the compute of a language model without costing accuracy? MLflow-tracked experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Does a pooling layer cut the compute of a language model without costing accuracy?"""


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, a non-zero exit, no traceback: for user mistakes only."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _progress(flag: Optional[bool]) -> Optional[bool]:
    """None lets tqdm decide: bars on a terminal, none in CI logs (which get one line per epoch instead).

    Libraries' own bars (MLflow's artifact transfers, transformers' weight loading) follow the same choice.
    """
    if flag is False or (flag is None and not sys.stderr.isatty()):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return flag


def _sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler or `kill`) unwinds like Ctrl-C, so the run is ended KILLED, not left RUNNING."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command()
def train(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML experiment (path, or a name in experiments/)."),
    mode: Optional[str] = typer.Option(None, help="basic | pool (also basic_lstm, lstm_basic)."),
    model: Optional[str] = typer.Option(None, help="Backbone: minilm (offline default), a Hugging Face name or a local folder."),
    data: Optional[str] = typer.Option(None, help="IMDB archive (aclImdb_v1.tar.gz) or extracted aclImdb/ folder [env: BERTPOOLED_IMDB]."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the training subset."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size."),
    max_len: Optional[int] = typer.Option(None, help="Tokens per review, [CLS]/[SEP] included."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    seed: Optional[int] = typer.Option(None, help="Seed for init and batch order."),
    train_fraction: Optional[float] = typer.Option(None, help="Share of each label of the training split, in (0, 1]."),
    max_train_examples: Optional[int] = typer.Option(None, help="Cap on training reviews (0 = none)."),
    max_test_examples: Optional[int] = typer.Option(None, help="Cap on test reviews (0 = all)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any config field as key=value (repeatable); key= is ignored."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
) -> None:
    """Train and evaluate one configuration as an MLflow run."""
    from bertpooled.config import load_config, parse_sets

    _sigterm_as_interrupt()
    try:
        overrides = parse_sets(set_)
        named = {
            "mode": mode, "model": model, "data": data, "epochs": epochs, "batch_size": batch_size, "max_len": max_len,
            "lr": lr, "seed": seed, "train_fraction": train_fraction, "max_train_examples": max_train_examples,
            "max_test_examples": max_test_examples, "device": device,
        }
        overrides.update({k: v for k, v in named.items() if v is not None})
        cfg = load_config(config or None, overrides)
        from bertpooled.experiment import run_experiment

        outcome = run_experiment(cfg, progress=_progress(progress), log=lambda line: typer.echo(line, err=True))
    except BertpooledError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        fail("interrupted; the run was marked KILLED", code=130)
        return
    m = outcome.metrics
    typer.echo(
        f"{cfg.mode} {cfg.model} seed {cfg.seed}: test accuracy {m['test/accuracy']:.4f}, "
        f"total {m['time/total_s']:.1f}s (train {m['time/train_s']:.1f}s), "
        f"head params {int(m['params/head']):,}, run {outcome.run_id}"
    )
    typer.echo(f"runs: {outcome.runs_link}")
    typer.echo(f"run:  {outcome.run_link}   (start the UI with `mlflow ui` in the project root)")


def main() -> None:  # pragma: no cover - console entry point for `python -m bertpooled`
    app(prog_name="bertpooled")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
