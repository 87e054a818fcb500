#!/usr/bin/env bash
# The fine-tuned pooling study on this CPU (issue 20): MiniLM fine-tuned with its LSTM(16) head, max_len 128,
# 4,000 training and 5,000 test reviews (label-balanced, data_seed 0), 1 epoch, bf16 autocast (precision=auto on a
# CPU with AVX512-BF16), seeds 0-2, four variants. One `bertpooled sweep` per (seed, variant), seed-major, so a study
# cut short still holds every variant for its first seeds; `--resume-parent` continues an interrupted sweep.
#
#   BERTPOOLED_IMDB=/path/to/aclImdb_v1.tar.gz STORE=/path/to/store benchmarks/pooled_lm_cpu/pooled_lm_cpu.sh [SEEDS...]
#
# Then the report: benchmarks/pooled_lm_cpu/pooled_lm_cpu.py (compare-runs grouped by variant + inference cost in turns).
STUDY=pooled_lm_cpu
# shellcheck source=benchmarks/common/study_env.sh
. "$(dirname "$0")/../common/study_env.sh"
COMMON=(--modes basic --epochs 1 --max-train-examples 4000 --max-test-examples 5000 --max-len 128
        --experiment pooled-lm-cpu --no-progress)
declare -A VARIANT=(
  [unpooled]="--config $ROOT/experiments/encoder_finetune.yaml"
  [layer2]="--config $ROOT/experiments/encoder_pool_layer2_finetune.yaml"
  [layer2_4]="--config $ROOT/experiments/encoder_pool_layer2_4_finetune.yaml"
  [output]="--config $ROOT/experiments/encoder_finetune.yaml --pool avg:2x1 --pool-at output"
)
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
for seed in "${seeds[@]}"; do
  for v in unpooled layer2 layer2_4 output; do
    echo "== $(date -u +%FT%TZ) seed $seed $v"
    # shellcheck disable=SC2086
    $BP sweep ${VARIANT[$v]} --seed-list "$seed" "${COMMON[@]}" --format markdown
  done
done
echo "== $(date -u +%FT%TZ) done"
