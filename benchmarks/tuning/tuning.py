"""Issue #23's study: the FINISHED child runs of sweep parents, comma-separated, for `compare-runs --run-id`.

python benchmarks/tuning/tuning.py PARENT_ID [PARENT_ID ...]     # uses MLFLOW_TRACKING_URI
"""

from __future__ import annotations

import sys

import mlflow

if __name__ == "__main__":
    ids = []
    for parent in sys.argv[1:]:
        runs = mlflow.search_runs(
            search_all_experiments=True,
            output_format="list",
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'FINISHED'",
        )
        ids += sorted(run.info.run_id for run in runs)
    print(",".join(ids))
