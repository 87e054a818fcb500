#!/bin/bash
# Follow-up: pool at basic's tuned settings (LSTM(64), lr 2.5e-3, batch 16, 3 epochs), 5 seeds, full default protocol.
set -u
# STORE: the study's folder (mlflow.db, best/, the code clone in STORE/code); the project's venv active.
: "${STORE:?set STORE to the folder of the study}" "${BERTPOOLED_IMDB:?set BERTPOOLED_IMDB to the IMDB archive}"
cd "$STORE"
export PYTHONPATH=$STORE/code HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI=sqlite:///$STORE/mlflow.db
echo "start $(date -u)"
python -m bertpooled sweep --config best/best-basic.yaml --modes pool --seeds 5 --parallel 2 --no-progress \
  --format markdown > sweep-pool-at-basic-best.md 2> sweep-pool-at-basic-best.log
echo "end $(date -u)"
