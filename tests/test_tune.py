"""`bertpooled tune`: Optuna studies on a validation split, tracked as a parent run with one child per trial,
resumable, shared by parallel workers, and blind to the test set."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import SMOKE, one_error_line
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.cli.tune import best_line
from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.tracking import ui_view
from bertpooled.tune import plan as planning
from bertpooled.tune import study as tuning
from bertpooled.tune.space import parse_space

SPACE = "lr=1e-3..1e-1:log,lstm_units=4|8"


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report, and nothing else: a pruned trial on demand."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


@pytest.fixture()
def tiny(tiny_imdb, tiny_bert, store):
    """The trials' options: the smoke protocol on the tiny IMDB and tiny BERT."""
    return {"data": str(tiny_imdb), "model": str(tiny_bert), "max_len": 16}


def plan(tiny, mode="pool", study="t", space=SPACE):
    return planning.plan_studies(SMOKE, tiny, [mode], space, study)[0]


def runs_of(store: str, experiment: str = "bertpooled-tuning") -> list:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def quiet(line: str) -> None:
    pass


def test_a_study_is_a_parent_run_with_a_child_per_trial_in_its_state(tiny, store, monkeypatch):
    from bertpooled.data import tokens

    tokenized = []
    real = tokens.load_or_tokenize
    monkeypatch.setattr(tokens, "load_or_tokenize", lambda *a, **k: tokenized.append(k.get("desc")) or real(*a, **k))
    said: list[str] = []
    outcome = tuning.run_study(plan(tiny), trials=3, pruner=PruneTrialOne(), log=said.append)

    runs = runs_of(store)
    parent = next(r for r in runs if r.data.tags["bertpooled.kind"] == "tune")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 4
    states = {
        int(r.data.tags["tune/trial"]): (r.info.status, r.data.tags["tune/state"], r.info.run_name) for r in children
    }
    assert states == {
        0: ("FINISHED", "COMPLETE", "trial-0-pool"),
        1: ("KILLED", "PRUNED", "trial-1-pool-pruned"),
        2: ("FINISHED", "COMPLETE", "trial-2-pool"),
    }
    for run in children:
        assert run.data.tags["bertpooled.kind"] == "tune_trial"
        assert "val/accuracy" in run.data.metrics and float(run.data.params["config/validation_fraction"]) == 0.2
        # The test set stays unseen: no test/* metric and no test dataset on any trial.
        assert not [k for k in run.data.metrics if k.startswith("test/")]
        contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation"}
    complete = [r for r in children if r.data.tags["tune/state"] == "COMPLETE"]
    assert all(len(MlflowClient(store).get_metric_history(r.info.run_id, "val/accuracy")) == 2 for r in complete)
    # ... and no test review was tokenized (the train and val splits were, once: the worker shares them).
    assert tokenized and set(tokenized) <= {"tokenize train", "tokenize val"}
    # The parent names the best trial and holds its config, the trials table and Optuna's plots.
    best = max(complete, key=lambda r: (r.data.metrics["tune/value"], -int(r.data.tags["tune/trial"])))
    assert parent.data.tags["tune/best_run_id"] == outcome.best_run_id == best.info.run_id
    assert parent.data.metrics["tune/trials_pruned"] == 1 and parent.data.metrics["tune/trials_complete"] == 2
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "trials.csv", "plots"} <= artifacts
    plots = {a.path for a in MlflowClient(store).list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots
    # The study's experiment holds its tuning view, which the printed `trials:` link opens (issue 31).
    (link,) = [line.split("trials: ")[1] for line in said if line.startswith("trials: ")]
    key = link.split("viewStateShareKey=")[1]
    tags = MlflowClient(store).get_experiment(parent.info.experiment_id).tags
    view = json.loads(tags["mlflow.sharedViewState." + key])
    assert view == ui_view.tuning_view_state(plan(tiny).name, ["lr", "lstm_units"])
    mlflow.set_tracking_uri(None)


def test_the_best_config_runs_as_it_is_through_train_config(tiny, store, tmp_path, monkeypatch):
    outcome = tuning.run_study(
        plan(tiny, study="tune"), trials=2, pruner=optuna.pruners.NopPruner(), log=quiet, output=str(tmp_path / "best")
    )
    # The default study name gives the study's run the name tune-pool, not tune-tune-pool.
    assert MlflowClient(store).get_run(outcome.parent_run_id).info.run_name == "tune-pool"
    path = tmp_path / "best" / "best-pool.yaml"
    values = yaml.safe_load(path.read_text())
    # The protocol (the smoke file and the options) plus the best values; the search's validation split left out.
    assert values["mode"] == "pool" and values["lr"] == outcome.best_params["lr"]
    assert "validation_fraction" not in values and "data" not in values
    cfg = load_config(str(path))
    assert (cfg.lr, cfg.lstm_units, cfg.validation_fraction) == (
        outcome.best_params["lr"],
        outcome.best_params["lstm_units"],
        0,
    )
    logged = mlflow.artifacts.load_text(f"runs:/{outcome.parent_run_id}/best_config.yaml")
    assert logged == path.read_text()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # the study's, as a fresh `train` process would
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            str(path),
            "--data",
            tiny["data"],
            "--latency-texts",
            "1",
            "--throughput-batches",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    trained = [r for r in runs_of(store, "bertpooled") if r.data.tags.get("bertpooled.kind") == "train"]
    assert len(trained) == 1 and trained[0].data.params["config/lstm_units"] == str(outcome.best_params["lstm_units"])
    assert float(trained[0].data.params["config/lr"]) == outcome.best_params["lr"]
    # The URI tune prints works as --config too: downloaded through MLflow, read by the same bounded reader.
    # The command tune prints, as printed: it trains the best config and registers the model (issue 31).
    command = best_line(outcome).split("train it and register its model: ")[1].split()
    assert command[:2] == ["bertpooled", "train"] and f"runs:/{outcome.parent_run_id}/best_config.yaml" in command
    result = CliRunner().invoke(
        app, [*command[1:], "--data", tiny["data"], "--latency-texts", "1", "--throughput-batches", "1"]
    )
    assert result.exit_code == 0, result.output
    trained = [r for r in runs_of(store, "bertpooled") if r.data.tags.get("bertpooled.kind") == "train"]
    assert len(trained) == 2
    registered = MlflowClient(store).get_model_version_by_alias("bertpooled-pool", "tuned")
    assert registered.run_id in {r.info.run_id for r in trained}
    assert trained[0].data.params["config/lstm_units"] == trained[1].data.params["config/lstm_units"]
    assert trained[0].data.params["config/lr"] == trained[1].data.params["config/lr"]
    # A wrong URI is one line, before any run: no such run, no such file, a folder.
    for bad, words in (
        ("runs:/0123456789abcdef0123456789abcdef/best_config.yaml", "no run 0123456789abcdef"),
        (f"runs:/{outcome.parent_run_id}/nothing.yaml", "has no file nothing.yaml"),
        (f"runs:/{outcome.parent_run_id}/plots", "has no file plots"),
        ("runs:/", "runs:/<run id>/<path>"),
    ):
        failed = CliRunner().invoke(app, ["train", "--config", bad, "--data", tiny["data"]])
        one_error_line(failed, words)
    assert len(runs_of(store, "bertpooled")) == 2
    mlflow.set_tracking_uri(None)


def test_two_workers_share_one_study_without_duplicate_trials(tiny, store):
    outcome = tuning.run_study(
        plan(tiny, mode="basic"), trials=4, parallel=2, pruner=optuna.pruners.NopPruner(), log=quiet
    )
    study = optuna.load_study(
        study_name="t-basic", storage=f"sqlite:///{Path(store.split(':///', 1)[1]).parent / 'optuna.db'}"
    )
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(run_ids)
    children = [r for r in runs_of(store) if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    assert sorted(int(r.data.tags["tune/trial"]) for r in children) == sorted(numbers)
    # Both workers drew their own values: no two trials share a learning rate.
    assert len({t.params["lr"] for t in trials}) == len(trials)
    mlflow.set_tracking_uri(None)


def test_resume_continues_a_stopped_study_in_the_same_parent_run(tiny, store, monkeypatch):
    from bertpooled.run import fit

    real, calls = fit.fit, []

    def stop_on_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C inside trial 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "fit", stop_on_second_trial)
    study_plan = plan(tiny)
    with pytest.raises(KeyboardInterrupt):
        tuning.run_study(study_plan, trials=3, pruner=optuna.pruners.NopPruner(), log=quiet)
    runs = runs_of(store)
    parent = next(r for r in runs if r.data.tags["bertpooled.kind"] == "tune")
    assert parent.info.status == "KILLED"
    stopped = next(r for r in runs if r.data.tags.get("tune/trial") == "1")
    assert (stopped.info.status, stopped.data.tags["tune/state"]) == ("KILLED", "FAIL")

    with pytest.raises(BertpooledError, match=r"already exists.*--resume"):
        tuning.run_study(study_plan, trials=3, log=quiet)
    outcome = tuning.run_study(study_plan, trials=3, resume=True, pruner=optuna.pruners.NopPruner(), log=quiet)
    assert outcome.parent_run_id == parent.info.run_id
    assert outcome.counts == {"COMPLETE": 3, "PRUNED": 0, "FAIL": 1}
    assert MlflowClient(store).get_run(parent.info.run_id).info.status == "FINISHED"
    # Nothing new to run: resuming a finished study runs no trial.
    assert tuning.run_study(study_plan, trials=3, resume=True, log=quiet).counts["COMPLETE"] == 3
    assert len([r for r in runs_of(store) if r.data.tags.get("bertpooled.kind") == "tune_trial"]) == 4
    # A different space is another study, not a resume of this one.
    with pytest.raises(BertpooledError, match="another space"):
        tuning.run_study(plan(tiny, space="lr=1e-3..1e-2:log"), trials=3, resume=True, log=quiet)
    mlflow.set_tracking_uri(None)


def test_a_study_left_empty_by_a_crash_before_its_run_starts_afresh(tiny, store):
    # The study exists in Optuna's storage, but the process died before any parent run or trial (the tracking
    # store failed at first contact, say): neither "already exists" nor "not bertpooled's".
    study_plan = plan(tiny)
    store_path = Path(store.split(":///", 1)[1]).parent / "optuna.db"
    optuna.create_study(study_name=study_plan.name, storage=f"sqlite:///{store_path}", direction="maximize")
    outcome = tuning.run_study(study_plan, trials=1, pruner=optuna.pruners.NopPruner(), log=quiet)
    assert outcome.counts["COMPLETE"] == 1
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(
    "space, words",
    [
        ("lr=1e-2..1e-4", ["lr range", "LOW < HIGH"]),
        ("nope=1..2", ["unknown field 'nope'"]),
        ("validation_fraction=0.1..0.3", ["validation_fraction cannot be searched"]),
        ("lr=0..1e-2:log", ["LOW > 0"]),
        ("lstm_units=0|8", ["lstm_units=0", "positive integer"]),
        ("lr", ["not field=LOW..HIGH"]),
        ("lr=1e-3..1e-1:cube", ["unknown flag"]),
    ],
)
def test_a_bad_search_space_is_one_line_before_any_run(tiny, store, tmp_path, space, words):
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--config",
            SMOKE,
            "--data",
            tiny["data"],
            "--model",
            tiny["model"],
            "--space",
            space,
            "--trials",
            "2",
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert runs_of(store) == [] and not (tmp_path / "optuna.db").exists()
    mlflow.set_tracking_uri(None)


def test_a_search_space_reads_text_and_yaml_alike(tmp_path):
    text = parse_space("lr=1e-4..1e-2:log,lstm_units=8|16,epochs=3..15")
    file = tmp_path / "space.yaml"
    file.write_text("lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nlstm_units: [8, 16]\nepochs: 3..15\n")
    assert str(parse_space(str(file))) == str(text) == "lr=0.0001..0.01:log,lstm_units=8|16,epochs=3..15"
    assert text.dimensions[1].choices == (8, 16)  # typed as the field is


def test_the_search_never_sees_the_test_set_by_config(tiny, store):
    with pytest.raises(BertpooledError, match="eval_each_epoch"):
        planning.plan_studies(SMOKE, {**tiny, "eval_each_epoch": True}, ["pool"], SPACE, "t")
    with pytest.raises(BertpooledError, match="reference"):
        planning.plan_studies(SMOKE, tiny, ["reference"], SPACE, "t")


@pytest.mark.parametrize(
    "args, words",
    [
        ([], ["needs -P space"]),
        (["--space", SPACE, "--trials", "many"], ["trials", "integers"]),
        (["--space", SPACE, "--resume", "maybe"], ["resume true or false"]),
    ],
)
def test_the_mlproject_tune_entry_point_refuses_bad_parameters_in_one_line(store, args, words):
    result = CliRunner().invoke(app, ["mlproject-tune", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output
    assert runs_of(store) == []
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None, reason='Ray is not installed: pip install -e ".[ray]"'
)
def test_workers_as_ray_tasks_share_one_study(tiny, store, monkeypatch, tmp_path):
    from bertpooled.sweep.ray_executor import RayExecutor

    monkeypatch.setenv("RAY_ADDRESS", "")  # a local Ray of this test's own, never a cluster the machine has
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ray.init writes ~/.ray/auth_token: not into the user's home
    runner = RayExecutor(None, 1.0, 0.0)
    try:
        outcome = tuning.run_study(
            plan(tiny, mode="basic", study="ray"),
            trials=3,
            parallel=2,
            executor=runner,
            pruner=optuna.pruners.NopPruner(),
            log=quiet,
        )
    finally:
        runner.close()
    children = [r for r in runs_of(store) if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    numbers = sorted(int(r.data.tags["tune/trial"]) for r in children)
    assert len(numbers) >= 3 and numbers == list(range(len(numbers)))
    assert {r.info.status for r in children} == {"FINISHED"} and outcome.counts["COMPLETE"] == len(numbers)
    assert {r.data.params["config/num_threads"] for r in children} == {"1"}  # the CPUs Ray reserved per worker
    mlflow.set_tracking_uri(None)


def test_sampled_values_are_printed_to_4_significant_digits():
    from bertpooled.tune.space import shown

    # Issue 31: printed with 16 digits before; the trial's run logs them whole as params.
    assert shown({"lr": 0.012345678901234567, "lstm_units": 8}) == "lr=0.01235, lstm_units=8"
