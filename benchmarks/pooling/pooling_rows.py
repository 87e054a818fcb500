"""The pooling study's rows: one `bertpooled sweep` per configuration, and the command each row runs."""

from __future__ import annotations

from dataclasses import dataclass, field

EXPERIMENT = "pooling-bench"
TAG = "bench:"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    args: tuple[str, ...]
    sizes: tuple[int, int, int, int] = (2000, 2000, 10, 3)
    """train reviews, test reviews, epochs, seeds."""
    extra: tuple[str, ...] = field(default=())


FROZEN = (2000, 2000, 10, 3)
# Fine-tuning runs the whole encoder forward and backward on every step: on 2 CPU cores a pass over 2,000
# reviews takes many minutes, so these rows train on fewer reviews for one epoch (stated in the table).
FINETUNE = (512, 500, 1, 2)
ROWS = [
    Row("basic", "word embeddings, no pooling (seed `basic`)", ("--config", "default", "--modes", "basic")),
    Row("pool", "word embeddings, avg:2x2 at input (seed `pool`)", ("--config", "default", "--modes", "pool")),
    Row("encoder", "encoder, no pooling (frozen)", ("--config", "encoder", "--modes", "basic")),
    Row("output", "encoder, avg:2x2 at output (frozen)", ("--config", "encoder_pool_output", "--modes", "basic")),
    Row("layer2", "encoder, avg:2x1 at layer:2 (frozen)", ("--config", "encoder_pool_layer2", "--modes", "basic")),
    Row("layer3", "encoder, avg:2x1 at layer:3 (frozen)", ("--config", "encoder_pool_layer3", "--modes", "basic")),
    Row("layer4", "encoder, avg:2x1 at layer:4 (frozen)", ("--config", "encoder_pool_layer4", "--modes", "basic")),
    Row("finetune", "encoder, no pooling (fine-tuned)", ("--config", "encoder_finetune", "--modes", "basic"), FINETUNE),
    Row(
        "layer2_finetune",
        "encoder, avg:2x1 at layer:2 (fine-tuned)",
        ("--config", "encoder_pool_layer2_finetune", "--modes", "basic"),
        FINETUNE,
    ),
]
BASELINE = "encoder"


QUICK = (64, 64, 1, 2)


def command(row: Row, data: str, max_len: int, quick: bool = False) -> list[str]:
    """The row's `bertpooled sweep` command (`quick`: every row at QUICK's sizes, a check of the script)."""
    train, test, epochs, seeds = QUICK if quick else row.sizes
    return [
        "bertpooled",
        "sweep",
        *row.args,
        "--seeds",
        str(seeds),
        "--data",
        data,
        "--max-len",
        str(max_len),
        "--max-train-examples",
        str(train),
        "--max-test-examples",
        str(test),
        "--epochs",
        str(epochs),
        "--experiment",
        EXPERIMENT,
        "--no-progress",
        "--set",
        f"description={TAG}{row.key}",
        *row.extra,
    ]
