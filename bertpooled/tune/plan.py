"""A tuning study's plan: each mode's study resolved and checked (config, backbone, data source, search space)
before any run, as one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from bertpooled.config import Config, load_config, read_yaml, resolve_config_path
from bertpooled.errors import BertpooledError
from bertpooled.run import prepare
from bertpooled.tune.space import SearchSpace, check_space, parse_space

DEFAULT_VALIDATION_FRACTION = 0.2
# How the search shrinks its data: left out of the best config, which runs the --config protocol on its data.
SEARCH_ONLY = ("max_train_examples", "validation_fraction", "data")


@dataclass(frozen=True)
class StudyPlan:
    """One mode's study, resolved and checked before any run: its name, the trials' base config, the space."""

    mode: str
    name: str
    base: Config
    """Every trial's config before the trial's own values: the --config file, the options, the validation split."""
    protocol: dict
    """What the best config YAML starts from: the --config file's settings and the options, less SEARCH_ONLY."""
    space: SearchSpace


def plan_studies(
    config: str | None, overrides: dict[str, object], modes: Sequence[str], space_text: str, study: str
) -> list[StudyPlan]:
    """Every mode's study resolved and checked (config, backbone, data source, space): one-line errors, no run."""
    space = parse_space(space_text)
    if str(overrides.get("mode") or "").strip():
        raise BertpooledError("--set mode=... does not apply to tune: pass --modes (one study per mode)")
    if not str(study or "").strip():
        raise BertpooledError("--study is empty: name the study, e.g. --study tune")
    file_values = read_yaml(resolve_config_path(config)) if config else {}
    plans = []
    for mode in modes:
        base = load_config(config or None, {**overrides, "mode": mode})
        if base.mode == "reference":
            raise BertpooledError("mode=reference has no epochs or head to tune: pass --modes basic,pool")
        if base.eval_each_epoch:
            raise BertpooledError(
                "eval_each_epoch=true scores the test set every epoch, which a search must never "
                "see: leave it out (trials report val/accuracy)"
            )
        if not base.validation_fraction:
            base = dataclasses.replace(base, validation_fraction=DEFAULT_VALIDATION_FRACTION)
        prepare.check(base)
        check_space(space, base)
        # The file is the protocol; an option that only shrinks the search (SEARCH_ONLY) stays out of it.
        given = {k: v for k, v in overrides.items() if k not in SEARCH_ONLY and v not in (None, "")}
        protocol = {**file_values, **given}
        plans.append(StudyPlan(base.mode, f"{study.strip()}-{base.mode}", base, protocol, space))
    return plans
