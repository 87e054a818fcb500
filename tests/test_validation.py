"""The validation split: carved from the training subset, disjoint from train and test, label-balanced, seeded;
runs with it log val/* per epoch, and runs without it keep every number they had."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from conftest import SMOKE
from mlflow.tracking import MlflowClient

from bertpooled import data
from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.run import prepare
from bertpooled.run.measure import Phases


def test_validation_split_is_balanced_disjoint_seeded_and_covers_every_row():
    labels = np.array([0] * 30 + [1] * 50)
    train, val = data.validation_split(labels, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(80))
    assert (labels[val] == 0).sum() == 6 and (labels[val] == 1).sum() == 10  # 20% of each label
    again, val_again = data.validation_split(labels, 0.2, seed=3)
    assert np.array_equal(val, val_again) and np.array_equal(train, again)
    assert not np.array_equal(val, data.validation_split(labels, 0.2, seed=4)[1])
    assert data.validation_split(labels, 0.0)[1].size == 0


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_validation_fraction_out_of_range_is_a_config_error(value):
    with pytest.raises(BertpooledError, match="validation_fraction"):
        load_config(None, {"validation_fraction": value})


def test_runs_split_validation_from_training_rows_never_test_rows(tiny_imdb):
    cfg = load_config(SMOKE, {"data": str(tiny_imdb), "max_train_examples": 32, "validation_fraction": 0.25})
    _imdb, train, test = prepare.read_data(cfg, Phases())
    fit_rows, val = prepare.split_validation(cfg, train)
    assert set(fit_rows.ids) | set(val.ids) == set(train.ids)
    assert not set(fit_rows.ids) & set(val.ids)
    assert not set(val.ids) & set(test.ids) and all(i.startswith("train/") for i in val.ids)
    assert (val.labels == 1).sum() == (val.labels == 0).sum() == 4  # 25% of 16 per label
    # No split without the setting: the run's rows are exactly what they were.
    unsplit, none = prepare.split_validation(
        load_config(SMOKE, {"data": str(tiny_imdb), "max_train_examples": 32}), train
    )
    assert none is None and unsplit.ids == train.ids


def test_a_split_that_leaves_a_label_out_is_one_line_error(tiny_imdb):
    cfg = load_config(SMOKE, {"data": str(tiny_imdb), "max_train_examples": 4, "validation_fraction": 0.1})
    _, train, _ = prepare.read_data(cfg, Phases())
    with pytest.raises(BertpooledError, match=r"validation_fraction=0.1 of 4 training reviews"):
        prepare.split_validation(cfg, train)


def test_a_run_with_validation_logs_val_metrics_per_epoch(tiny_imdb, tiny_bert, store):
    from bertpooled.run.experiment import run_experiment

    cfg = load_config(
        SMOKE,
        {
            "data": str(tiny_imdb),
            "model": str(tiny_bert),
            "max_len": 16,
            "epochs": 2,
            "validation_fraction": 0.25,
            "latency_texts": 1,
            "throughput_batches": 1,
        },
    )
    outcome = run_experiment(cfg, log=lambda line: None, progress=False)
    client = MlflowClient(store)
    for key in ("val/accuracy", "val/f1", "val/roc_auc"):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert all(0 <= m.value <= 1 for m in history)
    run = client.get_run(outcome.run_id)
    assert (
        run.data.metrics["data/train_examples"] == 28 and run.data.metrics["data/val_examples"] == 8
    )  # 18 per label, 4 held out
    assert run.data.params["config/validation_fraction"] == "0.25"
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"training", "validation", "testing"}
    mlflow.set_tracking_uri(None)


def test_runs_grouped_by_their_sweep_may_differ_in_any_setting_but_not_within_a_sweep():
    """Each mode at its own tuned settings is two sweeps with different configs: grouped by the sweep's parent,
    compare-runs pairs them by seed; runs of one sweep must still share their config."""
    import pandas as pd

    from bertpooled.report.configs import shared_configs
    from bertpooled.report.records import RunRecord

    def record(run_id, group):
        return RunRecord(run_id, run_id, "FINISHED", group, {"mlflow.parentRunId": group}, "0", None, None, 0.8, {}, {})

    rows = [
        ("a0", "A", "0.001", "16"),
        ("a1", "A", "0.001", "16"),
        ("b0", "B", "0.004", "32"),
        ("b1", "B", "0.004", "32"),
    ]
    runs = pd.DataFrame(
        [
            {
                "run_id": r,
                "tags.mlflow.parentRunId": g,
                "params.config/lr": lr,
                "params.config/lstm_units": units,
                "params.config/seed": r[1],
            }
            for r, g, lr, units in rows
        ]
    )
    records = [record(r, g) for r, g, _, _ in rows]
    configs = shared_configs(runs, records, ["mlflow.parentRunId"], [])
    assert configs["A"]["lr"] == "0.001" and configs["B"]["lstm_units"] == "32"
    with pytest.raises(BertpooledError, match="differ in lr"):
        shared_configs(runs, records, ["mode"], [])
    runs.loc[1, "params.config/lr"] = "0.002"  # a sweep whose runs differ is still refused
    with pytest.raises(BertpooledError, match="lr"):
        shared_configs(runs, records, ["mlflow.parentRunId"], [])
