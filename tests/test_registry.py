"""A run's model in MLflow's model registry, through the CLI: `train --register NAME@ALIAS`, `bertpooled register`,
bad names refused before any run starts, and the registered model loaded as `models:/NAME@ALIAS`."""

from __future__ import annotations

import mlflow
import pytest
from conftest import invoke_train, one_error_line, runs_in
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app


@pytest.mark.parametrize(
    "target, words",
    [
        ("team/pool", ["'/'", "NAME@ALIAS"]),
        ("pool:v1", ["':'"]),
        ("@champion", ["no model name"]),
        ("pool@latest", ["reserves", "'latest'"]),
        ("pool@v3", ["reserves", "'v3'"]),
        ("pool@two words", ["letters, digits"]),
    ],
)
def test_a_bad_name_or_alias_is_refused_before_any_run_starts(store, tiny_bert, tiny_imdb, target, words):
    result = invoke_train("--model", str(tiny_bert), "--data", str(tiny_imdb), "--register", target)
    one_error_line(result, "--register", *words)
    assert runs_in(store) == []


def test_train_registers_its_model_under_the_name_and_alias_and_it_loads_and_predicts(store, tiny_bert, tiny_imdb):
    result = invoke_train("--model", str(tiny_bert), "--data", str(tiny_imdb), "--register", "bp-pool@champion")
    assert result.exit_code == 0, result.output
    (run,) = runs_in(store)
    client = MlflowClient(store)
    version = client.get_model_version_by_alias("bp-pool", "champion")
    assert (str(version.version), version.run_id) == ("1", run.info.run_id)
    assert "registered: bp-pool version 1 as @champion" in result.output
    assert "models:/bp-pool@champion" in result.output and "bertpooled serve models:/bp-pool@champion" in result.output
    model = mlflow.pyfunc.load_model("models:/bp-pool@champion")
    assert len(model.predict(["a wonderful film", "dull"])) == 2

    # The same run again, by id: a second version, and the alias moves to it.
    again = CliRunner().invoke(app, ["register", run.info.run_id, "bp-pool@champion"])
    assert again.exit_code == 0, again.output
    assert str(client.get_model_version_by_alias("bp-pool", "champion").version) == "2"
    plain = CliRunner().invoke(app, ["register", run.info.run_id, "bp-other"])
    assert plain.exit_code == 0 and "models:/bp-other/1" in plain.output, plain.output


def test_register_refuses_a_run_without_a_model_and_an_unknown_run_in_one_line(store):
    client = MlflowClient(store)
    bare = client.create_run(client.create_experiment("elsewhere")).info.run_id
    one_error_line(CliRunner().invoke(app, ["register", bare, "x"]), bare, "RUNNING", "FINISHED")
    client.set_terminated(bare)
    one_error_line(CliRunner().invoke(app, ["register", bare, "x"]), "logged no model")
    one_error_line(CliRunner().invoke(app, ["register", "0" * 32, "x"]), "no run " + "0" * 32)
    one_error_line(CliRunner().invoke(app, ["register", bare, "x@latest"]), "reserves")
