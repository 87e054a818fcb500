#!/usr/bin/env bash
# Rehearse run_on_device.sh here in an interpreter shaped like the GPU machine's: a fresh venv that sees only
# what that machine has (torch, transformers, pandas, scikit-learn, scipy, typer, matplotlib, pyyaml, tqdm and
# what they import, linked from this project's venv) and no MLflow and no pooch, which come from the packed
# wheels as on the device (built for this interpreter's Python, 3.11, since the device's is 3.12).
# SMOKE=1 settings: device=cpu, a tiny payload (pass TINY=folder holding data/ and minilm/ from pack.sh, e.g.
# the payload tests/test_gpu_script.py leaves under its tmp folder), 1 seed, 1 epoch.
# Usage: TINY=/path/to/tiny-payload benchmarks/gpu/simulate_device.sh [STAGE...]   (from the repository root)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SIM="${SIM:-${TMPDIR:-/tmp}/bertpooled-devsim}"
VENV_PYTHON="${VENV_PYTHON:-python3}"   # this project's venv, whose packages get linked
TINY="${TINY:?set TINY to a folder with data/aclImdb.tar.xz and minilm/ (pack.sh data / model on tiny inputs)}"

rm -rf "$SIM" && mkdir -p "$SIM/site" "$SIM/payload"
# A bare interpreter (no system or venv site-packages), then a .pth that adds the linked "device" packages.
base="$("$VENV_PYTHON" -c 'import sys; print(sys._base_executable)')"
"$base" -m venv "$SIM/venv"
"$VENV_PYTHON" - "$SIM/site" <<'EOF'
import importlib.metadata as md, os, re, sys
from pathlib import Path

site = Path(sys.argv[1])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
# What the GPU machine has (KINDS.md), as roots; their own dependencies come along, as they do there.
roots = ["torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "pandas", "scipy",
         "scikit-learn", "matplotlib", "typer", "pyyaml", "tqdm", "requests", "protobuf", "click", "cloudpickle",
         "packaging", "anyio", "jinja2", "pytest"]
absent = {"mlflow", "mlflow-skinny", "mlflow-tracing", "pooch", "sqlalchemy", "alembic", "flask", "gunicorn"}
seen, todo = set(), list(roots)
while todo:
    name = norm(todo.pop())
    if name in seen or name in absent:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen.add(name)
    todo += [re.split(r"[ ;<>=!~\[(]", r)[0] for r in dist.requires or [] if "extra ==" not in r]
    for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__", "bin")}:
        src = Path(dist.locate_file(top))
        if src.exists() and not (site / top).exists():
            os.symlink(src, site / top)
print(f"linked {len(seen)} distributions; absent: {', '.join(sorted(absent))}")
EOF
echo "$SIM/site" > "$("$SIM/venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/device.pth"
if "$SIM/venv/bin/python3" -c "import mlflow" 2>/dev/null; then echo "mlflow is importable before the wheels: not a fair rehearsal" >&2; exit 1; fi

cp -r "$TINY/data" "$TINY/minilm" "$SIM/payload/"
PAYLOAD="$SIM/payload" PY_VERSION="$("$SIM/venv/bin/python3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
  PYTHON="$VENV_PYTHON" bash "$HERE/pack.sh" wheels
[ $# -gt 0 ] || set -- setup check originals study:unpooled,layer2+4 report
env -u PYTHONPATH -u MLFLOW_TRACKING_URI PATH="$SIM/venv/bin:/usr/bin:/bin" PAYLOAD="$SIM/payload" WORK="$SIM/work" \
  OUT="$SIM/out" SMOKE=1 bash "$HERE/run_on_device.sh" "$@"
