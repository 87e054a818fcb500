"""The original study's published results (docs/original.md), kept in one place.

"The original" is the TensorFlow/Keras study this project reproduces; the report sets its numbers beside
the reproduced ones (:func:`original_study_rows`, called by ``bertpooled.report.build``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bertpooled.contract import PARAMS_HEAD, TIME_TOTAL
from bertpooled.report.numbers import median
from bertpooled.report.records import OriginalStudyRow, RunRecord
from bertpooled.report.stats import mean_ci


@dataclass(frozen=True)
class OriginalResult:
    """One row of the original study's results table."""

    mode: str  # this project's mode name
    original_name: str  # the name the original code used
    run: int
    accuracy: float
    wall_time_min: float
    head_params_keras: int
    head_params_pytorch: int


#: The results the original study reported (TensorFlow/Keras on a Colab GPU,
#: bert-base-uncased input embeddings, 3/4 of IMDB train, one wall-clock figure
#: per mode covering embedding, training and evaluation). Parameter counts are
#: the classifier head's; nn.LSTM's layout (lstm_bias=torch) keeps a second bias
#: vector, so the same layer counts 64 more there.
ORIGINAL_STUDY = (
    OriginalResult("basic", "basic_lstm", 1, 0.8144, 13.64, 50_257, 50_321),
    OriginalResult("pool", "pool", 1, 0.8156, 12.31, 25_681, 25_745),
    OriginalResult("basic", "basic_lstm", 2, 0.8250, 15.02, 50_257, 50_321),
    OriginalResult("pool", "pool", 2, 0.8048, 13.58, 25_681, 25_745),
)
#: The backbone the original study embedded its inputs with.
ORIGINAL_BACKBONE = "bert-base-uncased"
#: What the original's numbers can and cannot be compared with; shown above the original-study table.
ORIGINAL_STUDY_CAVEAT = (
    "The original timed one wall-clock figure per mode (embedding, training and evaluation) "
    "on a Colab GPU with bert-base-uncased embeddings; reproduced times are the median "
    "time/total_s on this project's hardware and backbone, so compare their ratio, not their size. "
    "Original head parameters are Keras counts; this project's head has Keras's layout (one LSTM gate bias, "
    "lstm_bias=keras) and the same counts at the same width; runs with lstm_bias=torch train nn.LSTM's second "
    "bias vector and count 64 more (50,321 and 25,745 at width 768)."
)


#: The original's protocol in the config's terms (docs/original.md): a reproduction run otherwise is not its like.
ORIGINAL_PROTOCOL = {"epochs": 10.0, "train_fraction": 0.75, "max_train_examples": 0.0, "max_len": 128.0}


def protocol_differences(group_configs: dict[str, dict[str, str]]) -> str:
    """What the reproduced groups' shared configs set unlike the original's protocol (`epochs=2,
    max_train_examples=1000`), "" when nothing; fields a group did not log are not compared."""
    found: dict[str, set[str]] = {}
    for config in group_configs.values():
        for name, original in ORIGINAL_PROTOCOL.items():
            value = config.get(name)
            try:
                differs = value is not None and float(value) != original
            except ValueError:
                differs = True
            if differs:
                found.setdefault(name, set()).add(str(value))
    return ", ".join(f"{name}={'/'.join(sorted(values))}" for name, values in found.items())


def original_study_rows(records: Sequence[RunRecord], confidence: float) -> list[OriginalStudyRow]:
    """The original study's runs, then one reproduced row per mode of ``records`` (mean accuracy with its
    interval, median total time and head parameters)."""
    rows = []
    for original in ORIGINAL_STUDY:
        rows.append(
            OriginalStudyRow(
                source=f"original run {original.run} ({original.original_name})",
                mode=original.mode,
                n_runs=1,
                accuracy=original.accuracy,
                accuracy_low=math.nan,
                accuracy_high=math.nan,
                total_time_min=original.wall_time_min,
                head_params=float(original.head_params_keras),
                backbones=ORIGINAL_BACKBONE,
            )
        )
    by_mode: dict[str, list[RunRecord]] = {}
    # Grouping need not use mode, but the original study is organised by it.
    for record in records:
        by_mode.setdefault(record.mode or "?", []).append(record)
    original_modes = [original.mode for original in ORIGINAL_STUDY]
    for mode in sorted(by_mode, key=lambda m: (m not in original_modes, m)):
        members = by_mode[mode]
        accuracy = mean_ci([m.accuracy for m in members], confidence)
        rows.append(
            OriginalStudyRow(
                source="reproduced",
                mode=mode,
                n_runs=len(members),
                accuracy=accuracy.mean,
                accuracy_low=accuracy.low,
                accuracy_high=accuracy.high,
                total_time_min=median(m.costs.get(TIME_TOTAL, math.nan) for m in members) / 60.0,
                head_params=median(m.costs.get(PARAMS_HEAD, math.nan) for m in members),
                # A local folder's path is long and machine-specific; its last part names it.
                backbones=", ".join(sorted({(m.backbone or "?").rstrip("/").rsplit("/", 1)[-1] for m in members})),
            )
        )
    return rows
