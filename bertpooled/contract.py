"""The MLflow contract between training and the report: the metric names the report reads.

Training logs these names; ``compare-runs`` reads them. Kept in one module so both sides agree.
"""

from __future__ import annotations

#: Runs without these final metrics cannot be placed on the accuracy/compute
#: trade-off the project asks about, so the builder skips them.
REQUIRED_METRICS = ("test/accuracy", "time/total_s")
#: Metric-name prefixes treated as cost: every metric under them is summarised
#: (median per group) and compared (ratio to the baseline) without code changes.
COST_PREFIXES = ("time/", "throughput/", "params/", "cost/", "latency/", "memory/")
#: Contract metrics listed first, in this order; any other cost metric follows alphabetically.
KNOWN_COST_ORDER = (
    "time/data_s",
    "time/tokenize_s",
    "time/features_s",
    "time/train_s",
    "time/eval_s",
    "time/total_s",
    "time/epoch_s",
    "time/train_s_per_epoch",
    "throughput/train_examples_per_s",
    "params/head",
    "params/head_trainable",
    "params/backbone",
)
#: The time each cache saves, by the name in its `<cache>/cache_hit` metric; total time includes them all.
CACHED_PHASES = {"tokens": ("time/tokenize_s", "time/total_s"), "features": ("time/features_s", "time/total_s")}
#: Logged per epoch; its last value beside the mean per epoch (TIME_PER_EPOCH) only confused the table.
NOT_COSTS = ("time/epoch_s",)
#: Derived by the report, not logged: ``time/train_s`` divided by ``config/epochs``.
TIME_PER_EPOCH = "time/train_s_per_epoch"
#: Run kinds (tag ``bertpooled.kind``) that are not training runs.
EXCLUDED_KINDS = ("sweep", "comparison")
PREDICTION_COLUMNS = ("id", "label", "probability")
