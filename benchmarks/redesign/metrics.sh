#!/usr/bin/env bash
# Usage: metrics.sh <code folder> <tag>: smoke + 3,000-review real IMDB runs of each mode, metrics to JSON.
set -euo pipefail
code=$1; tag=$2
out=${OUT:-$PWD}; mkdir -p "$out"
export PYTHONPATH=$code MLFLOW_TRACKING_URI=sqlite:///$out/$tag.db HF_HUB_OFFLINE=1
: "${BERTPOOLED_IMDB:?set BERTPOOLED_IMDB to the real aclImdb_v1.tar.gz}"
cd "$out"
PY=${PYTHON:-python}
$PY -c "import bertpooled,sys; print(bertpooled.__file__, file=sys.stderr)"
for mode in basic pool; do
  $PY -m bertpooled train --config $code/experiments/smoke.yaml --mode $mode --no-progress
  $PY -m bertpooled train --mode $mode --max-train-examples 3000 --max-test-examples 3000 --no-progress
done
$PY - <<PY
import json, mlflow
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
out = {}
for r in runs:
    p = r.data.params
    key = f"{p.get('config/mode')}-train{p.get('config/max_train_examples')}"
    out[key] = {k: v for k, v in sorted(r.data.metrics.items()) if k.startswith(("test/", "train/", "params/", "flops", "data/")) or k.startswith("epoch")}
json.dump(out, open("$out/$tag.json", "w"), indent=1, sort_keys=True)
print(json.dumps({k: {m: v for m, v in d.items() if m.startswith("test/")} for k, d in out.items()}, indent=1))
PY
