import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bertpooled.errors import BertpooledError
from bertpooled.report import render
from bertpooled.report.build import build_report
from bertpooled.report.original import ORIGINAL_STUDY
from bertpooled.report.plots import accuracy_vs_time, learning_curves
from bertpooled.report.records import Report
from bertpooled.report.sections import sections

N_TEST = 1000
LABELS = np.arange(N_TEST) % 2
IDS = [f"test/{'pos' if label else 'neg'}/{i}_7" for i, label in enumerate(LABELS)]


def predictions(n_correct: int, ids=IDS) -> pd.DataFrame:
    """The first n_correct examples right, the rest wrong: discordance between two
    runs is then exactly the difference of their n_correct."""
    correct = np.arange(len(ids)) < n_correct
    predicted = np.where(correct, LABELS[: len(ids)], 1 - LABELS[: len(ids)])
    return pd.DataFrame(
        {"id": list(ids), "label": LABELS[: len(ids)], "probability": np.where(predicted == 1, 0.9, 0.1)}
    )


def run_row(
    run_id, mode, seed, n_correct, *, status="FINISHED", total_s=100.0, train_s=80.0, head=50_321, extra=None, drop=()
):
    row = {
        "run_id": run_id,
        "experiment_id": "1",
        "status": status,
        "tags.mlflow.runName": f"{mode}-s{seed}",
        "tags.bertpooled.kind": "train",
        "tags.mode": mode,
        "params.config/mode": mode,
        "params.config/model": "minilm",
        "params.config/seed": str(seed),
        "params.config/epochs": "4",
        "metrics.test/accuracy": n_correct / N_TEST,
        "metrics.test/f1": n_correct / N_TEST - 0.01,
        "metrics.test/roc_auc": n_correct / N_TEST + 0.05,
        "metrics.time/data_s": 5.0,
        "metrics.time/tokenize_s": 3.0,
        "metrics.time/features_s": 10.0,
        "metrics.time/train_s": train_s,
        "metrics.time/eval_s": 2.0,
        "metrics.time/total_s": total_s,
        "metrics.throughput/train_examples_per_s": 1000.0 / train_s,
        "metrics.params/head": float(head),
        "metrics.params/head_trainable": float(head),
        "metrics.params/backbone": 22_000_000.0,
    }
    row.update(extra or {})
    for key in drop:
        row.pop(key)
    return row


def study(pool_correct, basic_correct=(850, 860, 855), extra_rows=(), pool_extra=None):
    rows, preds = [], {}
    for seed, (b, p) in enumerate(zip(basic_correct, pool_correct, strict=True)):
        rows.append(run_row(f"basic{seed}", "basic", seed, b, total_s=100.0 + seed, train_s=80.0))
        preds[f"basic{seed}"] = predictions(b)
        rows.append(
            run_row(f"pool{seed}", "pool", seed, p, total_s=60.0 + seed, train_s=40.0, head=25_745, extra=pool_extra)
        )
        preds[f"pool{seed}"] = predictions(p)
    for row, pred in extra_rows:
        rows.append(row)
        if pred is not None:
            preds[row["run_id"]] = pred
    return pd.DataFrame(rows), preds


CLEAR = (750, 765, 745)  # about 10 points worse on every seed
SAME = (852, 857, 856)  # +0.2, -0.3, +0.1 points


def history(losses):
    rows = []
    for step, loss in enumerate(losses, start=1):
        rows.append({"key": "train/loss", "step": step, "value": loss})
        rows.append({"key": "train/accuracy", "step": step, "value": 1 - loss / 2})
    return pd.DataFrame(rows)


@pytest.fixture
def full_report() -> Report:
    extras = [
        (run_row("crashed", "basic", 3, 800, status="RUNNING"), predictions(800)),
        (run_row("nometrics", "pool", 4, 800, drop=("metrics.test/accuracy",)), predictions(800)),
        (run_row("nopreds", "pool", 5, 800), None),
    ]
    runs, preds = study(SAME, extra_rows=extras)
    histories = {
        f"{mode}{seed}": history([0.7 - 0.1 * e - 0.01 * seed for e in range(4)])
        for mode in ("basic", "pool")
        for seed in range(3)
    }
    return build_report(runs, preds, histories)


def test_group_stats(full_report):
    groups = {group.label: group for group in full_report.groups}
    assert list(groups) == ["basic", "pool"]
    basic = groups["basic"]
    assert basic.n_runs == 3 and basic.seeds == ["0", "1", "2"]
    assert basic.accuracy.mean == pytest.approx(0.855)
    assert basic.accuracy.low < 0.855 < basic.accuracy.high
    assert basic.f1_mean == pytest.approx(0.845)
    assert basic.roc_auc_mean == pytest.approx(0.905)
    assert basic.costs["time/total_s"] == pytest.approx(101.0)
    assert basic.costs["time/train_s_per_epoch"] == pytest.approx(20.0)
    assert basic.costs["params/head"] == 50_321
    assert groups["pool"].costs["params/head"] == 25_745
    assert "throughput/train_examples_per_s" in basic.costs


def test_ratios_against_baseline(full_report):
    (comparison,) = full_report.comparisons
    assert (comparison.group, comparison.baseline) == ("pool", "basic")
    assert comparison.ratios["time/total_s"] == pytest.approx(61.0 / 101.0)
    assert comparison.ratios["time/train_s"] == pytest.approx(0.5)
    assert comparison.ratios["params/head"] == pytest.approx(25_745 / 50_321)
    assert comparison.ratios["throughput/train_examples_per_s"] == pytest.approx(2.0)
    assert comparison.ratios["time/data_s"] == pytest.approx(1.0)


def test_skipped_runs_are_counted_and_named(full_report):
    skipped = {entry["run_id"]: entry["reason"] for entry in full_report.skipped}
    assert set(skipped) == {"crashed", "nometrics", "nopreds"}
    assert "RUNNING" in skipped["crashed"] and "--include-unfinished" in skipped["crashed"]
    assert "test/accuracy" in skipped["nometrics"]
    assert "predictions" in skipped["nopreds"]
    summary = next(note for note in full_report.notes if note.startswith("kept"))
    assert "kept 6 of the 9 runs given to the report; skipped 3" in summary
    assert any("crashed" in note for note in full_report.notes)


def test_unfinished_runs_kept_when_asked():
    runs, preds = study(SAME, extra_rows=[(run_row("crashed", "basic", 3, 800, status="RUNNING"), predictions(800))])
    report = build_report(runs, preds, include_unfinished=True)
    assert "crashed" in report.groups[0].run_ids
    assert report.skipped == []


def test_no_difference_verdict(full_report):
    (comparison,) = full_report.comparisons
    diff = comparison.accuracy_difference_points
    assert diff.n == 3
    assert diff.mean == pytest.approx(0.0)
    assert diff.p_value > 0.5
    assert comparison.mcnemar_significant == 0 and len(comparison.mcnemar) == 3
    verdict = comparison.verdict
    assert verdict.startswith("pool vs basic: no significant difference at α=0.05 (paired t-test p=")
    assert "over 3 seeds" in verdict
    assert "95% CI of the difference [" in verdict
    assert "McNemar significant in 0 of 3 seed pairs" in verdict
    assert "total time 0.60×" in verdict


def test_clear_difference_verdict():
    runs, preds = study(CLEAR)
    (comparison,) = build_report(runs, preds).comparisons
    diff = comparison.accuracy_difference_points
    assert diff.mean == pytest.approx(-10.1666667)
    assert diff.p_value < 0.01
    assert diff.high < 0
    pair = comparison.mcnemar[0]
    assert (pair.b, pair.c) == (0, 100)  # seed 0: 850 vs 750 correct, nested
    assert comparison.mcnemar_significant == 3
    assert comparison.verdict.startswith("pool is worse than basic by 10.2 points (95% CI [-")
    assert "paired t-test p=" in comparison.verdict and "over 3 seeds" in comparison.verdict
    assert "McNemar significant in 3 of 3 seed pairs" in comparison.verdict


def test_better_verdict_names_the_direction():
    runs, preds = study((950, 965, 945))
    (comparison,) = build_report(runs, preds).comparisons
    assert comparison.verdict.startswith("pool is better than basic by")


def test_mismatched_test_ids_are_refused():
    runs, preds = study(SAME)
    other_ids = [*IDS[:-1], "test/pos/99999_1"]
    preds["pool1"] = predictions(857, ids=other_ids)
    report = build_report(runs, preds)
    (comparison,) = report.comparisons
    assert [pair.seed for pair in comparison.mcnemar] == ["0", "2"]
    assert comparison.mcnemar_refused[0]["seed"] == "1"
    note = next(note for note in report.notes if "McNemar refused" in note)
    assert "seed 1" in note and "test ids differ" in note and "999 shared" in note
    assert "McNemar significant in 0 of 2 seed pairs" in comparison.verdict


def test_one_seed_leans_on_mcnemar():
    runs, preds = study(CLEAR[:1], basic_correct=(850,))
    (comparison,) = build_report(runs, preds).comparisons
    assert comparison.accuracy_difference_points.n == 1
    assert math.isnan(comparison.accuracy_difference_points.p_value)
    assert "needs ≥2 seeds" in comparison.verdict
    assert comparison.verdict.startswith("pool is worse than basic by 10.0 points on one seed")
    assert "exact McNemar p<0.001" in comparison.verdict

    runs, preds = study(SAME[:1], basic_correct=(850,))
    (comparison,) = build_report(runs, preds).comparisons
    assert comparison.verdict.startswith("pool vs basic: no significant difference at α=0.05 on one seed")
    assert "needs ≥2 seeds" in comparison.verdict


def test_a_baseline_that_is_no_group_is_an_error_naming_the_groups():
    runs, preds = study(SAME)
    with pytest.raises(
        BertpooledError, match="baseline mode='reference' is not among the groups: pass --baseline one of basic, pool"
    ):
        build_report(runs, preds, baseline="reference")


def test_one_group_without_its_baseline_is_that_groups_report_with_how_to_train_a_baseline():
    runs, preds = study(SAME)
    pool_only = runs[runs["params.config/mode"] == "pool"]
    report = build_report(pool_only, preds)
    assert [g.label for g in report.groups] == ["pool"] and report.comparisons == []
    assert report.groups[0].accuracy.mean == pytest.approx(0.855)
    assert "make run MODE=basic" in report.next_step and report.next_step in report.notes
    assert "make run MODE=basic" in render.to_markdown(report)
    # With its baseline there, nothing to suggest.
    assert build_report(runs, preds).next_step == ""


@pytest.mark.parametrize("format", ["table", "markdown", "json"])
@pytest.mark.parametrize("terminal", [True, False])
def test_the_next_step_is_said_once_where_the_user_reads(format, terminal, capsys, monkeypatch):
    """On a terminal the report's notes already end with it; piped, or in a format without notes, stderr says it."""
    import sys

    from bertpooled.cli.shared import print_report

    runs, preds = study(SAME)
    report = build_report(runs[runs["params.config/mode"] == "pool"], preds)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    print_report(report, format, None)
    out, err = capsys.readouterr()
    seen = (out + err).count(report.next_step)
    shown_in_report = report.next_step in out
    assert seen == (1 if terminal or not shown_in_report else 2)
    assert (report.next_step in err) == (not terminal or not shown_in_report)


def test_a_suggested_selection_of_groups_without_the_baseline_names_a_baseline_it_has():
    from bertpooled.report.configs import selection_command

    runs, preds = study(SAME)
    report = build_report(runs, preds)
    pool, basic = [r for r in report.runs if r.mode == "pool"], [r for r in report.runs if r.mode == "basic"]
    assert "--baseline" not in selection_command(runs, pool + basic, ["mode"])
    assert "--baseline" not in selection_command(runs, pool, ["mode"])  # one group: its report, no error
    assert selection_command(runs, pool + basic, ["mode"], baseline="reference").endswith(" --baseline basic")


def test_group_by_two_keys_compares_within_the_other_key():
    runs, preds = study(SAME)
    report = build_report(runs, preds, group_by=("mode", "model"))
    assert [group.label for group in report.groups] == ["basic/minilm", "pool/minilm"]
    assert report.comparisons[0].baseline == "basic/minilm"


def test_unknown_group_key_is_a_user_error():
    runs, preds = study(SAME)
    with pytest.raises(BertpooledError, match=r"cannot group by 'optimizer'.*--group-by"):
        build_report(runs, preds, group_by="optimizer")


def test_json_structure(full_report):
    payload = json.loads(render.to_json(full_report))
    assert set(payload) >= {
        "schema",
        "settings",
        "runs",
        "groups",
        "comparisons",
        "original_study",
        "learning_curves",
        "skipped",
        "notes",
        "cost_metrics",
    }
    assert payload["settings"] == {"group_by": ["mode"], "baseline": "basic", "alpha": 0.05, "confidence": 0.95}
    group = payload["groups"][0]
    assert set(group) >= {"label", "n_runs", "seeds", "accuracy", "f1_mean", "roc_auc_mean", "costs"}
    assert set(group["accuracy"]) >= {"mean", "low", "high", "n"}
    comparison = payload["comparisons"][0]
    assert set(comparison) >= {
        "group",
        "baseline",
        "accuracy_difference_points",
        "ratios",
        "mcnemar",
        "mcnemar_significant",
        "verdict",
    }
    assert set(comparison["mcnemar"][0]) >= {"seed", "b", "c", "p_value", "significant"}
    assert len(payload["original_study"]["rows"]) == len(ORIGINAL_STUDY) + 2


def test_json_turns_nan_into_null():
    runs, preds = study(SAME[:1], basic_correct=(850,))
    payload = json.loads(render.to_json(build_report(runs, preds)))
    assert payload["groups"][0]["accuracy"]["low"] is None
    assert payload["comparisons"][0]["accuracy_difference_points"]["p_value"] is None


def test_markdown_render(full_report):
    text = render.to_markdown(full_report)
    for heading in (
        "## Verdicts",
        "## Groups",
        "## Costs",
        "## Against the baseline",
        "## McNemar per seed pair",
        "## Original study",
        "## Notes",
    ):
        assert heading in text
    assert "| group | runs | seeds | accuracy |" in text
    assert "pool vs basic: no significant difference" in text


def test_table_render_is_aligned(full_report):
    text = render.to_table(full_report)
    assert "Verdicts\n========" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("group  "))
    # header, rule and rows share one width per column, so the rule lines up under the header
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    assert lines[header + 2].startswith("basic ")
    accuracy_column = lines[header].index("accuracy")
    assert lines[header + 2][accuracy_column : accuracy_column + 8].strip() == "0.8550"


def test_csv_has_one_row_per_group(full_report):
    frame = pd.read_csv(io.StringIO(render.to_csv(full_report)))
    assert list(frame["group"]) == ["basic", "pool"]
    assert frame.loc[0, "accuracy_mean"] == pytest.approx(0.855)
    assert pd.isna(frame.loc[0, "verdict"])
    assert frame.loc[1, "ratio:params/head"] == pytest.approx(25_745 / 50_321)
    assert frame.loc[1, "mcnemar_pairs"] == 3


def test_render_dispatches_and_rejects_unknown_formats(full_report):
    assert render.render(full_report, "csv") == render.to_csv(full_report)
    with pytest.raises(BertpooledError, match="--format"):
        render.render(full_report, "html")


def test_new_cost_metric_is_picked_up_without_code_changes():
    extra = {
        "metrics.latency/p50_ms": 4.0,
        "metrics.cost/backbone_flops_per_example": 1e9,
        "metrics.memory/peak_mb": 500.0,
    }
    runs, preds = study(SAME)
    runs["metrics.latency/p50_ms"] = np.where(runs["params.config/mode"] == "pool", 2.0, 4.0)
    runs["metrics.cost/backbone_flops_per_example"] = extra["metrics.cost/backbone_flops_per_example"]
    runs["metrics.memory/peak_mb"] = np.where(runs["params.config/mode"] == "pool", 300.0, 500.0)
    report = build_report(runs, preds)
    assert {"latency/p50_ms", "cost/backbone_flops_per_example", "memory/peak_mb"} <= set(report.cost_metrics)
    (comparison,) = report.comparisons
    assert comparison.ratios["latency/p50_ms"] == pytest.approx(0.5)
    assert comparison.ratios["memory/peak_mb"] == pytest.approx(0.6)
    assert "latency/p50_ms" in render.to_markdown(report)
    assert "ratio:latency/p50_ms" in render.to_csv(report)


def test_original_study_section(full_report):
    rows = full_report.original_study
    originals = [row for row in rows if row.source.startswith("original")]
    assert [row.accuracy for row in originals] == [0.8144, 0.8156, 0.8250, 0.8048]
    assert [row.total_time_min for row in originals] == [13.64, 12.31, 15.02, 13.58]
    assert [row.head_params for row in originals] == [50_257, 25_681, 50_257, 25_681]
    reproduced = {row.mode: row for row in rows if row.source == "reproduced"}
    assert reproduced["basic"].accuracy == pytest.approx(0.855)
    assert reproduced["basic"].total_time_min == pytest.approx(101.0 / 60.0)
    assert reproduced["pool"].head_params == 25_745
    assert reproduced["pool"].backbones == "minilm"
    text = render.to_markdown(full_report)
    assert "original run 2 (basic_lstm)" in text and "50,321" in text


def test_learning_curves_average_per_group(full_report):
    curve = full_report.learning_curves["basic"]["train/loss"]
    assert [point["step"] for point in curve] == [1, 2, 3, 4]
    assert curve[0]["mean"] == pytest.approx(0.69)
    assert curve[0]["n"] == 3


def test_prediction_accuracy_disagreeing_with_the_metric_is_noted():
    runs, preds = study(SAME)
    runs.loc[runs["run_id"] == "pool0", "metrics.test/accuracy"] = 0.95
    report = build_report(runs, preds)
    assert any("pool0" in note and "test/accuracy is 0.9500" in note for note in report.notes)


def test_raw_mlflow_run_params_are_a_fallback_for_group_keys():
    runs, preds = study(SAME)
    runs = runs.drop(columns=["params.config/mode"])
    runs["params.mode"] = runs["tags.mode"]
    report = build_report(runs, preds)
    assert [group.label for group in report.groups] == ["basic", "pool"]


def test_empty_selection_gives_an_empty_report():
    report = build_report(pd.DataFrame(), {})
    assert report.groups == [] and report.comparisons == []
    assert any("no runs left" in note for note in report.notes)
    assert "Original study" in render.to_table(report)


def test_duplicate_seeds_pair_the_first_listed_run_and_say_so():
    runs, preds = study(SAME, extra_rows=[(run_row("rerun", "pool", 0, 700), predictions(700))])
    report = build_report(runs, preds)
    (comparison,) = report.comparisons
    assert comparison.mcnemar[0].run_id == "pool0"
    assert report.groups[1].n_runs == 4
    assert any("several runs with seed 0" in note for note in report.notes)


def test_plots_render_from_a_report_and_from_raw_histories(full_report, tmp_path):
    for path in (
        accuracy_vs_time(full_report, tmp_path / "a.png"),
        learning_curves(full_report, tmp_path / "b.png"),
        learning_curves({"r1": history([0.7, 0.6])}, tmp_path / "c.png"),
        learning_curves({}, tmp_path / "d.png"),
    ):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_runs_whose_configs_differ_beyond_group_and_seed_are_refused_in_one_line():
    runs, preds = study(SAME, pool_extra={"params.config/epochs": "3", "params.config/max_len": "64"})
    runs.loc[runs["params.config/mode"] == "basic", "params.config/max_len"] = "128"
    with pytest.raises(BertpooledError) as caught:
        build_report(runs, preds)
    message = str(caught.value)
    assert "\n" not in message
    assert "epochs (3, 4)" in message and "max_len (128, 64)" in message
    assert "--group-by mode,epochs,max_len" in message  # every field it lists, not the first only


def test_with_no_selection_a_mixed_experiment_reports_its_newest_comparable_set_and_names_the_others():
    # Issue 24: the quick-start run (10 epochs, all data) and a sweep (2 epochs, capped) in one experiment.
    runs, preds = study(SAME)
    runs["params.config/epochs"] = "2"
    runs["tags.mlflow.parentRunId"] = "sweep-parent"
    quick = run_row(
        "quick", "pool", 0, 860, extra={"params.config/epochs": "10", "params.config/max_train_examples": "0"}
    )
    runs["params.config/max_train_examples"] = "1000"
    runs = pd.concat([pd.DataFrame([quick]), runs], ignore_index=True)  # newest first, as MLflow lists them
    runs["start_time"] = pd.Timestamp("2026-01-01")
    runs.loc[runs["run_id"] == "quick", "start_time"] = pd.Timestamp("2026-01-02")
    preds["quick"] = predictions(860)
    with pytest.raises(BertpooledError, match="--group-by mode,epochs,max_train_examples"):
        build_report(runs, preds)
    report = build_report(runs, preds, newest_comparable_set=True)
    # The quick-start run is newer but alone in its set: the sweep, with two groups, is what gets compared.
    assert sorted(r.run_id for r in report.runs) == sorted(f"{m}{s}" for m in ("basic", "pool") for s in range(3))
    assert len(report.comparisons) == 1
    assert "bertpooled compare-runs --run-id quick" in report.notes[0] and "2 sets" in report.notes[0]
    assert "bertpooled compare-runs --run-id quick" in render.to_markdown(report)


def test_with_no_selection_comparable_runs_are_all_compared_as_before():
    runs, preds = study(SAME)
    report = build_report(runs, preds, newest_comparable_set=True)
    assert len(report.runs) == 6 and not [n for n in report.notes if "sets that cannot be compared" in n]


def test_runs_that_differ_only_in_precompute_mb_compare_and_their_training_time_is_marked():
    marks = {"params.config/precompute_mb": "0", "metrics.train_features/cache_hit": 0.0}
    runs, preds = study(
        SAME, pool_extra={"params.config/precompute_mb": "1024", "metrics.train_features/cache_hit": 1.0}
    )
    for column, value in marks.items():
        runs.loc[runs["params.config/mode"] == "basic", column] = value
    report = build_report(runs, preds)
    (comparison,) = report.comparisons
    assert comparison.cache_differs == ["train_features"]
    assert "total time and training time compare cache states, not modes." in comparison.verdict


def test_grouping_by_the_differing_field_keeps_the_runs_apart():
    runs, preds = study(SAME, pool_extra={"params.config/epochs": "3"})
    report = build_report(runs, preds, group_by="mode,epochs")
    assert set(report.group_configs) == {"basic/4", "pool/3"}


def test_a_seed_a_data_path_and_the_mode_preset_may_differ_and_each_group_config_is_reported():
    runs, preds = study(SAME, pool_extra={"params.config/pool": "avg:2x2", "params.config/data": "/elsewhere"})
    runs.loc[runs["params.config/mode"] == "basic", "params.config/pool"] = "none"
    report = build_report(runs, preds)
    assert report.group_configs["pool"]["pool"] == "avg:2x2" and report.group_configs["basic"]["pool"] == "none"
    assert "seed" not in report.group_configs["pool"]
    markdown = render.to_markdown(report)
    assert "## Config" in markdown and "epochs=4" in markdown and "| pool | none | avg:2x2 |" in markdown


def test_other_data_is_refused_by_its_digest():
    runs, preds = study(SAME, pool_extra={"params.data/digest": "bbb"})
    runs.loc[runs["params.config/mode"] == "basic", "params.data/digest"] = "aaa"
    with pytest.raises(BertpooledError, match=r"data/digest \(aaa, bbb\)"):
        build_report(runs, preds)


def test_several_comparisons_are_holm_corrected_and_verdicts_use_the_corrected_p():
    from bertpooled.report.stats import holm

    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)
    max_rows = [(run_row(f"max{seed}", "max", seed, n), predictions(n)) for seed, n in enumerate(CLEAR)]
    runs, preds = study(CLEAR, extra_rows=max_rows)
    report = build_report(runs, preds)
    raw = [c.accuracy_difference_points.p_value for c in report.comparisons]
    assert [c.p_holm for c in report.comparisons] == pytest.approx(holm(raw))
    assert all("Holm-adjusted" in c.verdict for c in report.comparisons)
    assert any("Holm-corrected" in note for note in report.notes)
    assert "Holm p" in render.to_markdown(report)


def test_cache_hits_are_shown_and_not_sold_as_a_modes_speed():
    runs, preds = study(
        SAME, pool_extra={"metrics.tokens/cache_hit": 1.0, "metrics.time/tokenize_s": 0.1, "metrics.time/epoch_s": 9.0}
    )
    runs.loc[runs["params.config/mode"] == "basic", "metrics.tokens/cache_hit"] = 0.0
    report = build_report(runs, preds)
    pool = next(g for g in report.groups if g.label == "pool")
    assert pool.cache_hits == {"tokens": 3}
    (comparison,) = report.comparisons
    assert comparison.cache_differs == ["tokens"]
    assert "differ in tokens cache hits, so total time compares cache states" in comparison.verdict
    text = render.to_table(report)
    assert "tokens 3/3" in text and "(cache)" in text
    assert "time/epoch_s" not in report.cost_metrics  # the last epoch's time; the table shows the mean per epoch
    assert "s0,s1,s2" in text and "mean s/epoch" in text


def test_equal_cache_states_add_no_caveat():
    runs, preds = study(SAME)
    (comparison,) = build_report(runs, preds).comparisons
    assert comparison.cache_differs == [] and "cache" not in comparison.verdict


def test_a_config_field_older_runs_never_logged_is_named_not_compared():
    runs, preds = study(SAME, pool_extra={"params.config/system_metrics": "False"})
    report = build_report(runs, preds)
    assert any("system_metrics not logged by every run" in note for note in report.notes)
    assert len(report.comparisons) == 1


def test_grouping_by_variant_lets_the_pooling_it_spells_out_differ():
    # An encoder study: each variant is its own pooling and position, which the variant's name spells out.
    runs, preds = study(SAME, pool_extra={"params.config/pool": "avg:2x1", "params.config/pool_at": "layer:2"})
    runs["tags.variant"] = [
        "encoder" if run_id.startswith("basic") else "encoder-avg:2x1@layer:2" for run_id in runs["run_id"]
    ]
    runs["params.config/mode"] = "basic"  # encoder runs are all mode basic; the variant tells them apart
    runs["params.config/pool_at"] = runs["params.config/pool_at"].fillna("input")
    report = build_report(runs, preds, group_by="variant", baseline="encoder")
    assert {g.label for g in report.groups} == {"encoder", "encoder-avg:2x1@layer:2"}


def test_a_new_quality_metric_is_one_contract_entry(monkeypatch):
    # Adding precision to the contract alone puts it in the records, the group table, the CSV and the JSON.
    from bertpooled import contract

    precision = contract.QualityMetric("test/precision", "precision", "precision")
    monkeypatch.setattr(contract, "QUALITY_METRICS", (*contract.QUALITY_METRICS, precision))
    runs, preds = study(SAME)
    runs["metrics.test/precision"] = np.where(runs["params.config/mode"] == "pool", 0.7, 0.9)
    report = build_report(runs, preds)

    basic, pool = report.groups
    assert basic.precision_mean == pytest.approx(0.9) and pool.quality_means["precision"] == pytest.approx(0.7)
    assert report.runs[0].quality["precision"] in (0.7, 0.9)
    header = next(line for line in render.to_markdown(report).splitlines() if line.startswith("| group | runs"))
    assert "| ROC AUC | precision | mean s/epoch |" in header
    assert "0.9000" in render.to_table(report)
    frame = pd.read_csv(io.StringIO(render.to_csv(report)))
    assert list(frame["precision_mean"]) == pytest.approx([0.9, 0.7])
    payload = json.loads(render.to_json(report))
    assert payload["groups"][1]["precision_mean"] == pytest.approx(0.7)
    assert {"accuracy", "f1", "roc_auc", "precision"} <= set(payload["runs"][0])
    assert "precision" in sections(report)[1].tables[0][0]  # the HTML page reads the same sections


def test_quality_metrics_score_predictions_at_the_contract_threshold():
    from bertpooled import contract

    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.2, 0.5, 0.5, 0.9])  # 0.5 is a positive prediction
    scores = {metric.name: metric.score(labels, probabilities) for metric in contract.QUALITY_METRICS}
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx(0.8)
    assert scores["roc_auc"] == pytest.approx(0.875)
    assert math.isnan(contract.ROC_AUC.score(np.array([1, 1]), np.array([0.3, 0.8])))


def test_no_ratio_of_a_phase_that_took_under_ten_milliseconds_on_either_side():
    runs, preds = study(SAME)
    # Issue 24: 0.327 s over 3.96 us printed as "82651.30x".
    runs["metrics.time/features_s"] = np.where(runs["params.config/mode"] == "pool", 0.327, 3.96e-6)
    runs["metrics.time/tokenize_s"] = np.where(runs["params.config/mode"] == "pool", 0.5, 0.25)
    (comparison,) = build_report(runs, preds).comparisons
    assert math.isnan(comparison.ratios["time/features_s"])
    assert comparison.ratios["time/tokenize_s"] == pytest.approx(2.0)
    markdown = render.to_markdown(build_report(runs, preds))
    assert "82651" not in markdown and "under 10 ms" in markdown


def test_no_parameter_ratio_between_model_families():
    rows, preds = [], {}
    for seed, (b, r) in enumerate(zip((850, 860, 855), SAME, strict=True)):
        rows.append(run_row(f"basic{seed}", "basic", seed, b, total_s=100.0, train_s=80.0))
        rows.append(run_row(f"reference{seed}", "reference", seed, r, total_s=20.0, train_s=5.0, head=8_000))
        preds[f"basic{seed}"], preds[f"reference{seed}"] = predictions(b), predictions(r)
    runs = pd.DataFrame(rows)
    (comparison,) = build_report(runs, preds).comparisons
    assert math.isnan(comparison.ratios["params/head"]) and comparison.ratios["time/total_s"] == pytest.approx(0.2)
    assert "head parameters" not in comparison.verdict


def test_the_cost_table_writes_small_numbers_out_instead_of_in_exponent_form():
    # Issue 31: 1.75e-06 beside plain numbers in one column.
    from bertpooled.report.numbers import fmt_number

    assert fmt_number(1.75e-06) == "0.00000175" and fmt_number(0.000451) == "0.000451"
    assert [fmt_number(v) for v in (0.5, 3.14159, 250.5, 12345.6, 0.0)] == ["0.5", "3.14", "250.5", "12,346", "0"]
    assert not [v for v in (1e-9, 2.5e-7, 3e-5) if "e" in fmt_number(v)]


def test_the_original_study_table_says_when_the_reproduction_followed_another_protocol():
    runs, preds = study(SAME)  # 4 epochs, not the original's 10
    text = render.to_markdown(build_report(runs, preds))
    assert "did not follow the original's protocol (epochs=4;" in text
    runs["params.config/epochs"] = "10"
    runs["params.config/max_train_examples"] = "0"
    assert "did not follow the original's protocol" not in render.to_markdown(build_report(runs, preds))


GOLDEN_REPORTS = Path(__file__).with_name("golden_reports")


@pytest.mark.parametrize("format", ["markdown", "table", "csv", "json"])
def test_the_report_renders_byte_for_byte_as_its_golden_file(full_report, format):
    """compare-runs' output on a fixed study (runs, predictions, histories) is checked by CI, not by hand: a move of
    the house that changes a byte of a report fails here. A change meant to change the report rewrites the files
    (`BERTPOOLED_WRITE_GOLDEN=1 pytest tests/test_report.py -k golden`); review their diff like code."""
    text = render.render(full_report, format)
    golden = GOLDEN_REPORTS / f"report.{'md' if format == 'markdown' else format}"
    if os.environ.get("BERTPOOLED_WRITE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
