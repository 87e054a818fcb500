"""The printed MLflow UI links and the training view they open (benchmarks/ui_check/ui_check.py checks it in
Chromium)."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import mlflow
from mlflow.tracking import MlflowClient

from bertpooled.tracking import runs as tracking
from bertpooled.tracking import ui_view


def test_training_view_shows_training_runs_with_the_columns_a_user_came_for():
    state = ui_view.training_view_state()
    assert state["searchFilter"] == "tags.`bertpooled.kind` = 'train'"
    assert state["selectedColumns"] == [
        "tags.`mode`",
        "tags.`backbone`",
        "params.`config/seed`",
        "tags.`protocol`",
        "metrics.`test/accuracy`",
        "metrics.`time/total_s`",
        "metrics.`params/head`",
        "tags.`init_from`",
        "tags.`distill_from`",
    ]
    charts = [(c["metricKey"], c["type"]) for c in state["compareRunCharts"]]
    assert charts[:3] == [("train/loss", "LINE"), ("train/accuracy", "LINE"), ("test/accuracy", "BAR")]
    # Sections keep this order only when the accordion counts as reordered; charts stay bars only when not generated.
    assert [s["name"] for s in state["compareRunSections"]][:2] == ["train", "test"]
    assert state["isAccordionReordered"] is True
    assert not any(c["isGenerated"] for c in state["compareRunCharts"])
    sections = {s["uuid"] for s in state["compareRunSections"]}
    assert all(c["metricSectionId"] in sections for c in state["compareRunCharts"])
    # Issue 24: every final metric is a bar (a one-dot line chart otherwise); only per-epoch series are lines.
    lines = {metric for metric, kind in charts if kind == "LINE"}
    assert lines == {"train/loss", "train/accuracy", "time/epoch_s"}
    assert {"time/data_s", "time/features_s", "params/backbone", "latency/p50_ms", "memory/peak_mb"} <= {
        m for m, _ in charts
    }
    # The identifying columns first, right after the run's name.
    assert state["columnOrder"][:4] == ["attributes.`Run Name`", "runDateAndNestInfo", "tags.`mode`", "tags.`backbone`"]


def test_view_tag_key_follows_the_state_and_fits_mlflow_limits():
    key, tag, value = ui_view.view_tag(ui_view.training_view_state())
    assert tag == "mlflow.sharedViewState." + key
    assert ui_view.view_tag(ui_view.training_view_state())[0] == key  # stable across runs
    changed = {**ui_view.training_view_state(), "searchFilter": ""}
    assert ui_view.view_tag(changed)[0] != key
    # Not start_time: MLflow nests children under their (filtered-out) sweep parent only when sorted by it.
    assert json.loads(value)["orderByKey"] == "attributes.`end_time`"
    assert len(value) < 20000  # MLflow's limit on an experiment tag's value


def test_runs_link_opens_the_stored_view_in_the_model_training_pages(store):
    mlflow.set_experiment("bertpooled")
    with mlflow.start_run() as run:
        runs_link, run_link = tracking.ui_links(run)
    fragment = urlsplit(runs_link).fragment
    query = parse_qs(fragment.split("?", 1)[1])
    assert query["workflowType"] == ["machine_learning"]
    key = query["viewStateShareKey"][0]
    tags = MlflowClient().get_experiment(run.info.experiment_id).tags
    assert json.loads(tags["mlflow.sharedViewState." + key]) == ui_view.training_view_state()
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert run_link.endswith(f"/runs/{run.info.run_id}?workflowType=machine_learning")
    assert runs_link.startswith("http://127.0.0.1:5000/#/experiments/")
    assert tracking.ui_hint() == f"start the UI with `mlflow ui --backend-store-uri {store}`"
    assert tracking.tracking_uri() == store  # printed beside the model URI for loading from another folder


def test_experiment_kind_set_by_someone_else_is_left_alone(store):
    experiment_id = mlflow.set_experiment("bertpooled").experiment_id
    MlflowClient().set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    tracking.ensure_view(experiment_id)
    assert MlflowClient().get_experiment(experiment_id).tags["mlflow.experimentKind"] == "genai_development"


SORT_LABEL = re.compile(r"^.+\.`(.+)`$")  # how MLflow's sort button names a key it has no label for


def test_each_views_sort_key_names_itself_on_the_sort_button_and_the_store_sorts_by_it(store):
    # "Sort: undefined" was `attributes.end_time`: neither one of the button's own keys nor kind.`name`.
    views = {"train": ui_view.training_view_state(), "tune": ui_view.tuning_view_state("tune-pool", ["lr"])}
    labels = {kind: SORT_LABEL.match(state["orderByKey"]) for kind, state in views.items()}
    assert {kind: match.group(1) if match else None for kind, match in labels.items()} == {
        "train": "end_time",
        "tune": "val/accuracy",
    }
    client = MlflowClient()
    experiment = client.create_experiment("sorted")
    for state in views.values():  # the UI passes the key to search_runs as it is
        client.search_runs([experiment], state["searchFilter"], order_by=[f"{state['orderByKey']} DESC"])


def test_tuning_view_shows_one_studys_trials_best_first_with_state_and_searched_values():
    state = ui_view.tuning_view_state("tune-pool", ["lr", "lstm_units"])
    assert state["searchFilter"] == "tags.`bertpooled.kind` = 'tune_trial' AND tags.`tune/study` = 'tune-pool'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val/accuracy`", False)
    assert state["selectedColumns"] == [
        "tags.`tune/trial`",
        "tags.`tune/state`",
        "metrics.`val/accuracy`",
        "tags.`mode`",
        "params.`config/lr`",
        "params.`config/lstm_units`",
    ]
    charts = state["compareRunCharts"]
    assert [(c["type"], c.get("metricKey")) for c in charts][:3] == [
        ("LINE", "val/accuracy"),
        ("PARALLEL", None),
        ("BAR", "tune/value"),
    ]
    assert (charts[1]["selectedParams"], charts[1]["selectedMetrics"]) == (
        ["config/lr", "config/lstm_units"],
        ["val/accuracy"],
    )
    sections = {s["uuid"] for s in state["compareRunSections"]}
    assert all(c["metricSectionId"] in sections for c in charts)
    # A quote in a study's name stays inside the filter's string.
    assert "'it\\'s-pool'" in ui_view.tuning_view_state("it's-pool", [])["searchFilter"]
    # Its own key: the tuning view never replaces the training view's tag.
    assert ui_view.view_tag(state, "tune")[0].startswith("bertpooled-tune-")
