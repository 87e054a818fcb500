"""Golden metrics: a tiny run of each kind gives the numbers it gave when tests/golden_metrics.json was written.

Each kind of run goes through its public path on the tests' tiny IMDB and tiny BERT: `train` of each mode, one
tuning trial, the two children of a seed group (`sweep --group-seeds`). Every final metric but the times and the
cache hits (test/*, train/*, val/*, params/*, data/*, cost/*, tune/value) and the per-epoch history of the
training and validation metrics must equal the stored ones: the metric-equality check of a redesign
(benchmarks/redesign) as a test, so the next move of the house is checked by CI rather than by hand.

A change that is meant to change a number rewrites the file (then review its diff like code):

    BERTPOOLED_WRITE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden_metrics.py

Float equality holds for the torch build and CPU kind the file was written with (recorded in it: torch
2.13.0+cpu, x86_64, AVX512 today); elsewhere the kernels may round differently in the last bits, so there the
values are compared to a relative 1e-4, still far below what any change of the computation moves them by.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import optuna
import pytest
import torch
from conftest import SMOKE, invoke_tiny
from mlflow.tracking import MlflowClient

GOLDEN = Path(__file__).with_name("golden_metrics.json")
WRITE = os.environ.get("BERTPOOLED_WRITE_GOLDEN") == "1"
#: The final metrics compared: everything a run computes but its times, speeds, memory and cache hits.
COMPARED = ("test/", "train/", "val/", "params/", "data/", "cost/", "tune/value")
#: The per-epoch metrics whose whole history (step, value) is compared.
HISTORIES = ("train/loss", "train/accuracy", "val/accuracy", "test/accuracy")
SPACE = "lr=1e-3..1e-1:log,lstm_units=4|8"


def machine() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": str(torch.backends.cpu.get_cpu_capability()),
    }


def measured(run) -> dict:
    """What the golden file holds of a run: its compared final metrics and per-epoch histories."""
    client = MlflowClient()
    final = {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(COMPARED)}
    steps = {
        key: [[m.step, m.value] for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in HISTORIES
        if key in run.data.metrics
    }
    return {"final": final, "epochs": {k: v for k, v in steps.items() if len(v) > 1 or k != "test/accuracy"}}


def dumps(stored: dict) -> str:
    """The golden file's text: one line per metric, one line per history."""
    text = json.dumps(stored, indent=1, sort_keys=True)
    # json puts each [step, value] pair over four lines; a history on one line reads (and diffs) better.
    return re.sub(r"\[\s+(\d+),\s+([^\s\]]+)\s+\]", r"[\1, \2]", text) + "\n"


def runs(experiment: str) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return client.search_runs([exp.experiment_id])


def check(name: str, got: dict) -> None:
    """Compare `got` with the stored values of `name` (or store them, with BERTPOOLED_WRITE_GOLDEN=1)."""
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"machine": machine(), "runs": {}}
    if WRITE:
        stored["machine"] = machine()
        stored["runs"][name] = got
        GOLDEN.write_text(dumps(stored))
        return
    assert name in stored["runs"], f"{name} is not in {GOLDEN.name}: write it with BERTPOOLED_WRITE_GOLDEN=1"
    want = stored["runs"][name]
    assert sorted(got["final"]) == sorted(want["final"]), f"{name}: the metrics logged changed"
    assert sorted(got["epochs"]) == sorted(want["epochs"]), f"{name}: the per-epoch metrics logged changed"
    if stored["machine"] == machine():
        assert got == want, name
    else:  # another torch build or CPU kind: the same computation, rounded differently in the last bits
        assert got["final"] == pytest.approx(want["final"], rel=1e-4), name
        for key, history in want["epochs"].items():
            assert [s for s, _ in got["epochs"][key]] == [s for s, _ in history], (name, key)
            assert [v for _, v in got["epochs"][key]] == pytest.approx([v for _, v in history], rel=1e-4), (name, key)


@pytest.mark.parametrize("mode", ["basic", "pool", "reference"])
def test_a_training_run_of_each_mode_gives_the_golden_metrics(mode, store, tiny_bert, tiny_imdb):
    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--mode", mode, "--no-progress")
    assert result.exit_code == 0, result.output
    (run,) = runs("bertpooled")
    check(f"train-{mode}", measured(run))


def test_an_encoder_run_with_a_validation_split_gives_the_golden_metrics(store, tiny_bert, tiny_imdb):
    """Hidden states of the encoder, pooled between its layers, scored on a validation split every epoch."""
    extra = ("--mode", "pool", "--features", "encoder", "--pool", "avg:2x1", "--pool-at", "layer:1")
    extra += ("--validation-fraction", "0.25")
    result = invoke_tiny("train", tiny_bert, tiny_imdb, *extra, "--eval-each-epoch", "--no-progress")
    assert result.exit_code == 0, result.output
    (run,) = runs("bertpooled")
    check("train-encoder-val", measured(run))


def test_a_tuning_trial_gives_the_golden_metrics(store, tiny_bert, tiny_imdb):
    from bertpooled.tune import plan as planning
    from bertpooled.tune import study as tuning

    tiny = {"data": str(tiny_imdb), "model": str(tiny_bert), "max_len": 16}
    (plan,) = planning.plan_studies(SMOKE, tiny, ["pool"], SPACE, "golden")
    outcome = tuning.run_study(plan, trials=1, pruner=optuna.pruners.NopPruner(), log=lambda line: None)
    (trial,) = [r for r in runs("bertpooled-tuning") if r.info.run_id == outcome.best_run_id]
    check("tune-trial", {**measured(trial), "params": outcome.best_params})


def test_the_children_of_a_seed_group_give_the_golden_metrics(store, tiny_bert, tiny_imdb):
    args = ("--modes", "pool", "--seeds", "2", "--group-seeds", "--no-progress", "--experiment", "golden")
    result = invoke_tiny("sweep", tiny_bert, tiny_imdb, *args)
    assert result.exit_code == 0, result.output
    children = {r.data.tags["sweep/child"]: r for r in runs("golden") if "sweep/child" in r.data.tags}
    assert sorted(children) == ["pool-s0", "pool-s1"]
    for label, run in sorted(children.items()):
        assert run.data.tags["sweep/group_size"] == "2"
        check(f"group-{label}", measured(run))
