#!/bin/bash
# Phase B of issue #23's study, seed-major so that wherever time runs out every arm has the same seeds:
# for each seed, the tuned and untuned basic runs side by side, then the tuned and untuned pool runs. Each arm
# is one sweep (one parent run), grown seed by seed with --resume-parent. Waits for the two tune studies
# (pids $1 $2) first. Replaces run2.sh's phase B (sequential sweeps of 5 seeds each).
set -u
# STORE: the study's folder (mlflow.db, best/, the code clone in STORE/code); the project's venv active.
: "${STORE:?set STORE to the folder of the study}" "${BERTPOOLED_IMDB:?set BERTPOOLED_IMDB to the IMDB archive}"
cd "$STORE"
export PYTHONPATH=$STORE/code HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI=sqlite:///$STORE/mlflow.db
for pid in "$@"; do while kill -0 "$pid" 2>/dev/null; do sleep 10; done; done
echo "phase A end $(date -u)"
declare -A parent
arm() {  # arm NAME CONFIG MODE SEEDS
  local name=$1 config=$2 mode=$3 seeds=$4 resume=()
  [ -n "${parent[$name]:-}" ] && resume=(--resume-parent "${parent[$name]}")
  python -m bertpooled sweep --config "$config" --modes "$mode" --seed-list "$seeds" "${resume[@]}" --no-progress \
    --format markdown > "sweep-$name.md" 2>> "sweep-$name.log"
}
seeds=""
for seed in 0 1 2 3 4; do
  seeds="${seeds:+$seeds,}$seed"
  for mode in basic pool; do
    arm tuned-$mode best/best-$mode.yaml $mode "$seeds" &
    arm untuned-$mode default $mode "$seeds" &
    wait
    for name in tuned-$mode untuned-$mode; do
      [ -n "${parent[$name]:-}" ] || parent[$name]=$(grep -o "^sweep [0-9a-f]\{32\}" "sweep-$name.log" | head -1 | cut -d' ' -f2)
    done
    echo "seed $seed $mode done $(date -u): tuned ${parent[tuned-$mode]:-?} untuned ${parent[untuned-$mode]:-?}"
  done
done
echo "phase B end $(date -u)"
