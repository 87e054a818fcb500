"""`bertpooled sweep --group-seeds`: a config's seeds trained in one loop, each child run as if trained alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE, invoke_tiny
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.config import load_config
from bertpooled.contract import SWEEP_GROUP_NOTE_TAG, SWEEP_GROUP_SIZE_TAG, TIME_GROUP_TRAIN
from bertpooled.sweep import groups as grouped_sweep

# A grouped child's test probabilities against the same child trained alone (per_seed recurrence on CPU: the same
# kernels on the same shapes; only fused Adam's rounding of short tensors differs: see tests/test_grouped.py).
PROBABILITY_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
# What a grouped child adds, and what naturally differs between any two runs of one config.
GROUP_TAGS = {SWEEP_GROUP_SIZE_TAG, SWEEP_GROUP_NOTE_TAG}
PER_RUN_TAGS = {"mlflow.parentRunId", "mlflow.log-model.history", "checkpoint/sha256"}  # its history holds seconds


def invoke(tiny_bert, tiny_imdb, *args: str):
    return invoke_tiny("sweep", tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "2", "--no-progress", *args)


def children(experiment: str) -> dict[str, object]:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["sweep/child"]: r for r in runs if "sweep/child" in r.data.tags}


def artifacts(run_id: str, path: str = "") -> list[str]:
    out = []
    for item in MlflowClient().list_artifacts(run_id, path):
        out.extend(artifacts(run_id, item.path) if item.is_dir else [item.path])
    return sorted(out)


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def predictions(run_id: str, tmp: Path) -> pd.DataFrame:
    path = MlflowClient().download_artifacts(run_id, "predictions", str(tmp))
    (csv,) = Path(path).glob("*.csv")
    return pd.read_csv(csv)


def test_a_grouped_sweep_logs_the_children_an_ungrouped_sweep_logs(store, tiny_bert, tiny_imdb, tmp_path):
    plain = invoke(tiny_bert, tiny_imdb, "--no-group-seeds", "--experiment", "plain")
    assert plain.exit_code == 0, plain.output
    grouped = invoke(tiny_bert, tiny_imdb, "--group-seeds", "--experiment", "grouped")
    assert grouped.exit_code == 0, grouped.output
    assert (
        "training seeds 0,1 of basic together" in grouped.output
        and "training seeds 0,1 of pool together" in grouped.output
    )
    alone, together = children("plain"), children("grouped")
    assert sorted(alone) == sorted(together) == ["basic-s0", "basic-s1", "pool-s0", "pool-s1"]
    for label, mine in together.items():
        theirs = alone[label]
        assert mine.info.status == theirs.info.status == "FINISHED"
        # --no-group-seeds is today's path: no group tag, no group metric.
        assert not GROUP_TAGS & set(theirs.data.tags) and TIME_GROUP_TRAIN not in theirs.data.metrics
        assert mine.data.tags[SWEEP_GROUP_SIZE_TAG] == "2"
        assert mine.data.params == theirs.data.params, label  # every param, value for value
        assert set(mine.data.tags) == set(theirs.data.tags) | GROUP_TAGS, label
        same = set(theirs.data.tags) - PER_RUN_TAGS
        assert {k: mine.data.tags[k] for k in same} == {k: theirs.data.tags[k] for k in same}, label
        assert set(mine.data.metrics) == set(theirs.data.metrics) | {TIME_GROUP_TRAIN}, label
        assert artifacts(mine.info.run_id) == artifacts(theirs.info.run_id), label
        for key in ("train/loss", "train/accuracy", "time/epoch_s"):
            assert (
                [s for s, _ in history(mine.info.run_id, key)]
                == [s for s, _ in history(theirs.info.run_id, key)]
                == [1, 2]
            )
        np.testing.assert_allclose(
            [v for _, v in history(mine.info.run_id, "train/loss")],
            [v for _, v in history(theirs.info.run_id, "train/loss")],
            rtol=1e-5,
        )
        # The seed's share of the group's training time.
        # Each final time is logged to 4 significant digits, so the halves agree to that.
        assert mine.data.metrics["time/train_s"] == pytest.approx(mine.data.metrics["time/group_train_s"] / 2, rel=1e-3)
        assert mine.data.metrics["time/total_s"] > mine.data.metrics["time/train_s"]  # the share counts in the total
        # Quality: the same accuracy, probabilities equal within float tolerance, the same predicted labels.
        assert mine.data.metrics["test/accuracy"] == theirs.data.metrics["test/accuracy"], label
        a, b = (
            predictions(mine.info.run_id, tmp_path / "g" / label),
            predictions(theirs.info.run_id, tmp_path / "a" / label),
        )
        assert list(a["id"]) == list(b["id"])
        np.testing.assert_allclose(a["probability"], b["probability"], **PROBABILITY_TOLERANCE)
        assert ((a["probability"] >= 0.5) == (b["probability"] >= 0.5)).all()


def test_which_children_group():
    base = {"model": "minilm", "epochs": 1}
    configs = [
        load_config(SMOKE, {**base, "mode": mode, "seed": seed})
        for seed in (0, 1, 2)
        for mode in ("basic", "pool", "reference")
    ]
    # Seed-major plan: basic-s0, pool-s0, reference-s0, basic-s1, ...; a group runs where its first seed stood.
    assert grouped_sweep.plan_groups(configs) == [[0, 3, 6], [1, 4, 7], [2], [5], [8]]
    # A child that continues its checkpointed run trains alone; a lone seed left over is no group.
    assert grouped_sweep.plan_groups(configs, alone={0, 3}) == [[0], [1, 4, 7], [2], [3], [5], [6], [8]]
    finetune = [load_config(SMOKE, {**base, "features": "encoder", "finetune": True, "seed": s}) for s in (0, 1)]
    assert grouped_sweep.plan_groups(finetune) == [[0], [1]]


def test_group_seeds_default_is_on_for_cuda_only():
    import torch

    assert grouped_sweep.enabled(None, torch.device("cuda")) and not grouped_sweep.enabled(None, torch.device("cpu"))
    assert grouped_sweep.enabled(True, torch.device("cpu")) and not grouped_sweep.enabled(False, torch.device("cuda"))


def test_group_seeds_with_parallel_children_is_refused_before_any_run(store, tiny_bert, tiny_imdb):
    result = invoke(tiny_bert, tiny_imdb, "--group-seeds", "--parallel", "2")
    assert result.exit_code == 2 and "--group-seeds" in result.output and "--parallel" in result.output
    assert not Path("mlflow.db").exists() or not MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()]
    )


def test_a_group_that_fails_leaves_no_child_and_a_resume_trains_it_again(store, tiny_bert, tiny_imdb, monkeypatch):
    from bertpooled.run import grouped

    real = grouped.fit_group

    def pool_breaks(group, prepared, *args, **kwargs):
        if prepared.config.mode == "pool":
            raise RuntimeError("simulated crash")
        return real(group, prepared, *args, **kwargs)

    monkeypatch.setattr(grouped, "fit_group", pool_breaks)
    first = invoke(tiny_bert, tiny_imdb, "--group-seeds", "--experiment", "grouped")
    assert isinstance(first.exception, RuntimeError)
    (parent,) = [
        r
        for r in MlflowClient().search_runs([MlflowClient().get_experiment_by_name("grouped").experiment_id])
        if r.data.tags.get("bertpooled.kind") == "sweep"
    ]
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == "pool-s0: simulated crash"
    assert {label: r.info.status for label, r in children("grouped").items()} == {
        "basic-s0": "FINISHED",
        "basic-s1": "FINISHED",
    }

    monkeypatch.setattr(grouped, "fit_group", real)
    again = invoke(tiny_bert, tiny_imdb, "--group-seeds", "--resume-parent", parent.info.run_id)
    assert again.exit_code == 0, again.output
    assert (
        "4 children, 2 already finished, 2 to run" in again.output
        and "training seeds 0,1 of pool together" in again.output
    )
    after = children("grouped")
    assert {label: r.info.status for label, r in after.items()} == dict.fromkeys(
        ["basic-s0", "basic-s1", "pool-s0", "pool-s1"], "FINISHED"
    )
    assert after["pool-s1"].data.tags[SWEEP_GROUP_SIZE_TAG] == "2"


@pytest.mark.parametrize(
    "given, expected",
    [
        ([], None),
        (["--group_seeds", "true"], True),
        (["--group_seeds", "false"], False),
        (["--group_seeds", "auto"], None),
    ],
)
def test_the_mlproject_sweep_entry_point_takes_group_seeds(given, expected, monkeypatch):
    from bertpooled.errors import BertpooledError
    from bertpooled.sweep import runner

    seen = {}

    def capture(children, **kwargs):
        seen.update(kwargs)
        raise BertpooledError("captured")

    monkeypatch.setattr(runner, "run_sweep", capture)
    result = CliRunner().invoke(app, ["mlproject-sweep", "--modes", "basic", "--seeds", "2", *given])
    assert "captured" in result.output and seen["executor"].group_seeds is expected


def test_a_bad_group_seeds_parameter_is_one_line():
    result = CliRunner().invoke(app, ["mlproject-sweep", "--group_seeds", "maybe"])
    assert result.exit_code == 2 and "group_seeds true, false or auto" in " ".join(result.output.split()), result.output
