#!/bin/bash
# The comparisons of issue #23's study (run with the branch's code: compare-runs grouped by a sweep's parent).
set -eu
cd /work/wt/i23
export PYTHONPATH=/work/wt/i23 PATH=/work/main/.venv/bin:$PATH HF_HUB_OFFLINE=1
export MLFLOW_TRACKING_URI=sqlite:////work/studies/tune/mlflow.db
TB=97bd6aa9bd9a4cb195ab8f615fb2e774 TP=893213f9dd694ee0b89f0ccc90a17044   # tuned basic, tuned pool sweeps
UB=5787120407ae41389bad31dd1b5a3aa1 UP=a39192e086a14a3295d20b97f9abac8e   # untuned basic, untuned pool sweeps
out=/work/studies/tune/reports
cmp() {  # cmp NAME BASELINE OTHER
  python -m bertpooled compare-runs --run-id "$(python benchmarks/tuning.py "$2" "$3")" --group-by mlflow.parentRunId \
    --baseline "$2" --format markdown --output "$out/$1" > "$out/$1.md" 2> "$out/$1.log"
}
mkdir -p $out
cmp tuned_pool_vs_tuned_basic $TB $TP
cmp tuned_basic_vs_untuned_basic $UB $TB
cmp tuned_pool_vs_untuned_pool $UP $TP
cmp untuned_pool_vs_untuned_basic $UB $UP
