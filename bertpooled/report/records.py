"""The report's record and result types: what ``build_report`` returns and the renderers read.

Plain frozen dataclasses that know nothing of how they are presented: ``bertpooled.report.render``
(text, Markdown, JSON, CSV), ``bertpooled.report.sections`` and ``bertpooled.report.html`` take a
:class:`Report`, so the imports run one way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bertpooled.report.stats import MeanCI, PairedDifference


@dataclass(frozen=True)
class RunRecord:
    """One kept training run, reduced to what the report and plots use."""

    run_id: str
    run_name: str
    status: str
    group: str
    group_values: dict[str, str]
    seed: str | None
    mode: str | None
    backbone: str | None
    accuracy: float
    #: Every other quality metric of the contract (``contract.quality_means()``), by its short name.
    quality: dict[str, float]
    costs: dict[str, float]
    #: Which caches this run found warm (`tokens/cache_hit`, `features/cache_hit` = 1): "tokens", "features".
    cache_hits: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupSummary:
    """Accuracy and cost of one group of runs (one value of the group-by keys)."""

    label: str
    values: dict[str, str]
    n_runs: int
    run_ids: list[str]
    seeds: list[str]
    accuracy: MeanCI
    #: The mean of every other quality metric of the contract, by its short name (``f1``, ``roc_auc``).
    quality_means: dict[str, float]
    costs: dict[str, float]  # median per cost metric; NaN where no run logged it
    #: Per cache ("tokens", "features"), how many of the group's runs found it warm.
    cache_hits: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        """``<metric>_mean`` for each quality metric in ``quality_means`` (``group.f1_mean``), as in the JSON
        and CSV; called only for names that are not fields."""
        means = self.__dict__.get("quality_means") or {}
        if name.endswith("_mean") and name.removesuffix("_mean") in means:
            return means[name.removesuffix("_mean")]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class McNemarPair:
    """Exact McNemar test between one group run and the baseline run with the same seed.

    ``b`` counts test examples only the group's run got right, ``c`` those only
    the baseline's run got right.
    """

    seed: str
    run_id: str
    baseline_run_id: str
    b: int
    c: int
    n: int
    p_value: float
    significant: bool


@dataclass(frozen=True)
class Comparison:
    """One group against the baseline: cost ratios, accuracy difference, tests, verdict."""

    group: str
    baseline: str
    paired_seeds: list[str]
    accuracy_difference_points: PairedDifference  # 100 * (group - baseline), paired by seed
    ratios: dict[str, float]  # group median / baseline median per cost metric
    mcnemar: list[McNemarPair]
    mcnemar_refused: list[dict[str, str]]
    verdict: str
    #: Caches one group found warm more often than the other: their phases' time ratios measure the
    #: cache, not the mode (see `CACHED_PHASES`).
    cache_differs: list[str] = field(default_factory=list)
    #: The paired t-test's p-value after Holm's correction across all comparisons of the report
    #: (the raw p when there is one comparison); verdicts use this one.
    p_holm: float = math.nan

    @property
    def mcnemar_significant(self) -> int:
        """How many seed pairs the McNemar test found significant."""
        return sum(pair.significant for pair in self.mcnemar)


@dataclass(frozen=True)
class OriginalStudyRow:
    """A row of the original-study section: an original run or a reproduced group."""

    source: str
    mode: str
    n_runs: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    total_time_min: float
    head_params: float
    backbones: str


@dataclass(frozen=True)
class Report:
    """The outcome of ``build_report``; render it with ``bertpooled.report.render.render(report, format)``."""

    group_by: tuple[str, ...]
    baseline: str | None
    alpha: float
    confidence: float
    runs: list[RunRecord]
    groups: list[GroupSummary]
    comparisons: list[Comparison]
    original_study: list[OriginalStudyRow]
    learning_curves: dict[str, dict[str, list[dict[str, float]]]]
    skipped: list[dict[str, str]]
    notes: list[str]
    cost_metrics: list[str]
    comparison_run_id: str | None = None
    #: Per group, the config its runs share (seed excluded); the same for every group but the group keys.
    group_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: What to run next when there was nothing to compare with (no baseline group); "" otherwise.
    next_step: str = ""
