#!/usr/bin/env bash
# Usage: compare_identity.sh <code folder> <out folder>: compare-runs on the stored studies, every output kept.
#   Run once with the code before a change and once after, then `diff -r before after` (see README.md here).
# Each call reads a copy of a study's store taken once into $SNAP (a running study's store keeps growing, so
# both code versions must read the same snapshot) and logs its comparison run into a fresh copy of that copy,
# with the comparison experiment's artifacts under the call's own folder: the studies are only read.
set -euo pipefail
code=$(cd "$1" && pwd); out=$2
here=$(cd "$(dirname "$0")" && pwd)
studies=${STUDIES:?set STUDIES to the folder that holds the stores of the studies (bf16_check/, tune/, pooled_lm_cpu/, house/)}
snap=${SNAP:-${TMPDIR:-/tmp}/compare_identity_stores}
PY=${PYTHON:-python}
export PYTHONPATH=$code HF_HUB_OFFLINE=1
mkdir -p "$snap" "$out"; out=$(cd "$out" && pwd)
# A fixed folder for the calls (not mktemp): error lines and `report files:` name paths under it, which must be
# the same for both code versions. So one run at a time.
work=${WORK:-${TMPDIR:-/tmp}/compare_identity_work}
rm -rf "$work"; mkdir -p "$work"

snapshot() {  # snapshot NAME DB: an online backup (safe while a study writes), taken once
  [ -f "$snap/$1.db" ] || [ ! -f "$2" ] || sqlite3 "$2" ".backup '$snap/$1.db'"  # a study not here: skipped below
}
snapshot bf16_check "$studies/bf16_check/mlflow.db"
snapshot tune "$studies/tune/mlflow.db"
snapshot pooled_lm_cpu "$studies/pooled_lm_cpu/mlflow.db"
snapshot house_before "$studies/house/before.db"
snapshot main "${MAIN_DB:-}"                   # the project's own store, when MAIN_DB names it

compare() {  # compare STORE NAME ARGS...: table, markdown (+ --output folder) and json
  local store=$1 name=$2; shift 2
  [ -f "$snap/$store.db" ] || { echo "no store $store, skipped" >&2; return; }
  local fmt dir
  for fmt in table markdown json; do
    dir=$work/$name-$fmt; mkdir -p "$dir"
    cp "$snap/$store.db" "$dir/mlflow.db"
    sqlite3 "$dir/mlflow.db" "update experiments set artifact_location = '$dir/artifacts/' || experiment_id"`
      `" where name in ('Default', 'bertpooled-comparisons')"
    local extra=()
    [ "$fmt" = markdown ] && extra=(--output "$work/files/$name")
    local rc=0
    (cd "$dir" && MLFLOW_TRACKING_URI=sqlite:///$dir/mlflow.db \
      $PY -m bertpooled compare-runs "$@" --format "$fmt" "${extra[@]}") > "$out/$name.$fmt" 2> "$out/$name.$fmt.err" \
      || rc=$?
    echo "exit $rc" >> "$out/$name.$fmt.err"
    if [ "$fmt" = markdown ] && [ -d "$work/files/$name" ]; then cp -r "$work/files/$name" "$out/$name-files"; fi
    # the one thing that differs from call to call: the id of the comparison run this call logged
    sed -i -E 's/^comparison run: [0-9a-f]{32}$/comparison run: <id>/' "$out/$name.$fmt.err"
    sed -i -E 's/^(  "comparison_run_id": )"[0-9a-f]{32}"/\1"<id>"/' "$out/$name.$fmt"
  done
}

compare bf16_check bf16_check --experiment bf16-check --group-by precision --baseline fp32
compare pooled_lm_cpu pooled_lm_cpu --experiment pooled-lm-cpu --group-by variant --baseline encoder-ft
compare house_before house_before                 # the default experiment, grouped by mode, baseline basic
compare main main_store                           # the project's own store (empty: the error line is the output)
# issue #23's four comparisons (benchmarks/tuning/compare.sh): a sweep's finished children, grouped by parent
TB=97bd6aa9bd9a4cb195ab8f615fb2e774 TP=893213f9dd694ee0b89f0ccc90a17044 UB=5787120407ae41389bad31dd1b5a3aa1
UP=a39192e086a14a3295d20b97f9abac8e
tune_cmp() {  # tune_cmp NAME BASELINE OTHER
  local ids
  [ -f "$snap/tune.db" ] || { echo "no store tune, skipped" >&2; return; }
  cp "$snap/tune.db" "$work/tune-ids.db"
  ids=$(MLFLOW_TRACKING_URI=sqlite:///$work/tune-ids.db $PY "$here/../tuning/tuning.py" "$2" "$3")
  compare tune "tune_$1" --run-id "$ids" --group-by mlflow.parentRunId --baseline "$2"
}
tune_cmp tuned_pool_vs_tuned_basic $TB $TP
tune_cmp tuned_basic_vs_untuned_basic $UB $TB
tune_cmp tuned_pool_vs_untuned_pool $UP $TP
tune_cmp untuned_pool_vs_untuned_basic $UB $UP
