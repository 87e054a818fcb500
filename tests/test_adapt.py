"""A pooled backbone as a model of its own (issue 29, item 6): `bertpooled adapt` adapts a backbone to a pooling
inside it on unlabelled reviews, logs it as an MLflow model (registrable, servable as embeddings), and later runs
take it as `model:`."""

from __future__ import annotations

import mlflow
import pytest
from conftest import one_error_line, runs_in
from mlflow.tracking import MlflowClient
from test_recipes import train, trained_run
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.contract import KIND_ADAPT, KIND_TAG

POOLED = ("--set", "pool=avg:2x1", "--set", "pool_at=layer:0")


def adapt(tiny_bert, data, *args: str):
    return CliRunner().invoke(
        app,
        [
            "adapt",
            *("--model", str(tiny_bert), "--data", str(data), "--pool-at", "layer:0", "--max-len", "16"),
            *("--reviews", "40", "--held-out", "8", "--batch-size", "8", "--lr", "1e-3", "--epochs", "8"),
            *args,
        ],
    )


@pytest.fixture()
def adapted(store, tiny_bert, tiny_imdb):
    result = adapt(tiny_bert, tiny_imdb, "--register", "tiny-pooled@adapted")
    assert result.exit_code == 0, result.output
    (run,) = [r for r in runs_in(store) if r.data.tags.get(KIND_TAG) == KIND_ADAPT]
    return run


def test_adapt_matches_the_unpooled_states_better_and_logs_a_registered_backbone(store, adapted, tiny_bert):
    metrics, params = adapted.data.metrics, adapted.data.params
    assert adapted.info.status == "FINISHED"
    # The adapted backbone gives the unpooled backbone's states (pooled) more closely than pooling inserted cold.
    assert metrics["adapt/held_out_mse"] < metrics["adapt/held_out_mse_before"]
    assert params["adapt/pool"] == "avg:2x1" and params["adapt/pool_at"] == "layer:0"
    assert params["adapt/data_source"] == "train (labels dropped)" and len(params["adapt/data_digest"]) == 64
    client = MlflowClient(store)
    version = client.get_model_version_by_alias("tiny-pooled", "adapted")
    assert version.run_id == adapted.info.run_id
    # Served as an embedding model through MLflow's own loader: one vector per text, none for none.
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model("models:/tiny-pooled@adapted")
    finally:
        mlflow.set_tracking_uri(None)
    vectors = model.predict(["great film", "awful boring waste of time"])
    assert len(vectors) == 2 and all(len(v) == 32 for v in vectors)
    assert model.predict([]) == []


def test_a_run_takes_the_adapted_backbone_as_its_model_and_learns_from_a_teacher_of_the_original(
    store, adapted, tiny_bert, tiny_imdb
):
    teacher = trained_run(store, train(tiny_bert, tiny_imdb))
    run_id = trained_run(
        store,
        train(
            tiny_bert, tiny_imdb, "--model", "models:/tiny-pooled@adapted", *POOLED, "--set", f"distill_from={teacher}"
        ),
    )
    run = MlflowClient(store).get_run(run_id)
    assert run.data.params["config/model"] == "models:/tiny-pooled@adapted"
    assert "backbones" in run.data.params["backbone/path"]  # the cache folder it was fetched into
    assert run.data.params["teacher/run_id"] == teacher
    assert run.data.metrics["test/accuracy"] >= 0


def test_a_run_with_another_pooling_is_refused_in_one_line_and_no_run_is_created(store, adapted, tiny_bert, tiny_imdb):
    before = len(runs_in(store))
    result = train(tiny_bert, tiny_imdb, "--model", f"runs:/{adapted.info.run_id}/backbone", "--set", "pool=none")
    one_error_line(result, "was", "adapted", "pool=avg:2x1")
    result = train(tiny_bert, tiny_imdb, "--model", "models:/no-such-model@x", *POOLED)
    one_error_line(result, "model=models:/no-such-model@x", "no model found")
    assert len(runs_in(store)) == before


@pytest.mark.parametrize(
    "args, words",
    [
        (("--reviews", "0"), ("--reviews",)),
        (("--pool", "none"), ("no", "window", "pooling")),
        (("--pool-at", "output"), ("layer:K",)),
        (("--reviews", "5000"), ("need", "reviews")),
        (("--register", "a/b"), ("--register", "'/'")),
        (("--register", "pooled@latest"), ("--register", "reserves")),  # train's rules: one check for both
        (("--max-len", "500"), ("max_len",)),
    ],
)
def test_bad_adapt_options_are_one_line_and_leave_no_run(store, tiny_bert, tiny_imdb, args, words):
    one_error_line(adapt(tiny_bert, tiny_imdb, *args), *words)
    assert [r.info.status for r in runs_in(store) if r.info.status != "FINISHED"] == []


def test_mlflow_run_adapts_through_the_adapt_entry_point(store, tiny_bert, tiny_imdb, monkeypatch):
    from conftest import mlflow_run

    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    params = {"model": str(tiny_bert), "data": str(tiny_imdb), "pool_at": "layer:0", "max_len": "16"}
    params |= {"reviews": "16", "held_out": "4", "batch_size": "8", "separate_cls": "true"}
    done = mlflow_run(params, store, entry="adapt")
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs_in(store)
    assert run.info.status == "FINISHED" and run.data.tags[KIND_TAG] == KIND_ADAPT
    assert run.data.params["adapt/separate_cls"] == "True" and run.data.params["adapt/reviews"] == "16"
    bad = mlflow_run({**params, "reviews": "many"}, store, entry="adapt")
    assert bad.returncode != 0 and "adapt's counts" in bad.stderr
