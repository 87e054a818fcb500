"""bertpooled's MLflow evaluator: the probability metrics of `mlflow.models.evaluate` for the logged models.

MLflow's built-in classifier evaluator reads labels from `predict` and takes probabilities only from a raw
scikit-learn, XGBoost or CatBoost model's `predict_proba` (its documented limitation; mlflow/mlflow#5337 asks
for pyfunc models); for any other pyfunc it computes no ROC AUC. This evaluator is registered with MLflow
through the `mlflow.model_evaluator` entry point (pyproject.toml), so a plain

    mlflow.models.evaluate(model="runs:/<id>/model", data=df, targets="label", model_type="classifier")

runs it beside the built-in one. For a model that declares class probabilities (the metadata key below, which
serving/classifier.py's convention sets) it asks `predict_method="predict_proba"` and logs `roc_auc`,
`precision_recall_auc` and `log_loss` (MLflow's names) and the ROC and precision-recall curves; for any other
model it does nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator

from bertpooled.contract import PREDICT_METHOD, PREDICT_PROBA, PROBA_METADATA_KEY

NAME = "bertpooled"


def declares_probabilities(model) -> bool:
    metadata = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    return bool(metadata.get(PROBA_METADATA_KEY))


class ProbabilityEvaluator(ModelEvaluator):
    """ROC AUC, precision-recall AUC, log loss and the two curves from the model's class probabilities."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type == "classifier"

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        from sklearn import metrics as sk

        if model is None or not declares_probabilities(model) or dataset.labels_data is None:
            return EvaluationResult({}, {}, run_id)
        labels = np.asarray(dataset.labels_data).astype(np.int64)
        if set(np.unique(labels)) - {0, 1}:
            return EvaluationResult({}, {}, run_id)  # not this model's 0/1 labels: the built-in evaluator says so
        probs = np.asarray(model.predict(dataset.features_data, params={PREDICT_METHOD: PREDICT_PROBA}))[:, 1]
        prefix = (evaluator_config or {}).get("metric_prefix", "")
        values: dict[str, float] = {"log_loss": float(sk.log_loss(labels, probs, labels=[0, 1]))}
        both_classes = len(np.unique(labels)) == 2  # the AUCs and curves need both
        if both_classes:
            precision, recall, _ = sk.precision_recall_curve(labels, probs)
            values["roc_auc"] = float(sk.roc_auc_score(labels, probs))
            values["precision_recall_auc"] = float(sk.auc(recall, precision))  # as MLflow computes it
        values = {prefix + key: value for key, value in values.items()}
        timestamp = int(time.time() * 1000)
        MlflowClient().log_batch(
            run_id,
            metrics=[
                Metric(
                    key,
                    value,
                    timestamp,
                    0,
                    model_id=kwargs.get("model_id"),
                    dataset_name=dataset.name,
                    dataset_digest=dataset.digest,
                    run_id=run_id,
                )
                for key, value in values.items()
            ],
        )
        artifacts = _log_curves(labels, probs, prefix, run_id) if both_classes else {}
        return EvaluationResult(values, artifacts, run_id)


def _log_curves(labels: np.ndarray, probs: np.ndarray, prefix: str, run_id: str) -> dict:
    # A Figure of its own, not pyplot: the caller's matplotlib backend and open figures stay as they were.
    from matplotlib.figure import Figure
    from mlflow.models.evaluation.artifacts import ImageEvaluationArtifact
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    client = MlflowClient()
    artifact_uri = client.get_run(run_id).info.artifact_uri
    artifacts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, display in (
            ("roc_curve_plot", RocCurveDisplay),
            ("precision_recall_curve_plot", PrecisionRecallDisplay),
        ):
            path = Path(tmp) / f"{prefix}{name}.png"
            fig = Figure(figsize=(5, 4))
            display.from_predictions(labels, probs, ax=fig.subplots(), pos_label=1)
            fig.savefig(path, bbox_inches="tight")
            client.log_artifact(run_id, str(path))
            artifacts[name] = ImageEvaluationArtifact(uri=f"{artifact_uri}/{path.name}")
    return artifacts
