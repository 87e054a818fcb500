"""`bertpooled compare-runs` through typer's CliRunner: the report on stdout, mistakes in one line with exit 2."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app

N_TEST = 40
LABELS = np.arange(N_TEST) % 2
IDS = [f"test/{'pos' if label else 'neg'}/{i}_8" for i, label in enumerate(LABELS)]


def _run(folder, mode: str, seed: int, n_correct: int, metrics: bool = True, epochs: int = 2, parent: str = "") -> str:
    nesting = {"mlflow.parentRunId": parent} if parent else {}
    with mlflow.start_run(
        run_name=f"{mode}-s{seed}", tags={"mode": mode, "bertpooled.kind": "train", **nesting}
    ) as run:
        mlflow.log_params({"config/mode": mode, "config/seed": seed, "config/epochs": epochs})
        if not metrics:
            return run.info.run_id
        mlflow.log_metrics(
            {
                "test/accuracy": n_correct / N_TEST,
                "test/f1": 0.5,
                "test/roc_auc": 0.5,
                "time/train_s": 10.0,
                "time/total_s": 12.0 if mode == "basic" else 7.0,
                "params/head": 100.0 if mode == "basic" else 50.0,
            }
        )
        right = np.arange(N_TEST) < n_correct
        predicted = np.where(right, LABELS, 1 - LABELS)
        path = folder / run.info.run_id / "test.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame({"id": IDS, "label": LABELS, "probability": np.where(predicted == 1, 0.9, 0.1)}).to_csv(
            path, index=False
        )
        mlflow.log_artifact(str(path), artifact_path="predictions")
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Experiment `bertpooled` with basic and pool at seeds 0 and 1, `empty` with no runs, `broken` with a
    finished run that logged no metrics."""
    folder = tmp_path_factory.mktemp("cli-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
            monkeypatch.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bertpooled")
        ids = [
            _run(folder, mode, seed, n)
            for seed, (a, b) in enumerate([(30, 31), (32, 30)])
            for mode, n in (("basic", a), ("pool", b))
        ]
        mlflow.set_experiment("empty")
        mlflow.set_experiment("broken")
        _run(folder, "basic", 0, 0, metrics=False)
        mlflow.set_tracking_uri(None)
        yield {"uri": uri, "ids": ids, "folder": folder}


def compare(runs, *args: str):
    return CliRunner().invoke(app, ["compare-runs", "--tracking-uri", runs["uri"], *args])


def test_the_report_goes_to_stdout_and_its_files_and_comparison_run_are_named(runs, tmp_path):
    result = compare(runs, "--format", "json", "--output", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [g["label"] for g in report["groups"]] == ["basic", "pool"]
    assert report["comparisons"][0]["group"] == "pool" and len(report["comparisons"][0]["mcnemar"]) == 2
    assert {"report.md", "report.json", "report.csv", "accuracy_vs_time.png"} <= {
        p.name for p in (tmp_path / "report").iterdir()
    }
    comparison = MlflowClient(runs["uri"]).get_run(report["comparison_run_id"])
    assert comparison.data.tags["bertpooled.kind"] == "comparison"
    # Its own experiment: the training experiment keeps training runs only.
    assert MlflowClient(runs["uri"]).get_experiment(comparison.info.experiment_id).name == "bertpooled-comparisons"
    assert f"comparison run: {report['comparison_run_id']}" in result.stderr
    # The most accurate run (basic, seed 1: 32 of 40) is named with the command that registers its model.
    best = runs["ids"][2]
    assert f"most accurate run: basic-s1 ({best}, group basic, test accuracy 0.8000)" in result.stderr
    assert f"register its model: bertpooled register {best} bertpooled-basic@champion" in result.stderr

    table = compare(runs, "--no-log", "--run-id", ",".join(runs["ids"][:2]), "--run-id", runs["ids"][3])
    assert table.exit_code == 0, table.output
    assert "Verdicts" in table.stdout and "comparison run" not in table.stderr

    csv = compare(
        runs,
        "--no-log",
        "--format",
        "csv",
        "--group-by",
        "mode",
        "--baseline",
        "pool",
        "--filter",
        "params.`config/seed` = '0'",
    )
    assert csv.exit_code == 0, csv.output
    frame = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    assert list(frame["group"]) == ["pool", "basic"] and list(frame["n_runs"]) == [1, 1]  # the baseline first


def test_empty_options_mean_not_given_as_mlproject_passes_them(runs):
    result = compare(
        runs,
        "--no-log",
        "--format",
        "",
        "--output",
        "",
        "--group-by",
        "",
        "--parent",
        "",
        "--filter",
        "",
        "--experiment",
        "",
        "--run-id",
        "",
    )
    assert result.exit_code == 0, result.output
    assert "Verdicts" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--experiment", "nope"], ["unknown experiment 'nope'", "empty"]),
        (["--experiment", "empty"], ["no runs in experiment 'empty'"]),
        (["--filter", "params.`config/seed` = '9'"], ["matched no runs"]),
        (["--filter", "params.seed ==="], ["invalid --filter"]),
        (["--parent", "0123456789abcdef0123456789abcdef"], ["unknown parent run"]),
        (["--run-id", "0123456789abcdef0123456789abcdef"], ["unknown run id"]),
        (["--format", "xml"], ["unknown report format 'xml'"]),
        (["--group-by", "colour"], ["cannot group by 'colour'"]),
        (["--baseline", "basci"], ["baseline mode='basci' is not among the groups", "basic, pool"]),
        (["--experiment", "broken"], ["nothing to compare"]),
    ],
)
def test_mistakes_are_one_line_on_stderr_and_exit_2(runs, args, words):
    result = compare(runs, "--no-log", *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert all(word in errors[0] for word in words), errors[0]


def test_nothing_to_compare_still_prints_why(runs):
    result = compare(runs, "--no-log", "--experiment", "broken")
    assert result.exit_code == 2
    assert "missing contract metric(s) test/accuracy" in result.stdout, result.stdout


def test_the_mlproject_commands_pass_every_option_of_the_command_they_call():
    # A typer command called as a function gets OptionInfo (truthy) for any option left out whose default is a
    # `typer.Option(...)`: e.g. a resume under `mlflow run` would then accept changed code as if
    # --allow-code-change had been given. The one shim passes every option, at its plain default when not given.
    import inspect

    from typer.models import ParameterInfo

    from bertpooled.cli.commands import MLPROJECT
    from bertpooled.cli.mlproject import arguments

    assert [e.hidden for e in MLPROJECT] == [f"mlproject-{n}" for n in ("train", "sweep", "compare", "tune", "adapt")]
    for entry in MLPROJECT:
        given = ["--space", "lr=1e-4..1e-2"] if entry.required else []
        passed = arguments(entry, given)
        params = inspect.signature(entry.command).parameters
        assert set(passed) == set(params), entry.name
        assert not [k for k, v in passed.items() if isinstance(v, ParameterInfo)], entry.name
    train = arguments(MLPROJECT[0], ["--allow_code_change", "true", "--epochs", "3", "--amp", "true"])
    assert train["allow_code_change"] is True and train["take_over"] is False and train["progress"] is None
    assert train["fields"] == {"epochs": "3"} and train["set_"] == ["amp=true"]
    assert arguments(MLPROJECT[2], ["--run_ids", "a,b"])["run_id"] == ["a,b"]


def test_serving_a_model_that_is_not_there_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-model")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot load model") and "runs:/<run id>/model" in lines[0]


def test_compare_runs_with_no_options_reports_the_newest_sweep_of_a_mixed_experiment(tmp_path, monkeypatch):
    # Issue 24: the quick-start run (10 epochs) beside a newer sweep (2 epochs): no options still gives a report.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("bertpooled")
        quick = _run(tmp_path, "pool", 0, 33, epochs=10)
        with mlflow.start_run(run_name="sweep", tags={"bertpooled.kind": "sweep"}) as parent:
            pass
        children = [
            _run(tmp_path, mode, seed, n, parent=parent.info.run_id)
            for seed, (a, b) in enumerate([(30, 31), (32, 30)])
            for mode, n in (("basic", a), ("pool", b))
        ]
    finally:
        mlflow.set_tracking_uri(None)
    result = CliRunner().invoke(app, ["compare-runs", "--tracking-uri", uri, "--format", "json", "--no-log"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(r["run_id"] for r in report["runs"]) == sorted(children)
    assert len(report["comparisons"]) == 1
    note = report["notes"][0]
    assert f"bertpooled compare-runs --run-id {quick}" in note and "2 sets" in note
    # The note's command works as copied: the quick-start run alone is a one-group report, not an error.
    command = note.split("run(s): ", 1)[1].split()
    assert command[:2] == ["bertpooled", "compare-runs"]
    result = CliRunner().invoke(app, [*command[1:], "--tracking-uri", uri, "--no-log"])
    assert result.exit_code == 0, result.output
    assert "make run MODE=basic" in result.output
    # Selecting the other set is the command the note gives; a refusal names every differing field.
    result = CliRunner().invoke(
        app, ["compare-runs", "--tracking-uri", uri, "--filter", "params.`config/seed` = '0'", "--no-log"]
    )
    assert result.exit_code == 2 and "--group-by mode,epochs" in result.output


def test_compare_runs_on_one_group_gives_its_report_and_how_to_train_a_baseline(tmp_path, monkeypatch):
    # Issue 31: the stated flow (`make run`, pool only, then compare-runs) ends in a report, not in exit 2.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("bertpooled")
        for seed, n in enumerate((30, 32)):
            _run(tmp_path, "pool", seed, n)
    finally:
        mlflow.set_tracking_uri(None)
    result = CliRunner().invoke(app, ["compare-runs", "--tracking-uri", uri, "--no-log"])
    assert result.exit_code == 0, result.output
    assert "pool" in result.stdout and "0.7750" in result.stdout  # the group's accuracy (31/40 on average)
    hint = [line for line in result.stderr.splitlines() if "make run MODE=basic" in line]
    assert len(hint) == 1 and "mlflow run . --env-manager local --experiment-name bertpooled -P mode=basic" in hint[0]
    report = json.loads(
        CliRunner().invoke(app, ["compare-runs", "--tracking-uri", uri, "--no-log", "--format", "json"]).stdout
    )
    assert [g["label"] for g in report["groups"]] == ["pool"] and report["comparisons"] == []
    # A baseline that is no group among several groups is still the user's mistake, in one line.
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("bertpooled")
        _run(tmp_path, "reference", 0, 30)
        _run(tmp_path, "reference", 1, 30)
    finally:
        mlflow.set_tracking_uri(None)
    result = CliRunner().invoke(app, ["compare-runs", "--tracking-uri", uri, "--no-log"])
    assert result.exit_code == 2 and "pass --baseline one of pool, reference" in result.output


def test_help_shows_no_type_after_a_flag():
    # Issue 31: typer 0.29 printed `--help <bool>` (pyproject.toml keeps it below 0.29).
    for args in (["--help"], ["runs", "end-abandoned", "--help"], ["train", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "--help" in result.output and "<bool>" not in result.output, result.output
