"""`bertpooled adapt`: a pooled backbone as a model of its own (the typer side; the work is bertpooled.run.adapt)."""

from __future__ import annotations

import typer

from bertpooled.cli.errors import numbers_checked
from bertpooled.cli.runs import check_register
from bertpooled.cli.shared import fail, progress_bars
from bertpooled.errors import BertpooledError


@numbers_checked
def adapt_command(
    pool: str = typer.Option("avg:2x1", help="The window pooling to adapt to (avg:WxH or max:WxH)."),
    pool_at: str = typer.Option("layer:2", "--pool-at", help="Where it sits: layer:K (after encoder layer K)."),
    separate_cls: bool = typer.Option(False, "--separate-cls", help="Keep [CLS] out of the windows (Funnel)."),
    model: str = typer.Option("minilm", help="The backbone to adapt (a name or a folder saved with save_pretrained)."),
    data: str | None = typer.Option(None, help="IMDB archive or folder (default: $BERTPOOLED_IMDB, else download)."),
    reviews: int = typer.Option(8000, help="Unlabelled reviews to adapt on (train/unsup, else training reviews)."),
    held_out: int = typer.Option(256, "--held-out", help="Further reviews kept aside to measure the match."),
    epochs: int = typer.Option(1, help="Passes over the reviews."),
    lr: float = typer.Option(1e-4, help="Adam learning rate of every backbone weight."),
    batch_size: int = typer.Option(32, "--batch-size", help="Reviews per step."),
    max_len: int = typer.Option(128, "--max-len", help="Tokens per review (runs that use the backbone should match)."),
    seed: int = typer.Option(0, help="Seed of the order and of the model's dropout."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the choice of reviews."),
    precision: str = typer.Option("auto", help="auto (bf16 where native), bf16 or fp32."),
    register: str | None = typer.Option(
        None, "--register", help="Register the adapted backbone as NAME or NAME@ALIAS in the model registry."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."
    ),
) -> None:
    """Adapt a backbone to a pooling inside it, once, on unlabelled reviews: it learns to give the unpooled
    backbone's last hidden states (pooled to its length). Logged as the MLflow model `backbone` of a run of kind
    `adapt`; later runs take it as `--model runs:/<run id>/backbone` (or `models:/NAME@ALIAS`) with the same pool."""
    run_adapt(dict(locals()))


def run_adapt(options: dict) -> None:
    """The command's work: the plan from its options, the run, and what to do with the backbone."""
    from bertpooled.cli.shared import interrupt_as_keyboard_interrupt

    progress = progress_bars(options.pop("progress"))
    interrupt_as_keyboard_interrupt()
    try:
        from bertpooled.config import Config
        from bertpooled.run.adapt import AdaptPlan, run_adaptation

        register = check_register(options.pop("register"))  # as train's --register: refused before any work
        plan_options = {k: options.pop(k) for k in ("reviews", "held_out", "epochs", "lr")}
        config = Config(mode="pool", features="encoder", finetune=True, **options)
        plan = AdaptPlan(config, **plan_options)
        outcome = run_adaptation(plan, register=register, log=typer.echo, progress=progress)
    except BertpooledError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: the adapt run was marked KILLED", code=130)
    typer.echo(
        f"adapted: held-out MSE to the unpooled backbone {outcome.before_mse:.4f} -> {outcome.after_mse:.4f}, "
        f"run {outcome.run_id}"
    )
    typer.echo(
        f"backbone: {outcome.model_uri}" + (f"   (registered: {outcome.registered})" if outcome.registered else "")
    )
    uri = outcome.registered or outcome.model_uri
    typer.echo(
        f"use it:   bertpooled train --set features=encoder --set finetune=true --model {uri} "
        f"--set pool={config.pool} --set pool_at={config.pool_at}"
        + (" --set separate_cls=true" if config.separate_cls else "")
    )
