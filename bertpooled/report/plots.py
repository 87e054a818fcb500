"""PNG figures for a comparison report (matplotlib, headless Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on servers and in CI, where no display exists

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bertpooled import files
from bertpooled.contract import THRESHOLD, TIME_TOTAL, TRAIN_ACCURACY, TRAIN_LOSS
from bertpooled.report.records import Report

__all__ = ["accuracy_vs_time", "classifier_plots", "learning_curves"]

_CURVE_KEYS = ((TRAIN_LOSS, "train loss"), (TRAIN_ACCURACY, "train accuracy"))


def accuracy_vs_time(report: Report, path: str | Path) -> Path:
    """Scatter every kept run (x = ``time/total_s``, y = test accuracy) and each group's
    mean with its confidence interval as an error bar; save a PNG at ``path``."""
    path = Path(path)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    try:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for index, group in enumerate(report.groups):
            color = colors[index % len(colors)]
            members = [run for run in report.runs if run.group == group.label]
            times = [run.costs.get(TIME_TOTAL, math.nan) for run in members]
            accuracies = [run.accuracy for run in members]
            axes.scatter(times, accuracies, color=color, alpha=0.45, s=28, label=f"{group.label} runs")
            finite_times = [t for t in times if math.isfinite(t)]
            if not finite_times:
                continue
            mean_time = sum(finite_times) / len(finite_times)
            accuracy = group.accuracy
            error = None
            if math.isfinite(accuracy.low) and math.isfinite(accuracy.high):
                error = [[accuracy.mean - accuracy.low], [accuracy.high - accuracy.mean]]
            axes.errorbar(
                [mean_time],
                [accuracy.mean],
                yerr=error,
                fmt="D",
                color=color,
                markersize=8,
                capsize=5,
                label=f"{group.label} mean ± {report.confidence * 100:g}% CI (n={group.n_runs})",
            )
        axes.set_xlabel("total time per run, time/total_s (s)")
        axes.set_ylabel("test accuracy")
        axes.set_title("Accuracy against compute")
        axes.grid(True, alpha=0.3)
        if report.groups:
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no runs to plot", ha="center", va="center", transform=axes.transAxes)
        _save(figure, path)
    finally:
        plt.close(figure)
    return path


def learning_curves(
    source: Report | Mapping[str, pd.DataFrame],
    path: str | Path,
    run_groups: Mapping[str, str] | None = None,
) -> Path:
    """Plot mean ``train/loss`` and ``train/accuracy`` per epoch, one line per group; save a PNG.

    ``source`` is a :class:`Report` (its per-group mean curves) or raw histories
    (``run_id -> frame`` with ``key``, ``step``, ``value``); raw histories are
    averaged per ``run_groups[run_id]``, or drawn one line per run without it.
    Runs that logged no per-epoch metrics (e.g. the reference mode) leave a
    figure that says so.
    """
    path = Path(path)
    curves = source.learning_curves if isinstance(source, Report) else _mean_curves(source, run_groups)
    figure, axes = plt.subplots(1, len(_CURVE_KEYS), figsize=(10, 4))
    try:
        for axis, (key, label) in zip(axes, _CURVE_KEYS, strict=True):
            plotted = False
            for group, by_key in curves.items():
                points = by_key.get(key)
                if not points:
                    continue
                axis.plot([p["step"] for p in points], [p["mean"] for p in points], marker="o", label=group)
                plotted = True
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel(f"mean {label}")
            axis.set_title(label)
            axis.grid(True, alpha=0.3)
            if plotted:
                axis.legend(fontsize="small")
            else:
                axis.text(0.5, 0.5, f"no {key} history logged", ha="center", va="center", transform=axis.transAxes)
        _save(figure, path)
    finally:
        plt.close(figure)
    return path


def _mean_curves(
    histories: Mapping[str, pd.DataFrame], run_groups: Mapping[str, str] | None
) -> dict[str, dict[str, list[dict[str, float]]]]:
    frames = [
        history[["key", "step", "value"]].assign(group=(run_groups or {}).get(run_id, run_id))
        for run_id, history in histories.items()
        if history is not None and not history.empty and (run_groups is None or run_id in run_groups)
    ]
    if not frames:
        return {}
    summary = pd.concat(frames).groupby(["group", "key", "step"])["value"].mean().reset_index()
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for (group, key), part in summary.groupby(["group", "key"]):
        curves.setdefault(str(group), {})[str(key)] = [
            {"step": int(step), "mean": float(value)} for step, value in zip(part["step"], part["value"], strict=True)
        ]
    return curves


def classifier_plots(labels, probabilities, folder: str | Path) -> list[Path]:
    """One run's test predictions as confusion_matrix.png, roc_curve.png and precision_recall.png in ``folder``.

    The figures MLflow's classifier evaluation would log, made with scikit-learn's displays from the
    predictions the run already has (at contract.THRESHOLD, as test/accuracy uses).
    """
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    labels, probabilities = np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float)
    folder = Path(folder)
    paths = []
    for name, draw in (
        (
            "confusion_matrix.png",
            lambda ax: ConfusionMatrixDisplay.from_predictions(
                labels,
                (probabilities >= THRESHOLD).astype(int),
                labels=[0, 1],
                display_labels=["negative", "positive"],
                colorbar=False,
                ax=ax,
            ),
        ),
        (
            "roc_curve.png",
            lambda ax: RocCurveDisplay.from_predictions(labels, probabilities, ax=ax, plot_chance_level=True),
        ),
        (
            "precision_recall.png",
            lambda ax: PrecisionRecallDisplay.from_predictions(labels, probabilities, ax=ax, plot_chance_level=True),
        ),
    ):
        figure, axes = plt.subplots(figsize=(4.5, 4))
        try:
            draw(axes)
            axes.set_title(name.removesuffix(".png").replace("_", " "))
            _save(figure, folder / name)
        finally:
            plt.close(figure)
        paths.append(folder / name)
    return paths


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(path, ".png") as tmp:
        figure.savefig(tmp, dpi=120)
