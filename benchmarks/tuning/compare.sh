#!/bin/bash
# The comparisons of issue #23's study (run with the branch's code: compare-runs grouped by a sweep's parent).
#   STORE=/path/to/tune benchmarks/tuning/compare.sh     # the study's folder (its mlflow.db); the project's venv active
set -eu
: "${STORE:?set STORE to the folder of the study (its mlflow.db; the reports go to STORE/reports)}"
here=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI=sqlite:///$STORE/mlflow.db
TB=97bd6aa9bd9a4cb195ab8f615fb2e774 TP=893213f9dd694ee0b89f0ccc90a17044   # tuned basic, tuned pool sweeps
UB=5787120407ae41389bad31dd1b5a3aa1 UP=a39192e086a14a3295d20b97f9abac8e   # untuned basic, untuned pool sweeps
out=$STORE/reports
cmp() {  # cmp NAME BASELINE OTHER
  python -m bertpooled compare-runs --run-id "$(python "$here/tuning.py" "$2" "$3")" --group-by mlflow.parentRunId \
    --baseline "$2" --format markdown --output "$out/$1" > "$out/$1.md" 2> "$out/$1.log"
}
mkdir -p "$out"
cmp tuned_pool_vs_tuned_basic $TB $TP
cmp tuned_basic_vs_untuned_basic $UB $TB
cmp tuned_pool_vs_untuned_pool $UP $TP
cmp untuned_pool_vs_untuned_basic $UB $UP
