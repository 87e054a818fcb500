"""Logged models and checkpoints: models-from-code pyfuncs (code + safetensors + JSON, never a pickle), the
PENDING models an interrupted run left, and the run's checkpoint slots."""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from bertpooled.contract import (
    CHECKPOINT_EPOCH_TAG,
    CHECKPOINT_PATH_TAG,
    CHECKPOINT_SHA256_TAG,
    CHECKPOINT_SLOTS,
    CONFIG_PARAM_PREFIX,
    DATA_DIGEST_PARAM,
    FINISHED,
    INPUT_EXAMPLE,
    KIND_TAG,
    KIND_TRAIN,
    MODEL_NAME,
    PREDICT,
    PREDICT_METHOD,
    PROBA_METADATA_KEY,
)
from bertpooled.errors import BertpooledError
from bertpooled.tracking import ownership
from bertpooled.tracking.provenance import code_of
from bertpooled.tracking.runs import get_run_or_error

SERVING_CODE = Path(__file__).resolve().parents[1] / "serving" / "lstm.py"


def fail_unfinished_models(run_id: str) -> list[str]:
    """Mark FAILED the logged models of `run_id` still PENDING (a process killed while logging its model left
    them); a resumed run then logs its model anew. Returns their ids."""
    from mlflow.entities import LoggedModelStatus

    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    pending = [
        m.model_id
        for m in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        if m.status == LoggedModelStatus.PENDING
    ]
    for model_id in pending:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    return pending


def log_model(state: dict, model_config: dict, tokenizer) -> str:
    """Log the classifier as a models-from-code pyfunc: code + safetensors weights + tokenizer files, no pickle.

    Returns the model URI.
    """
    from safetensors.torch import save_file

    import bertpooled

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        config_path = Path(tmp) / "model_config.json"
        config_path.write_text(json.dumps(model_config, indent=2))
        tokenizer_dir = Path(tmp) / "tokenizer"
        tokenizer.save_pretrained(str(tokenizer_dir))
        return log_pyfunc(
            SERVING_CODE,
            {"weights": str(weights), "model_config": str(config_path), "tokenizer": str(tokenizer_dir)},
            pinned_requirements("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "mlflow"),
            code_paths=[str(Path(bertpooled.__file__).parent)],
        )


def log_pyfunc(
    code: Path, artifacts: dict[str, str], requirements: list[str], code_paths: list[str] | None = None
) -> str:
    """Log a models-from-code pyfunc (no pickle: MLflow runs `code` on load) following MLflow's classifier
    convention (serving/classifier.py): texts in, labels out, `predict_method` param; its URI."""
    ownership.hold_active()
    with _routine_info_hidden("mlflow.pyfunc", "mlflow.models.signature"):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(code),
            artifacts=artifacts,
            code_paths=code_paths,
            # The signature is given, not inferred: MLflow then does not run the model on the example at
            # logging time, and payloads are not restricted to `inputs` as a `list[str]` type hint did.
            signature=classifier_signature(),
            input_example=INPUT_EXAMPLE,
            pip_requirements=requirements,
            metadata={PROBA_METADATA_KEY: True},
        )
    return info.model_uri


def classifier_signature():
    """The logged models' signature (serving/classifier.py's convention): labels out and the `predict_method`
    param; no input schema, so MLflow hands `predict` the texts as given (a list, a Series, an array or a frame
    whose first column holds them, named anything) and an empty batch gets an empty answer."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # No input schema on purpose: the one-column schema this had must be unnamed to accept any column name,
        # and MLflow requires an unnamed column (no optional ones), so `predict([])`, an empty frame and
        # `{"inputs": []}` were refused as a missing input; a named optional column drops every other name.
        inputs=None,
        outputs=Schema([ColSpec("long")]),
        params=ParamSchema([ParamSpec(PREDICT_METHOD, "string", PREDICT)]),
    )


@contextmanager
def _routine_info_hidden(*loggers: str):
    """Raise MLflow's named loggers to WARNING for one call: their INFO lines ("Validating input example
    against model signature") narrate routine steps after every run; warnings and errors still show."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for log, _ in saved:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def pinned_requirements(*dists: str) -> list[str]:
    """`dist==version` as installed here; a local build tag such as torch's "+cpu" is no version pip finds elsewhere.

    Where `mlflow` is installed as mlflow-skinny alone (the GPU machine's bundle, benchmarks/gpu/), that is
    what the model needs and what it pins.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in dists:
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            if dist != "mlflow":
                raise
            pins.append(f"mlflow-skinny=={version('mlflow-skinny').split('+')[0]}")
    return pins


def log_checkpoint(folder: Path, epoch: int, sha256: str) -> None:
    """Write the checkpoint into the slot the run's tags do not point at, then point them at it.

    Epochs alternate between two artifact folders, and the tags (slot, epoch, sha256) change in one batch
    only after the files are complete: a process killed mid-write leaves the previous checkpoint valid.
    """
    active = mlflow.active_run()
    assert active is not None, "a checkpoint is saved inside its run"
    ownership.hold(active.info.run_id)
    current = MlflowClient().get_run(active.info.run_id).data.tags.get(CHECKPOINT_PATH_TAG)
    slot = CHECKPOINT_SLOTS[1] if current == CHECKPOINT_SLOTS[0] else CHECKPOINT_SLOTS[0]
    mlflow.log_artifacts(str(folder), artifact_path=slot)
    # Checked again next to the pointer's write: copying the files takes seconds, a window a takeover can land in.
    ownership.hold(active.info.run_id)
    mlflow.set_tags({CHECKPOINT_PATH_TAG: slot, CHECKPOINT_EPOCH_TAG: str(epoch), CHECKPOINT_SHA256_TAG: sha256})


@dataclass(frozen=True)
class ResumeRecord:
    """What a resume reads of the run it continues, in one read of the store."""

    config: dict[str, str]
    """The run's config params (without the `config/` prefix)."""
    data_digest: str
    tags: dict[str, str]
    checkpoint: Path
    """The local copy of the run's last checkpoint folder."""
    code: dict[str, str]
    """The code provenance it logged (`provenance.code_of`)."""


def run_to_resume(run_id: str, dest: Path) -> ResumeRecord:
    """The record of a run to resume, its checkpoint downloaded under `dest`; one-line errors otherwise."""
    client = MlflowClient()
    run = get_run_or_error(run_id, "no run {run_id} in {store}: check the id, or MLFLOW_TRACKING_URI")
    if run.info.status == FINISHED:
        raise BertpooledError(f"run {run_id} already FINISHED: nothing to resume")
    if run.data.tags.get(KIND_TAG) != KIND_TRAIN or CHECKPOINT_EPOCH_TAG not in run.data.tags:
        raise BertpooledError(f"run {run_id} has no checkpoint (it finished no epoch): start a new run instead")
    slot = run.data.tags.get(CHECKPOINT_PATH_TAG, "")
    if slot not in CHECKPOINT_SLOTS:
        raise BertpooledError(f"run {run_id} names no valid checkpoint folder ({slot!r}): start a new run instead")
    local = client.download_artifacts(run_id, slot, str(dest))
    params = run.data.params
    config = {k[len(CONFIG_PARAM_PREFIX) :]: v for k, v in params.items() if k.startswith(CONFIG_PARAM_PREFIX)}
    return ResumeRecord(config, params.get(DATA_DIGEST_PARAM, ""), dict(run.data.tags), Path(local), code_of(params))


@dataclass(frozen=True)
class SourceModel:
    """A tracked model another run builds on (`init_from`) or learns from (`distill_from`): where it came from,
    the digest of its weights, its spec (`model_config.json`) and, once loaded, its weights."""

    uri: str
    """The model URI as resolved (`runs:/<id>/model` for a bare run id)."""
    run_id: str
    """The run that logged it."""
    sha256: str
    """sha256 of its safetensors weights file: the chain's fingerprint and the teacher cache's key."""
    spec: dict
    """Its `model_config.json`."""
    weights: Path
    """The downloaded safetensors file."""
    tensors: dict | None = None
    """Its weights once read (`loaded`), for a run that outlives the download folder."""

    def state(self) -> dict:
        """Its weights, read without unpickling."""
        from safetensors.torch import load_file

        return self.tensors if self.tensors is not None else load_file(str(self.weights))

    def loaded(self) -> SourceModel:
        """This source with its weights read into memory."""
        import dataclasses

        return dataclasses.replace(self, tensors=self.state())

    def params(self, role: str) -> dict[str, str]:
        """What a run logs of it under `role/` (`init`, `teacher`): URI, run id and weights digest."""
        return {f"{role}/uri": self.uri, f"{role}/run_id": self.run_id, f"{role}/weights_sha256": self.sha256}


def model_uri_of(ref: str) -> str:
    """A run id as its logged model's URI (`runs:/<id>/model`); a `runs:/` or `models:/` URI as given."""
    ref = ref.strip()
    return f"runs:/{ref}/{MODEL_NAME}" if "/" not in ref else ref


def fetch_model(ref: str, dest: Path, option: str) -> SourceModel:
    """A tracked bertpooled model, downloaded under `dest`: a run id, `runs:/<id>/model`, `models:/<name>@<alias>`
    or `models:/<name>/<version>`. One-line errors naming `option` when it does not exist or is no model of
    this project."""
    import hashlib

    from mlflow.exceptions import MlflowException

    uri = model_uri_of(ref)
    try:
        run_id = _source_run_id(uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BertpooledError(
            f"{option}={ref}: no model found there ({first[:160]}): pass the run id of a finished training run, "
            "runs:/<run id>/model or models:/<name>@<alias> in this tracking store"
        ) from None
    weights, spec_file = next(local.rglob("weights.safetensors"), None), next(local.rglob("model_config.json"), None)
    if weights is None or spec_file is None:
        raise BertpooledError(
            f"{option}={ref}: {uri} is not a model logged by bertpooled (no weights.safetensors and "
            "model_config.json): pass a bertpooled training run's model"
        )
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BertpooledError(
            f"{option}={ref}: its model_config.json cannot be read ({exc}): log the model again"
        ) from None
    if not isinstance(spec, dict):
        raise BertpooledError(f"{option}={ref}: its model_config.json is not a mapping: log the model again")
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return SourceModel(uri, run_id, digest.hexdigest(), spec, weights)


def _source_run_id(uri: str) -> str:
    """The run that logged the model at `uri` (a registered version knows its run)."""
    client = MlflowClient()
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/", 1)[0]
        client.get_run(run_id)  # raises when there is no such run
        return run_id
    target = uri[len("models:/") :]
    if "@" in target:
        name, _, alias = target.partition("@")
        return client.get_model_version_by_alias(name, alias).run_id or ""
    name, _, version = target.partition("/")
    return client.get_model_version(name, version).run_id or ""
