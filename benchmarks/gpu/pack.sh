#!/usr/bin/env bash
# Pack what the GPU machine lacks into $PAYLOAD (git-ignored; see README.md beside this file):
#   wheels/          MLflow's minimal set as py3.12 manylinux wheels (the machine has torch, transformers, pandas,
#                    scikit-learn and typer, but no MLflow and no network), versions pinned to this environment's
#   data/aclImdb.tar.xz  IMDB's train/ and test/ reviews only, re-compressed with xz (bertpooled reads .tar.xz)
#   minilm/          the default backbone's folder with its weights in float16 (half the bytes that travel;
#                    run_on_device.sh upcasts them to float32 before anything trains)
# Usage: benchmarks/gpu/pack.sh [wheels|data ARCHIVE|model FOLDER|all]   (run from the repository root)
#   all = wheels + data $BERTPOOLED_IMDB + model (the installed MiniLM)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PAYLOAD="${PAYLOAD:-$HERE/payload}"
PYTHON="${PYTHON:-python3}"
# PY_VERSION=3.11 packs wheels for a 3.11 rehearsal of the device here (README.md); the device runs 3.12.

# The set the device lacks: mlflow-skinny and its needs, SQLite store (sqlalchemy, alembic, Mako, cryptography, which
# sqlalchemy_store imports at import time), pooch (bertpooled.data.imdb imports it). What the machine already has
# (numpy, pandas, requests, protobuf, click, pyyaml, anyio, ...) stays out; KINDS.md lists it.
WHEELS="mlflow-skinny mlflow-tracing sqlalchemy alembic mako pydantic pydantic-core annotated-types annotated-doc
typing-inspection typing-extensions fastapi starlette uvicorn opentelemetry-api opentelemetry-proto opentelemetry-sdk
opentelemetry-semantic-conventions databricks-sdk google-auth pyasn1 pyasn1-modules cachetools gitpython gitdb smmap
cryptography cffi pycparser importlib-metadata sqlparse python-dotenv pooch platformdirs"

wheels() {
  mkdir -p "$PAYLOAD/wheels"
  local specs=()
  for name in $WHEELS; do
    # Pin to the version installed here, so the device runs the MLflow the tests ran against.
    version="$("$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")"
    specs+=("$name${version:+==$version}")
  done
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux1_x86_64 -d "$PAYLOAD/wheels" "${specs[@]}"
  du -sh "$PAYLOAD/wheels"
}

data() {
  local archive="${1:?pack.sh data needs the IMDB archive (aclImdb_v1.tar.gz)}"
  local tmp
  tmp="$(mktemp -d)"
  # train/ and test/ reviews only: the unlabelled 50,000 (train/unsup) and the URL lists are never read.
  tar -xf "$archive" -C "$tmp" --wildcards 'aclImdb/train/pos/*' 'aclImdb/train/neg/*' 'aclImdb/test/pos/*' 'aclImdb/test/neg/*'
  mkdir -p "$PAYLOAD/data"
  tar -C "$tmp" -cf - aclImdb | xz -9 -T1 > "$PAYLOAD/data/aclImdb.tar.xz.part"
  mv "$PAYLOAD/data/aclImdb.tar.xz.part" "$PAYLOAD/data/aclImdb.tar.xz"
  rm -rf "$tmp"
  du -sh "$PAYLOAD/data/aclImdb.tar.xz"
}

model() {
  local folder="${1:-}"
  if [ -z "$folder" ]; then
    folder="$("$PYTHON" -c "from bertpooled.model.backbone import resolve; print(resolve('minilm'))")"
  fi
  rm -rf "$PAYLOAD/minilm"
  mkdir -p "$PAYLOAD/minilm"
  "$PYTHON" - "$folder" "$PAYLOAD/minilm" <<'EOF'
import shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in src.iterdir():
    if f.is_file() and f.suffix != ".safetensors" and f.name != "pytorch_model.bin":
        shutil.copy2(f, dst / f.name)
weights = list(src.glob("*.safetensors"))
if not weights:
    sys.exit(f"{src} has no .safetensors weights: save the backbone with save_pretrained first")
for w in weights:
    state = load_file(str(w))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}, str(dst / w.name),
              metadata={"format": "pt"})
EOF
  du -sh "$PAYLOAD/minilm"
}

case "${1:-all}" in
  wheels) wheels ;;
  data) data "${2:-${BERTPOOLED_IMDB:-}}" ;;
  model) model "${2:-}" ;;
  all) wheels; data "${BERTPOOLED_IMDB:?set BERTPOOLED_IMDB to aclImdb_v1.tar.gz}"; model ;;
  *) echo "usage: $0 [wheels|data ARCHIVE|model FOLDER|all]" >&2; exit 2 ;;
esac
