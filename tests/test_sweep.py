"""`bertpooled sweep`: nested children, shared inputs, resuming only what is missing, errors before any run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import SMOKE, invoke_tiny, mlflow_run
from mlflow.tracking import MlflowClient

from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.run import fit, measure, prepare, runtime
from bertpooled.run.experiment import run_experiment
from bertpooled.run.shared import Shared
from bertpooled.sweep import plan as sweep


def invoke(tiny_bert, tiny_imdb, *args: str):
    return invoke_tiny("sweep", tiny_bert, tiny_imdb, "--epochs", "1", *args)


def all_runs() -> list:
    if not Path("mlflow.db").exists():  # `store` chdirs to tmp_path; no database yet = no run (and no migrations)
        return []
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []


def children_of(parent_id: str) -> list:
    return [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_seeds_modes_and_the_grid():
    assert sweep.parse_seeds() == [0, 1, 2] and sweep.parse_seeds("2") == [0, 1]
    assert sweep.parse_seeds("", "0,5") == [0, 5] and sweep.parse_seeds("", "") == [0, 1, 2]
    assert sweep.parse_modes("basic_lstm, POOL,reference") == ["basic", "pool", "reference"]
    assert sweep.parse_modes("") == ["basic", "pool"]
    for bad in (
        lambda: sweep.parse_seeds("0"),
        lambda: sweep.parse_seeds("2", "0,1"),
        lambda: sweep.parse_seeds(None, "0,x"),
        lambda: sweep.parse_seeds(None, "1,1"),
        lambda: sweep.parse_modes("basic,basic_lstm"),
    ):
        with pytest.raises(BertpooledError):
            bad()
    children = sweep.plan(SMOKE, {"epochs": "1"}, ["basic", "pool"], [0, 1])
    assert [c.label for c in children] == ["basic-s0", "pool-s0", "basic-s1", "pool-s1"]
    assert len({c.key for c in children}) == 4 and all(c.config.epochs == 1 for c in children)
    assert [c.key for c in sweep.plan(SMOKE, {"epochs": 1}, ["basic", "pool"], [0, 1])] == [c.key for c in children]
    with pytest.raises(BertpooledError, match="--seeds"):
        sweep.plan(SMOKE, {"seed": "3"}, ["basic"], [0])


def test_shared_inputs_are_train_prepare_s_inputs_made_once(store, tiny_bert, tiny_imdb):
    cfg = load_config(SMOKE, {"model": str(tiny_bert), "data": str(tiny_imdb), "max_len": 16})
    info = prepare.check(cfg)
    shared = Shared()
    first, second = measure.Phases(), measure.Phases()
    data_a = shared.read_data(cfg, first)
    data_b = shared.read_data(load_config(SMOKE, {**cfg.to_dict(), "mode": "pool", "pool": "", "seed": 1}), second)
    assert data_a is data_b and set(first.seconds) == set(second.seconds) == {"data"}
    rt = runtime.Runtime.resolve(cfg)
    a = shared.prepare(cfg, info, *data_a, first, rt=rt)
    b = shared.prepare(load_config(SMOKE, {**cfg.to_dict(), "mode": "pool", "pool": ""}), info, *data_a, second, rt=rt)
    assert a.train_tokens is b.train_tokens and a.embeddings is b.embeddings and b.config.mode == "pool"
    assert {"tokenize", "features"} <= set(second.seconds) and b.tokens_cache_hit

    alone = prepare.prepare(cfg, info, *prepare.read_data(cfg, measure.Phases()), measure.Phases(), rt=rt)
    np.testing.assert_array_equal(alone.train_tokens.ids, a.train_tokens.ids)
    np.testing.assert_array_equal(alone.test_tokens.lengths, a.test_tokens.lengths)
    assert alone.embeddings.table.equal(a.embeddings.table)


def test_a_sweep_nests_its_children_and_a_resume_runs_only_what_is_missing(store, tiny_bert, tiny_imdb):
    result = invoke(tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "2", "--experiment", "grid")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    (parent,) = [r for r in all_runs() if r.data.tags.get("bertpooled.kind") == "sweep"]
    parent_id = parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep-basic+pool-2seeds"
    assert client.get_experiment(parent.info.experiment_id).name == "grid"
    assert parent.data.tags["sweep/seeds"] == "0,1" and parent.data.params["config/epochs"] == "1"
    assert {"sweep/shared_data_s", "sweep/shared_tokenize_s", "sweep/shared_features_s"} <= set(parent.data.metrics)

    children = children_of(parent_id)
    assert sorted(c.data.tags["sweep/child"] for c in children) == ["basic-s0", "basic-s1", "pool-s0", "pool-s1"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.info.experiment_id for c in children} == {parent.info.experiment_id}
    assert len({c.data.tags["sweep/key"] for c in children}) == 4
    # Every child found its inputs already prepared: none read, loaded or tokenized again.
    assert all(c.data.metrics["tokens/cache_hit"] == 1.0 for c in children)

    # The closing comparison: printed, logged as a comparison run, linked from the parent.
    assert "pool vs basic" in result.stdout and "McNemar" in result.stdout
    comparison_id = client.get_run(parent_id).data.tags["sweep/comparison_run_id"]
    assert client.get_run(comparison_id).data.tags["bertpooled.kind"] == "comparison"

    by_label = {c.data.tags["sweep/child"]: c for c in children}
    # Sharing inputs changes nothing a child computes: a run on its own gives the same numbers.
    alone = run_experiment(
        load_config(
            SMOKE,
            {"mode": "pool", "seed": 1, "model": str(tiny_bert), "data": str(tiny_imdb), "max_len": 16, "epochs": 1},
        ),
        log=lambda line: None,
    )
    for key in ("test/accuracy", "test/roc_auc", "params/head", "train/loss"):
        assert (
            alone.metrics.get(key, client.get_run(alone.run_id).data.metrics[key])
            == by_label["pool-s1"].data.metrics[key]
        )

    client.delete_run(by_label["pool-s1"].info.run_id)
    client.set_terminated(by_label["basic-s0"].info.run_id, "FAILED")
    again = invoke(
        tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "2", "--resume-parent", parent_id, "--format", "json"
    )
    assert again.exit_code == 0, again.output
    assert "4 children, 2 already finished, 2 to run" in again.output
    assert "[1/2] basic-s0" in again.output and "[2/2] pool-s1" in again.output
    finished = [c for c in children_of(parent_id) if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["sweep/child"] for c in finished) == ["basic-s0", "basic-s1", "pool-s0", "pool-s1"]
    untouched = {by_label[k].info.run_id for k in ("basic-s1", "pool-s0")}
    assert untouched <= {c.info.run_id for c in finished}
    assert client.get_run(parent_id).info.status == "FINISHED"

    # Other settings under the same parent would mix two experiments in one comparison: refused.
    other = invoke(
        tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "2", "--resume-parent", parent_id, "--lr", "0.01"
    )
    assert other.exit_code == 2 and "lr='0.001' there, '0.01' now" in other.output


def test_a_failing_child_stops_the_sweep_and_marks_it_failed(store, tiny_bert, tiny_imdb, monkeypatch):
    real = fit.train_and_evaluate

    def pool_breaks(prepared, **kwargs):
        if prepared.config.mode == "pool":
            raise RuntimeError("simulated crash")
        return real(prepared, **kwargs)

    monkeypatch.setattr(fit, "train_and_evaluate", pool_breaks)
    result = invoke(tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "1")
    assert isinstance(result.exception, RuntimeError)
    (parent,) = [r for r in all_runs() if r.data.tags.get("bertpooled.kind") == "sweep"]
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == "pool-s0: simulated crash"
    assert {c.data.tags["sweep/child"]: c.info.status for c in children_of(parent.info.run_id)} == {
        "basic-s0": "FINISHED",
        "pool-s0": "FAILED",
    }
    assert f"--resume-parent {parent.info.run_id}" in result.output
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "mode=pool"], ["--modes"]),
        (["--seeds", "2", "--seed-list", "0,1"], ["--seeds and --seed-list"]),
        (["--modes", "basic,fancy"], ["mode='fancy'"]),
        (["--max-len", "100"], ["max_len=100", "64 positions"]),
        (["--resume-parent", "0123456789abcdef0123456789abcdef"], ["unknown sweep parent"]),
        (["--format", "xml"], ["unknown report format 'xml'"]),
        (["--set", "reference_text=words", "--modes", "reference"], ["reference_text='words'"]),
    ],
)
def test_bad_sweeps_fail_in_one_line_before_any_run(args, words, store, tiny_bert, tiny_imdb):
    result = invoke(tiny_bert, tiny_imdb, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert all(word in errors[0] for word in words), errors[0]
    assert all_runs() == []


def test_resuming_a_run_that_is_not_a_sweep_is_refused(store, tiny_bert, tiny_imdb):
    mlflow.set_experiment("bertpooled")
    with mlflow.start_run(tags={"bertpooled.kind": "train"}) as run:
        pass
    result = invoke(tiny_bert, tiny_imdb, "--resume-parent", run.info.run_id)
    assert result.exit_code == 2 and "not a sweep parent" in result.output
    assert len(all_runs()) == 1


@pytest.mark.slow
def test_the_sweep_and_compare_entry_points_under_mlflow_run(store, tiny_bert, tiny_imdb):
    params = {
        "config": "experiments/smoke.yaml",
        "modes": "basic,reference",
        "seeds": "1",
        "model": str(tiny_bert),
        "data": str(tiny_imdb),
        "max_len": "16",
        "epochs": "1",
    }
    first = mlflow_run(params, store, entry="sweep")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "reference vs basic" in first.stdout or "reference is" in first.stdout, first.stdout
    client = MlflowClient()
    (parent,) = [r for r in all_runs() if r.data.tags.get("bertpooled.kind") == "sweep"]
    assert parent.info.status == "FINISHED" and parent.data.params["modes"] == "basic,reference"
    # Only the parameters given are logged raw (no '' rows) and none is echoed as an empty --set.
    assert "''" not in parent.data.params.values() and "--set model=''" not in first.stderr
    children = {c.data.tags["sweep/child"]: c for c in children_of(parent.info.run_id)}
    assert set(children) == {"basic-s0", "reference-s0"}

    # Running it again as the same run (`mlflow run --run-id`) resumes it: only the deleted child runs.
    client.delete_run(children["reference-s0"].info.run_id)
    again = mlflow_run(params, store, "--run-id", parent.info.run_id, entry="sweep")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 children, 1 already finished, 1 to run" in again.stderr
    assert {c.data.tags["sweep/child"] for c in children_of(parent.info.run_id)} == {"basic-s0", "reference-s0"}

    compared = mlflow_run({"parent": parent.info.run_id, "format": "json"}, store, entry="compare")
    assert compared.returncode == 0, compared.stderr[-3000:]
    report = json.loads(compared.stdout[compared.stdout.index("{") :])
    assert sorted(g["label"] for g in report["groups"]) == ["basic", "reference"]
    launcher = [r for r in all_runs() if r.data.tags.get("bertpooled.comparison_run_id") == report["comparison_run_id"]]
    assert len(launcher) == 1 and launcher[0].data.tags["bertpooled.kind"] == "comparison"
    assert set(launcher[0].data.params) == {"parent", "format"}  # only what was given, no '' rows


@pytest.mark.slow
def test_parallel_children_run_side_by_side_and_none_is_lost(store, tiny_bert, tiny_imdb):
    result = invoke(tiny_bert, tiny_imdb, "--modes", "basic,pool", "--seeds", "2", "--parallel", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    (parent,) = [r for r in all_runs() if r.data.tags.get("bertpooled.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = children_of(parent.info.run_id)
    seen = {c.data.tags["sweep/child"]: (c.info.status, c.data.tags.get("error")) for c in children}
    assert sorted(seen) == ["basic-s0", "basic-s1", "pool-s0", "pool-s1"], seen
    assert {status for status, _ in seen.values()} == {"FINISHED"}, seen
    assert {c.data.tags["sweep/parallel"] for c in children} == {"2"}
    keys = {c.data.tags["sweep/child"]: sorted(c.data.metrics) for c in children}
    assert len({tuple(k) for k in keys.values()}) == 1, keys  # every child logged every metric
    # The parent's tokenizing filled the on-disk cache, which the worker processes read.
    assert all(c.data.metrics["tokens/cache_hit"] == 1.0 for c in children)
