#!/usr/bin/env bash
# The GPU study through the entry points a user types (`mlflow run .`, `bertpooled sweep`, `compare-runs`), on a
# machine with torch and no MLflow, no data, no network: see README.md beside this file.
#
# Usage (from the repository root): OUT=/some/folder benchmarks/gpu/run_on_device.sh STAGE...
#   setup      install the packed wheels into $WORK/site, copy the data, upcast the fp16 backbone (each part only
#              when its payload travelled with this call; idempotent, so every call can start with it)
#   check      one smoke-sized `bertpooled train` on the device: fails in seconds if the packed MLflow is incomplete
#   originals  `mlflow run . --env-manager local -P device=cuda` for mode=basic and mode=pool (default protocol)
#   study      `bertpooled sweep`, fine-tuned, once per pooling group (STUDY_GROUPS), $SEEDS seeds, $EPOCHS epochs
#   seeds      issue 13 on the GPU: `bertpooled sweep --group-seeds`, both original modes x $SEED_GROUP seeds (10),
#              the default protocol; writes $OUT/seeds.md (each group's training time, a seed's share of a step)
#   report     `bertpooled compare-runs` for both experiments
# Every step runs under `timeout`; every stage is skipped once done (markers in $WORK/done), and an interrupted
# sweep resumes under its own parent run. Whatever happens, the call ends by writing under $OUT: device.log
# (this call's steps and their output), mlflow.db.xz (the SQLite store), artifacts.tar.xz (every run's artifacts
# but model weights and checkpoints), and the reports once they exist.
#
# SMOKE=1 rehearses the same steps on CPU with experiments/smoke.yaml, 1 seed and 1 epoch (MODEL and DATA point at
# a tiny BERT and a tiny IMDB archive); tests/test_gpu_script.py runs it.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PAYLOAD="${PAYLOAD:-$REPO/benchmarks/gpu/payload}"
WORK="${WORK:-${TMPDIR:-/tmp}/bertpooled-gpu}"
OUT="${OUT:?set OUT to the folder whose files come back}"
SMOKE="${SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then
  DEVICE="${DEVICE:-cpu}" SEEDS="${SEEDS:-1}" EPOCHS="${EPOCHS:-1}" CONFIG="${CONFIG:-experiments/smoke.yaml}"
  SEED_GROUP="${SEED_GROUP:-2}"
else
  DEVICE="${DEVICE:-cuda}" SEEDS="${SEEDS:-3}" EPOCHS="${EPOCHS:-3}" CONFIG="${CONFIG:-experiments/default.yaml}"
  SEED_GROUP="${SEED_GROUP:-10}"
fi
MODEL="${MODEL:-$WORK/minilm}"
DATA="${DATA:-$WORK/aclImdb.tar.xz}"
STEP_TIMEOUT="${STEP_TIMEOUT:-540}"
# name|options of `bertpooled sweep`: the unpooled fine-tuned baseline, one 2x1 stage at layers 1-3, two stages,
# and pooling at the output (after all six layers) as the control.
STUDY_GROUPS="${STUDY_GROUPS:-unpooled|--pool none
layer1|--pool avg:2x1 --pool-at layer:1
layer2|--pool avg:2x1 --pool-at layer:2
layer3|--pool avg:2x1 --pool-at layer:3
layer2+4|--pool avg:2x1 --pool-at layer:2,layer:4
output|--pool avg:2x1 --pool-at output}"

mkdir -p "$OUT" "$WORK/bin" "$WORK/site" "$WORK/done" "$WORK/logs"
LOG="$OUT/device.log"
STATUS=0

# Nothing may reach for the network: the machine has none, and a hub lookup would hang until its timeout.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export PATH="$WORK/bin:$WORK/site/bin:$PATH"
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" BERTPOOLED_CACHE="$WORK/cache"
unset MLFLOW_EXPERIMENT_ID MLFLOW_EXPERIMENT_NAME MLFLOW_RUN_ID

say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

# step NAME CMD...: one time-limited step; its output goes to device.log (which comes back) as it is written.
step() {
  local name=$1; shift
  say "$name: $*"
  timeout --signal=TERM --kill-after=30 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$WORK/logs/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: exit $rc"
  [ "$rc" = 0 ] || STATUS=1
  return "$rc"
}

setup() {
  if compgen -G "$PAYLOAD/wheels/*.whl" >/dev/null; then
    step setup-wheels python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$PAYLOAD"/wheels/*.whl
  fi
  # MLproject runs `python -m bertpooled`; the machine's interpreter is `python3`.
  command -v python >/dev/null || ln -sf "$(command -v python3)" "$WORK/bin/python"
  if [ -f "$PAYLOAD/data/aclImdb.tar.xz" ]; then cp "$PAYLOAD/data/aclImdb.tar.xz" "$WORK/aclImdb.tar.xz"; fi
  if [ -d "$PAYLOAD/minilm" ]; then
    # The weights travelled in float16 to fit a call; training starts from float32 (the same values, upcast).
    step setup-model python3 - "$PAYLOAD/minilm" "$WORK/minilm" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix == ".safetensors":
        state = load_file(str(f))
        save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, str(dst / f.name), metadata={"format": "pt"})
    elif f.is_file():
        shutil.copy2(f, dst / f.name)
print(f"backbone in float32 at {dst}")
EOF
  fi
  step setup-experiments python3 - "$WORK" <<'EOF'
import sys
import mlflow
work = sys.argv[1]
# bertpooled-comparisons too: the sweeps' and compare-runs' comparison runs would otherwise make it with its
# artifacts in ./mlruns of the repository copy, where the steps run.
for name in ("gpu-original", "gpu-study", "gpu-check", "gpu-seeds", "bertpooled-comparisons"):
    if mlflow.get_experiment_by_name(name) is None:
        # Artifacts under $WORK too, not in the repository copy: collect() packs them from there.
        mlflow.create_experiment(name, artifact_location=f"{work}/artifacts/{name}")
print("mlflow", mlflow.__version__, "store", mlflow.get_tracking_uri())
EOF
  if command -v nvidia-smi >/dev/null; then nvidia-smi >>"$LOG" 2>&1; fi
}

check() {
  [ -f "$WORK/done/check" ] && { say "check: done earlier"; return 0; }
  step check env MLFLOW_EXPERIMENT_NAME=gpu-check python -m bertpooled train --config experiments/smoke.yaml --device "$DEVICE" --model "$MODEL" \
    --data "$DATA" --epochs 1 --features encoder --finetune --pool avg:2x1 --pool-at layer:2 --no-progress \
    --set latency_texts=4 --set throughput_batches=1 --set description="device check" \
    && touch "$WORK/done/check"
}

originals() {
  for mode in basic pool; do
    [ -f "$WORK/done/original-$mode" ] && { say "original-$mode: done earlier"; continue; }
    step "original-$mode" mlflow run "$REPO" --env-manager local --experiment-name gpu-original \
      -P config="$CONFIG" -P mode="$mode" -P device="$DEVICE" -P model="$MODEL" -P data="$DATA" \
      && touch "$WORK/done/original-$mode"
  done
}

study() {
  local only="${1:-}"
  while IFS='|' read -r name options; do
    [ -n "$name" ] || continue
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
    [ -f "$WORK/done/study-$name" ] && { say "study-$name: done earlier"; continue; }
    local parent=""
    [ -f "$WORK/parent-$name" ] && parent="$(cat "$WORK/parent-$name")"
    # shellcheck disable=SC2086  # options are words on purpose
    step "study-$name" python -m bertpooled sweep --experiment gpu-study --modes basic --seeds "$SEEDS" \
      --config "$CONFIG" --features encoder --finetune --epochs "$EPOCHS" --device "$DEVICE" --model "$MODEL" \
      --data "$DATA" --format markdown --no-progress $options ${parent:+--resume-parent "$parent"}
    local rc=$?
    # The sweep prints its parent's id first; a timed-out sweep resumes under it (only missing children run).
    grep -om1 '^sweep [0-9a-f]\{32\}' "$WORK/logs/study-$name.log" | cut -d' ' -f2 > "$WORK/parent-$name.new" \
      && [ -s "$WORK/parent-$name.new" ] && mv "$WORK/parent-$name.new" "$WORK/parent-$name"
    [ "$rc" = 0 ] && touch "$WORK/done/study-$name"
  done <<<"$STUDY_GROUPS"
}

seeds() {
  [ -f "$WORK/done/seeds" ] && { say "seeds: done earlier"; return 0; }
  # The original protocol as `mlflow run` trains it (no fine-tuning, the config's epochs), every seed of a mode in one loop.
  step seeds python -m bertpooled sweep --experiment gpu-seeds --modes basic,pool --seeds "$SEED_GROUP" --group-seeds \
    --config "$CONFIG" --device "$DEVICE" --model "$MODEL" --data "$DATA" --format markdown --no-progress \
    && step seeds-summary python3 "$REPO/benchmarks/gpu/seeds_summary.py" gpu-seeds "$OUT/seeds.md" \
    && touch "$WORK/done/seeds"
}

report() {
  step report-study python -m bertpooled compare-runs --experiment gpu-study --group-by variant \
    --baseline encoder-ft --format markdown --output "$WORK/report-study" \
    && cp "$WORK/report-study/report.md" "$OUT/report-study.md"
  step report-original python -m bertpooled compare-runs --experiment gpu-original --group-by mode \
    --baseline basic --format markdown --output "$WORK/report-original" \
    && cp "$WORK/report-original/report.md" "$OUT/report-original.md"
}

# What comes back: the store (a consistent copy, compressed) and every artifact but weights and checkpoints.
collect() {
  if [ -f "$WORK/mlflow.db" ]; then
    python3 -c "import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close()" \
      "$WORK/mlflow.db" "$WORK/mlflow-copy.db" && xz -T0 -6 -c "$WORK/mlflow-copy.db" > "$OUT/mlflow.db.xz"
    rm -f "$WORK/mlflow-copy.db"
  fi
  if [ -d "$WORK/artifacts" ]; then
    tar -C "$WORK" --exclude='*.safetensors' --exclude='checkpoint' --exclude='*/checkpoint/*' -cf - artifacts \
      | xz -T0 -6 > "$OUT/artifacts.tar.xz"
  fi
  ls -la "$OUT" >>"$LOG"
}

[ $# -gt 0 ] || { echo "usage: OUT=... $0 setup|check|originals|study[:GROUP,...]|seeds|report ..." >&2; exit 2; }
say "run_on_device: $* (device=$DEVICE seeds=$SEEDS epochs=$EPOCHS config=$CONFIG smoke=$SMOKE)"
for stage in "$@"; do
  case "$stage" in
    setup) setup ;;
    check) check ;;
    originals) originals ;;
    study) study ;;
    study:*) study "${stage#study:}" ;;
    seeds) seeds ;;
    report) report ;;
    *) say "unknown stage $stage"; STATUS=2 ;;
  esac
done
collect
say "run_on_device: end, status $STATUS"
exit "$STATUS"
