"""Several training processes logging into one SQLite store at once (groundwork for the reliability issue)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient


@pytest.mark.slow
def test_four_runs_started_at_once_all_finish_with_every_metric(store, tiny_bert, tiny_imdb):
    mlflow.set_tracking_uri(store)
    MlflowClient().create_experiment("bertpooled")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bertpooled",
                "train",
                "--config",
                str(ROOT / "experiments" / "smoke.yaml"),
                "--model",
                str(tiny_bert),
                "--data",
                str(tiny_imdb),
                "--max-len",
                "16",
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    assert sorted(r.data.params["config/seed"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({frozenset(r.data.metrics) for r in runs}) == 1  # every run logged the same set of metrics
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    mlflow.set_tracking_uri(None)
