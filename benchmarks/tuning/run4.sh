#!/bin/bash
# Follow-up: pool at basic's tuned settings (LSTM(64), lr 2.5e-3, batch 16, 3 epochs), 5 seeds, full default protocol.
set -u
cd /work/studies/tune
export PYTHONPATH=/work/studies/tune/code PATH=/work/main/.venv/bin:$PATH HF_HUB_OFFLINE=1
export MLFLOW_TRACKING_URI=sqlite:////work/studies/tune/mlflow.db
export BERTPOOLED_IMDB=/work/shared/data/aclImdb_v1_labeled.tar.gz
echo "start $(date -u)"
python -m bertpooled sweep --config best/best-basic.yaml --modes pool --seeds 5 --parallel 2 --no-progress \
  --format markdown > sweep-pool-at-basic-best.md 2> sweep-pool-at-basic-best.log
echo "end $(date -u)"
