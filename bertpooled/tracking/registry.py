"""A run's logged model in MLflow's model registry: registered under a name as a new version, an alias set on it,
loaded as `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) by `mlflow.pyfunc.load_model` and `bertpooled serve`.

The name and alias are checked here before a run starts, by the rules MLflow's registry applies (a name without
`/` or `:`; an alias of letters, digits, `_` and `-`, not `latest` nor `v<digits>`, which name versions), so a
bad one is a one-line error and not a trained run that fails to register at its end.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bertpooled.contract import FINISHED
from bertpooled.errors import BertpooledError, redact_uri

# MLflow's limits (mlflow/utils/validation.py, and the registry tables' name column).
MAX_NAME_CHARS = 256
MAX_ALIAS_CHARS = 255
ALIAS_CHARS = re.compile(r"^[\w\-]+$")
VERSION_ALIAS = re.compile(r"^[vV]\d+$")
EXAMPLE = "bertpooled-pool@champion"


@dataclass(frozen=True)
class Target:
    """Where a model is registered: the registered model's name and, optionally, an alias for the new version."""

    name: str
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else self.name


@dataclass(frozen=True)
class Registered:
    """A registered version: its name, number, alias and the URI that loads it."""

    name: str
    version: str
    alias: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_target(text: str, option: str = "--register") -> Target:
    """`NAME` or `NAME@ALIAS`, checked as MLflow's registry would; a one-line error naming the fix otherwise."""
    name, at, alias = text.strip().partition("@")
    name = name.strip()
    hint = f"pass {option} NAME or NAME@ALIAS, e.g. {option} {EXAMPLE}"
    if not name:
        raise BertpooledError(f"{option} {text!r} has no model name: {hint}")
    normal = posixpath.normpath(name)
    if any(c in name for c in "/:") or normal != name or normal in (".", "..") or len(name) > MAX_NAME_CHARS:
        raise BertpooledError(
            f"{option} {text!r}: a registered model's name has no '/' or ':' and at most {MAX_NAME_CHARS} "
            f"characters: {hint}"
        )
    if not at:
        return Target(name)
    alias = alias.strip()
    if not ALIAS_CHARS.match(alias) or len(alias) > MAX_ALIAS_CHARS:
        raise BertpooledError(
            f"{option} {text!r}: an alias is letters, digits, '_' and '-' (at most {MAX_ALIAS_CHARS}): {hint}"
        )
    if alias.lower() == "latest" or VERSION_ALIAS.match(alias):
        raise BertpooledError(
            f"{option} {text!r}: MLflow reserves the alias {alias!r} (it names versions): choose another, e.g. champion"
        )
    return Target(name, alias)


def register(model_uri: str, target: Target, run_id: str) -> Registered:
    """Register `model_uri` (a run's logged model) as a new version of `target.name`, then point the alias at it."""
    try:
        version = mlflow.register_model(model_uri, target.name, tags={"bertpooled.run_id": run_id})
        if target.alias:
            MlflowClient().set_registered_model_alias(target.name, target.alias, version.version)
    except MlflowException as exc:
        first = (str(exc.message).splitlines() or [""])[0]
        raise BertpooledError(f"registering run {run_id}'s model as {target} failed: {first}") from None
    return Registered(target.name, str(version.version), target.alias)


def register_run(run_id: str, target: Target) -> Registered:
    """Register the model a finished run logged (`runs:/<run id>/model`); a one-line error for a run that is
    missing, unfinished or has no model."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise BertpooledError(
            f"no run {run_id} in {redact_uri(client.tracking_uri)}: pass a run id compare-runs or the UI shows (set "
            "MLFLOW_TRACKING_URI to the store it is in)"
        ) from None
    if run.info.status != FINISHED:
        raise BertpooledError(f"run {run_id} is {run.info.status}, not {FINISHED}: register a finished run's model")
    models = list(run.outputs.model_outputs or []) if run.outputs else []
    if not models:
        raise BertpooledError(
            f"run {run_id} ({run.info.run_name}) logged no model (a tuning trial or a comparison?): register a "
            "training run's, or train the tuned config with --register"
        )
    # The logged model's own URI: `runs:/<id>/model` finds no artifacts there in MLflow 3 and says so in a warning.
    return register(f"models:/{models[-1].model_id}", target, run_id)
