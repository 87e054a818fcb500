"""The MLflow contract: every name a training run logs and ``compare-runs`` reads, in one place.

Training (``run/``, ``tracking/runs.py``) writes these metrics, tags, params and artifacts; the report
(``report/``, ``tracking/store.py``) reads them. Nothing here calls MLflow: the tag keys MLflow itself
defines are spelled as MLflow spells them (``mlflow.utils.mlflow_tags``; a test pins them), so reading the
contract never imports MLflow; the rest are this project's.

A new quality metric is one entry in :data:`QUALITY_METRICS`: its ``score`` computes it from the test
predictions, and the report summarises it per group and shows it in the tables, the CSV and the JSON.
A new cost metric needs no entry at all: any metric under :data:`COST_PREFIXES` is a cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# --- Experiments ------------------------------------------------------------------------

DEFAULT_EXPERIMENT = "bertpooled"
#: Comparison runs go to their own experiment, so the training experiments hold training runs only.
COMPARISON_EXPERIMENT = "bertpooled-comparisons"
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"

# --- Tags ---------------------------------------------------------------------------------

RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_TAG = "mlflow.parentRunId"
#: The run's description, shown as its note in MLflow's UI.
NOTE_TAG = "mlflow.note.content"
#: MLflow's longest tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH): a sweep's grid must fit in its tags.
MAX_TAG_VALUE = 8000
#: What a failed or interrupted run ended with (the error's first line).
ERROR_TAG = "error"

#: On a training run: `default`, or the settings where it differs from the default protocol (`epochs=2 ...`).
PROTOCOL_TAG = "protocol"
#: What a run is: a training run, a sweep's parent, or a comparison (compare-runs' report).
KIND_TAG = "bertpooled.kind"
KIND_TRAIN = "train"
KIND_SWEEP = "sweep"
KIND_COMPARISON = "comparison"
#: A tuning study's parent run (`bertpooled tune`), and each of its trials: scored on a validation split, never
#: on the test set, so no comparison of test accuracy may count them.
KIND_TUNE = "tune"
KIND_TRIAL = "tune_trial"
KIND_ADAPT = "adapt"  # `bertpooled adapt`: a backbone adapted to its pooling, no classifier
#: Kinds that are not training runs: compare-runs leaves them out, whether it searches or is handed a frame.
NOT_TRAINING_KINDS = (KIND_SWEEP, KIND_COMPARISON, KIND_TUNE, KIND_TRIAL, KIND_ADAPT)


def counts_as_training(kind: str | None) -> bool:
    """Whether a run with this ``bertpooled.kind`` tag is a training run to compare (untagged runs count)."""
    return kind not in NOT_TRAINING_KINDS


#: On the process `mlflow run -e compare` created: the comparison run that holds the report.
COMPARISON_RUN_TAG = "bertpooled.comparison_run_id"

SWEEP_KEY_TAG = "sweep/key"  # a child's resolved-config key: a sweep run again skips finished children
SWEEP_CHILD_TAG = "sweep/child"  # a child's label
SWEEP_MODES_TAG = "sweep/modes"
SWEEP_SEEDS_TAG = "sweep/seeds"
SWEEP_CHILDREN_TAG = "sweep/children"
SWEEP_SHARED_INPUTS_TAG = "sweep/shared_inputs"
SWEEP_PARALLEL_TAG = "sweep/parallel"
SWEEP_EXECUTOR_TAG = "sweep/executor"
SWEEP_NODE_TAG = "sweep/node"
SWEEP_NODE_IP_TAG = "sweep/node_ip"
#: On a child trained in one loop with the other seeds of its config (`sweep --group-seeds`): S, and a note.
SWEEP_GROUP_SIZE_TAG = "sweep/group_size"
SWEEP_GROUP_NOTE_TAG = "sweep/group_note"
#: On a sweep's parent: the comparison run of its children.
SWEEP_COMPARISON_RUN_TAG = "sweep/comparison_run_id"

#: A tuning study (`bertpooled tune`): the experiment its runs go to by default, and its tags. Every run of a
#: study carries its Optuna study name; a trial its number and state (COMPLETE, PRUNED, FAIL: Optuna's names).
TUNE_EXPERIMENT = "bertpooled-tuning"
TUNE_STUDY_TAG = "tune/study"
TUNE_STORAGE_TAG = "tune/storage"
TUNE_TRIAL_TAG = "tune/trial"
TUNE_STATE_TAG = "tune/state"
TUNE_BEST_TRIAL_TAG = "tune/best_trial"
TUNE_BEST_RUN_TAG = "tune/best_run_id"
#: On a study's parent: the best trial's config, which `train --config` and `sweep --config` take as it is.
BEST_CONFIG_ARTIFACT = "best_config.yaml"

#: On a resumed run: the last epoch its checkpoint held when this attempt started.
RESUMED_TAG = "resumed_after_epoch"
#: The process that drives a run (`host:pid:nonce`) and the last time it said so (Unix seconds, refreshed every
#: `bertpooled.tracking.ownership.HEARTBEAT_S`): what tells a live RUNNING run from one whose process died.
OWNER_TAG = "bertpooled.owner"
HEARTBEAT_TAG = "bertpooled.heartbeat"
#: The claim's generation: a counter each start or takeover of the run raises; an owner writes only while the
#: store still holds the generation it claimed (`bertpooled.tracking.ownership.hold`).
GENERATION_TAG = "bertpooled.generation"
CHECKPOINT_PATH_TAG = "checkpoint/path"
CHECKPOINT_EPOCH_TAG = "checkpoint/epoch"
CHECKPOINT_SHA256_TAG = "checkpoint/sha256"

# --- Params -------------------------------------------------------------------------------

#: Each resolved config field is logged as `config/<field>` (plain names belong to `mlflow run -P`).
CONFIG_PARAM_PREFIX = "config/"
#: The digest of the data read; runs on other data are never paired.
DATA_DIGEST_PARAM = "data/digest"
#: Which code trained a run (tracking.runs.code_provenance); a resume compares them.
GIT_COMMIT_PARAM = "git/commit"
GIT_DIRTY_PARAM = "git/dirty"
GIT_DIFF_PARAM = "git/diff_sha256"
CODE_VERSION_PARAM = "code/version"
CODE_PARAMS = (GIT_COMMIT_PARAM, GIT_DIRTY_PARAM, GIT_DIFF_PARAM, CODE_VERSION_PARAM)

# --- Artifacts ----------------------------------------------------------------------------

#: Per-example test predictions, which the report's McNemar tests read.
PREDICTIONS_PATH = "predictions/test.csv"
PREDICTION_COLUMNS = ("id", "label", "probability")
CONFIG_ARTIFACT = "config.yaml"
#: The test predictions' confusion matrix, ROC and precision-recall curves; a tuning study's Optuna plots.
PLOTS_DIR = "plots"
MODEL_NAME = "model"
#: Checkpoints alternate between these artifact folders; `checkpoint/path` names the valid one.
CHECKPOINT_SLOTS = ("checkpoint/a", "checkpoint/b")

#: A probability at or above this is a positive prediction, in every metric and in serving.
THRESHOLD = 0.5

# --- Quality metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityMetric:
    """A test-set quality metric: its MLflow key, its short name in report fields, its table header.

    ``score(labels, probabilities)`` computes it from the test predictions (``None``: logged elsewhere).
    The report shows ``<name>_mean`` per group (the CSV column and the JSON field) under ``label``.
    """

    key: str
    name: str
    label: str
    score: Callable[[np.ndarray, np.ndarray], float] | None = None


def _accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, probabilities >= THRESHOLD))


def _f1(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, (probabilities >= THRESHOLD).astype(int), zero_division=0))


def _roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    # Undefined on a test set with one class only.
    return float(roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else float("nan")


#: The primary metric: the report tests its differences (paired t-test, McNemar) and draws it.
ACCURACY = QualityMetric("test/accuracy", "accuracy", "accuracy", _accuracy)
F1 = QualityMetric("test/f1", "f1", "F1", _f1)
ROC_AUC = QualityMetric("test/roc_auc", "roc_auc", "ROC AUC", _roc_auc)
#: Every test-set quality metric, in table order. Add an entry here to add a metric.
QUALITY_METRICS = (ACCURACY, F1, ROC_AUC)


def quality_means() -> tuple[QualityMetric, ...]:
    """The quality metrics the report summarises as a mean per group beside accuracy (read at call time)."""
    return tuple(metric for metric in QUALITY_METRICS if metric.key != ACCURACY.key)


# --- Training curves ------------------------------------------------------------------------

TRAIN_LOSS = "train/loss"
TRAIN_ACCURACY = "train/accuracy"

#: The validation split's quality metrics (`validation_fraction` > 0), logged per epoch as `val/<name>`: the
#: test metrics' scores on held-out training rows, what a tuning study chooses by.
VAL_PREFIX = "val/"


def val_metric(metric: QualityMetric) -> str:
    """The key a quality metric is logged under for the validation split: `val/accuracy`, `val/f1`, ..."""
    return VAL_PREFIX + metric.key.split("/", 1)[1]


VAL_ACCURACY = val_metric(ACCURACY)

# --- Costs -------------------------------------------------------------------------------------

#: Timed phases, each logged as `time/<phase>_s` (see time_metric); `total` covers the whole process, and
#: `precompute` (the training rows' frozen features computed once, `run.precompute.before_training`) is part of `train`.
PHASES = ("data", "tokenize", "features", "teacher", "precompute", "train", "eval", "cost", "log_model", "total")


def time_metric(phase: str) -> str:
    """The metric a phase's wall-clock seconds are logged under: `time/<phase>_s`."""
    return f"time/{phase}_s"


TIME_DATA = time_metric("data")
TIME_TOKENIZE = time_metric("tokenize")
TIME_FEATURES = time_metric("features")
TIME_TRAIN = time_metric("train")
TIME_EVAL = time_metric("eval")
TIME_TOTAL = time_metric("total")
#: A grouped child's whole group's training time (its time/train_s is its 1/S share).
TIME_GROUP_TRAIN = "time/group_train_s"
#: Logged per epoch (step = epoch).
TIME_EPOCH = "time/epoch_s"
#: Derived by the report, not logged: `time/train_s` divided by `config/epochs`.
TIME_PER_EPOCH = "time/train_s_per_epoch"
THROUGHPUT_TRAIN = "throughput/train_examples_per_s"
PARAMS_HEAD = "params/head"
PARAMS_HEAD_TRAINABLE = "params/head_trainable"
PARAMS_BACKBONE = "params/backbone"

#: Metric-name prefixes treated as cost: every metric under them is summarised (median per group) and
#: compared (ratio to the baseline) without code changes.
COST_PREFIXES = ("time/", "throughput/", "params/", "cost/", "latency/", "memory/")
#: Cost metrics listed first, in this order; any other cost metric follows alphabetically.
KNOWN_COST_ORDER = (
    TIME_DATA,
    TIME_TOKENIZE,
    TIME_FEATURES,
    TIME_TRAIN,
    TIME_EVAL,
    TIME_TOTAL,
    TIME_EPOCH,
    TIME_PER_EPOCH,
    THROUGHPUT_TRAIN,
    PARAMS_HEAD,
    PARAMS_HEAD_TRAINABLE,
    PARAMS_BACKBONE,
)
#: Logged per epoch: its last value beside the mean per epoch (TIME_PER_EPOCH) only confused the table.
NOT_COSTS = (TIME_EPOCH,)
#: The costs a verdict names and a comparison run logs as ratios, with their words.
HEADLINE_COSTS = ((TIME_TOTAL, "total time"), (TIME_TRAIN, "training time"), (PARAMS_HEAD, "head parameters"))


def cache_hit_metric(cache: str) -> str:
    """`<cache>/cache_hit`: 1 when the run found that cache warm, else 0."""
    return f"{cache}/cache_hit"


#: The time each cache saves, by cache name; total time includes them all.
#: `train_features`: the training rows' frozen features precomputed in memory (`run.precompute.before_training`), which
#: shortens training itself; only runs whose features fit the budget get it.
CACHED_PHASES = {
    "tokens": (TIME_TOKENIZE, TIME_TOTAL),
    "features": (TIME_FEATURES, TIME_TOTAL),
    "train_features": (TIME_TRAIN, TIME_TOTAL),
}

#: Runs without these final metrics cannot be placed on the accuracy/compute trade-off, so the report
#: skips them.
REQUIRED_METRICS = (ACCURACY.key, TIME_TOTAL)
#: Per-epoch metrics the report fetches for its learning curves.
HISTORY_KEYS = (TRAIN_LOSS, TRAIN_ACCURACY, ACCURACY.key, TIME_EPOCH)

# --- The logged model's scoring convention (bertpooled/serving/classifier.py) ----------------------------------

#: The scoring param, spelled as mlflow.sklearn spells it, and its values.
PREDICT_METHOD = "predict_method"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
PREDICT_METHODS = (PREDICT, PREDICT_PROBA)
#: In the MLmodel's metadata: the model answers `predict_method="predict_proba"` with class probabilities,
#: which bertpooled's MLflow evaluator (serving/evaluation.py) turns into ROC AUC and the curves.
PROBA_METADATA_KEY = "bertpooled.predict_proba"
INPUT_EXAMPLE = ["a wonderful film", "dull and far too long"]
