# Sourced by the study scripts here (bf16/bf16_check.sh, pooled_lm_cpu/pooled_lm_cpu.sh) after they set STUDY: strict mode, the
# IMDB archive required, the study's store (STORE, default ./studies/$STUDY) as the tracking store, offline
# Hugging Face, ROOT (the repository) and BP (the bertpooled command; BERTPOOLED overrides it).
set -euo pipefail
: "${BERTPOOLED_IMDB:?set BERTPOOLED_IMDB to the IMDB archive}"
STORE=${STORE:-$PWD/studies/$STUDY}
mkdir -p "$STORE"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STORE/mlflow.db} HF_HUB_OFFLINE=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BP=${BERTPOOLED:-bertpooled}
