"""Adapted backbones as MLflow models (`bertpooled adapt`): logged, registered, and fetched back as a run's `model:`.

An adapted backbone is logged as a models-from-code pyfunc named `backbone` (serving/backbone.py: texts in,
embeddings out) whose artifacts are the backbone saved with `save_pretrained` (config, safetensors weights,
tokenizer) and `adaptation.json` (the pooling it was adapted to, where from, on what). A later run names it as
`model:` (`runs:/<run id>/backbone`, `models:/<name>@<alias>` or `models:/<name>/<version>`); `fetch_backbone`
downloads it once into the cache, keyed by the weights' sha256, and the run reads that folder like any other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from bertpooled import data
from bertpooled.errors import BertpooledError
from bertpooled.tracking.models import pinned_requirements

BACKBONE_NAME = "backbone"
ADAPTATION_FILE = "adaptation.json"
SERVING_CODE = Path(__file__).resolve().parents[1] / "serving" / "backbone.py"
URI_PREFIXES = ("runs:/", "models:/")


def is_model_uri(name: str) -> bool:
    """Whether a `model:` value names a tracked model rather than a backbone name or folder."""
    return name.strip().startswith(URI_PREFIXES)


def embedding_signature():
    """Texts in (no input schema: any payload shape, as the classifier's), one embedding (a list of floats) out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def log_backbone(model, tokenizer, adaptation: dict) -> str:
    """Log the adapted backbone (a transformers model with `save_pretrained`) and what it was adapted to, in the
    active run; its model URI."""
    import bertpooled

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / BACKBONE_NAME
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        about = Path(tmp) / ADAPTATION_FILE
        about.write_text(json.dumps(adaptation, indent=2), encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=BACKBONE_NAME,
            python_model=str(SERVING_CODE),
            artifacts={"backbone": str(folder), "adaptation": str(about)},
            code_paths=[str(Path(bertpooled.__file__).parent)],
            signature=embedding_signature(),
            input_example=["a great film"],
            pip_requirements=pinned_requirements(
                "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "mlflow"
            ),
        )
    return info.model_uri


@dataclass(frozen=True)
class FetchedBackbone:
    """An adapted backbone fetched from the store: its local folder (save_pretrained), what it was adapted to."""

    folder: Path
    adaptation: dict
    sha256: str


def fetch_backbone(uri: str) -> FetchedBackbone:
    """The adapted backbone `uri` names, downloaded once into `<cache>/backbones/<sha256 of its weights>/`; one line
    naming `model=` when it is not there or not an adapted backbone."""
    from mlflow.exceptions import MlflowException

    root = data.cache_dir() / "backbones"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri.strip(), dst_path=tmp))
        except (MlflowException, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BertpooledError(
                f"config: model={uri}: no model found there ({first[:160]}): pass runs:/<run id>/backbone or "
                "models:/<name>@<alias> of a `bertpooled adapt` run in this tracking store"
            ) from None
        about = next(local.rglob(ADAPTATION_FILE), None)
        weights = next(local.rglob("model.safetensors"), None)
        if about is None or weights is None:
            raise BertpooledError(
                f"config: model={uri} is not an adapted backbone (no {ADAPTATION_FILE} and model.safetensors): pass "
                "the `backbone` model of a `bertpooled adapt` run, or a backbone name or folder"
            )
        try:
            adaptation = json.loads(about.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BertpooledError(f"config: model={uri}: its {ADAPTATION_FILE} cannot be read ({exc})") from None
        digest = hashlib.sha256()
        with weights.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
        final = root / sha[:32]
        if not (final / "config.json").is_file():
            shutil.rmtree(final, ignore_errors=True)
            try:
                weights.parent.rename(final)  # same file system: atomic, and a racing run renames its own copy
            except OSError:
                if not (final / "config.json").is_file():
                    raise
    if not isinstance(adaptation, dict) or not {"pool", "pool_at", "adapted_from"} <= set(adaptation):
        raise BertpooledError(f"config: model={uri}: its {ADAPTATION_FILE} lacks pool, pool_at or adapted_from")
    return FetchedBackbone(final, adaptation, sha)


__all__ = ["BACKBONE_NAME", "FetchedBackbone", "fetch_backbone", "is_model_uri", "log_backbone"]
