"""One run, one sink (issue 30): a training run, a tuning trial and a seed group's child log their epochs through
the same method of the same sink, and nothing else logs an epoch."""

from __future__ import annotations

import mlflow
import optuna
from conftest import SMOKE, invoke_tiny

from bertpooled.contract import TRAIN_LOSS
from bertpooled.tracking import sink as sinks


def test_every_kind_of_run_logs_its_epochs_in_one_place(store, tiny_bert, tiny_imdb, monkeypatch):
    from bertpooled.tune import plan as planning
    from bertpooled.tune import study as tuning

    told: list[tuple[str, str, int]] = []  # (kind of start, seed group size, step) per epoch the sink was told
    logged: list[bool] = []  # per MLflow call that logs train/loss: whether it came through the sink's epoch
    inside = []
    real_epoch, real_log = sinks.MlflowSink.epoch, mlflow.log_metrics

    def epoch(self, step, metrics):
        told.append((type(self.how).__name__, self.how.tags.get("sweep/group_size", ""), step))
        inside.append(True)
        try:
            return real_epoch(self, step, metrics)
        finally:
            inside.pop()

    def log_metrics(metrics, *args, **kwargs):
        if TRAIN_LOSS in metrics:
            logged.append(bool(inside))
        return real_log(metrics, *args, **kwargs)

    monkeypatch.setattr(sinks.MlflowSink, "epoch", epoch)
    monkeypatch.setattr(mlflow, "log_metrics", log_metrics)

    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--mode", "pool", "--no-progress")
    assert result.exit_code == 0, result.output
    tiny = {"data": str(tiny_imdb), "model": str(tiny_bert), "max_len": 16}
    (plan,) = planning.plan_studies(SMOKE, tiny, ["pool"], "lr=1e-3..1e-1:log", "sink")
    tuning.run_study(plan, trials=1, pruner=optuna.pruners.NopPruner(), log=lambda line: None)
    grouped = ("--modes", "basic", "--seeds", "2", "--group-seeds", "--no-progress", "--experiment", "g")
    result = invoke_tiny("sweep", tiny_bert, tiny_imdb, *grouped)
    assert result.exit_code == 0, result.output

    assert told == [
        ("TrainingStart", "", 1),
        ("TrainingStart", "", 2),
        ("TrialStart", "", 1),
        ("TrialStart", "", 2),
        *[("TrainingStart", "2", step) for _child in range(2) for step in (1, 2)],
    ]
    assert logged == [True] * len(told)  # each epoch logged once, and only by the sink
    mlflow.set_tracking_uri(None)


def test_a_callback_sees_each_epoch_after_it_is_logged_and_can_end_the_run(store):
    """A trial's pruning in miniature: the callback raises after the second epoch; the run ends as the start says."""
    from mlflow.tracking import MlflowClient

    class Stop(Exception):
        pass

    seen: list[tuple[str, int]] = []

    class StopAtTwo:
        def on_start(self, run_id: str) -> None:
            seen.append((run_id, 0))

        def on_epoch(self, step: int, metrics) -> None:
            seen.append((str(metrics[TRAIN_LOSS]), step))
            if step == 2:
                raise Stop("enough")

    mlflow.set_experiment("callbacks")
    parent = mlflow.start_run(run_name="study")
    mlflow.end_run()
    sink = sinks.MlflowSink(sinks.TrialStart(parent.info.run_id, "trial-0", {}, "a trial", (Stop,)), [StopAtTwo()])
    try:
        with sink.start():
            for step in (1, 2, 3):
                sink.epoch(step, {TRAIN_LOSS: 1.0 / step})
    except Stop:
        pass
    assert seen == [(sink.run_id, 0), ("1.0", 1), ("0.5", 2)]
    run = MlflowClient().get_run(sink.run_id)
    assert run.info.status == "KILLED" and run.data.tags["tune/state"] == "PRUNED"
    history = MlflowClient().get_metric_history(sink.run_id, TRAIN_LOSS)
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]
    mlflow.set_tracking_uri(None)


def test_a_runs_checkpoints_predictions_and_plots_go_through_its_sink(store, tiny_bert, tiny_imdb, monkeypatch):
    """What a run writes besides metrics goes through the sink too, and run/ never calls the writers itself."""
    from pathlib import Path

    import bertpooled

    told: list[tuple[str, object]] = []
    for method in ("checkpoint", "predictions", "artifacts"):
        real = getattr(sinks.MlflowSink, method)

        def record(self, *args, _method=method, _real=real):
            told.append((_method, args[1] if _method != "predictions" else len(args[0])))
            return _real(self, *args)

        monkeypatch.setattr(sinks.MlflowSink, method, record)
    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--mode", "pool", "--no-progress")
    assert result.exit_code == 0, result.output
    assert told[:2] == [("checkpoint", 1), ("checkpoint", 2)]
    assert told[2][0] == "predictions" and told[2][1] > 0 and told[3:] == [("artifacts", "plots")]

    run_modules = Path(bertpooled.__file__).parent / "run"
    writers = ("log_predictions", "log_checkpoint", "log_artifacts", "mlflow.log_")
    calls = {p.name: [w for w in writers if w in p.read_text()] for p in run_modules.glob("*.py")}
    assert {name: found for name, found in calls.items() if found} == {}
    mlflow.set_tracking_uri(None)


def test_an_epoch_report_tells_the_sink_then_says_one_line():
    from bertpooled.contract import ACCURACY, TIME_EPOCH, TRAIN_ACCURACY, VAL_ACCURACY
    from bertpooled.run.measure import EpochReport, EpochStats

    events: list[tuple] = []

    class Sink:
        def epoch(self, step, metrics):
            events.append(("sink", step, metrics))

    report = EpochReport(Sink(), epochs=3, log=lambda line: events.append(("log", line)))
    report(EpochStats(2, 0.5, 0.75, 1.25, test_accuracy=0.8, val={VAL_ACCURACY: 0.7}))

    assert events == [
        (
            "sink",
            2,
            {TRAIN_LOSS: 0.5, TRAIN_ACCURACY: 0.75, TIME_EPOCH: 1.25, ACCURACY.key: 0.8, VAL_ACCURACY: 0.7},
        ),
        ("log", "epoch 2/3: loss=0.5000 acc=0.7500 test_acc=0.8000 val_acc=0.7000 (1.2s)"),
    ]
