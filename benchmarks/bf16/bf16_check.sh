#!/usr/bin/env bash
# Does bf16 move the answer? (issue 20, item 3) The same small fine-tuned configuration (MiniLM + LSTM(16), no pooling,
# 512 training / 1,000 test reviews, max_len 128, 1 epoch) in fp32 and in bf16, seeds 0-2, then compare-runs paired
# on the same test reviews, bf16 against fp32.
#
#   BERTPOOLED_IMDB=/path/to/aclImdb_v1.tar.gz STORE=/path/to/store benchmarks/bf16/bf16_check.sh
STUDY=bf16_check
# shellcheck source=benchmarks/common/study_env.sh
. "$(dirname "$0")/../common/study_env.sh"
for precision in bf16 fp32; do
  echo "== $(date -u +%FT%TZ) $precision"
  $BP sweep --config "$ROOT/experiments/encoder_finetune.yaml" --modes basic --seeds 3 --epochs 1 \
    --max-train-examples 512 --max-test-examples 1000 --precision "$precision" --experiment bf16-check \
    --no-progress --format markdown
done
$BP compare-runs --experiment bf16-check --group-by precision --baseline fp32 --format markdown \
  --output "$STORE/bf16_check.md"
echo "== $(date -u +%FT%TZ) done"
