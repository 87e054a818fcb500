"""N `bertpooled train` processes started at once on a fresh SQLite `mlflow.db` (issue 25) -> one markdown row.

    python benchmarks/reliability/first_contact.py --processes 6 --repeats 2

Each process trains a tiny BERT it shares with the others (built here, 2 layers) on a tiny synthetic IMDB for one
epoch; what is measured is whether every process exits 0 and every run is FINISHED in the store afterwards.
Before the lock beside the database (bertpooled.tracking.probe.first_contact), 5 of 6 such processes failed
with `table _alembic_tmp_experiments already exists` (issue 25's report).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_trainers(processes: int, bert: Path, data: Path, env: dict) -> list[subprocess.Popen]:
    """`processes` `bertpooled train` processes started at once on the same store, one seed each."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bertpooled",
                "train",
                "--model",
                str(bert),
                "--data",
                str(data),
                "--max-len",
                "16",
                "--epochs",
                "1",
                "--seed",
                str(i),
                "--no-progress",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def finished_runs(uri: str) -> str:
    """How many of the store's runs are FINISHED, or why the store cannot be read afterwards."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        return f"{sum(r.info.status == 'FINISHED' for r in runs)} of {len(runs)}"
    except Exception as exc:
        return f"store unusable afterwards ({str(exc).splitlines()[0][:100]})"


def one_try(repeat: int, processes: int, bert: Path, data: Path, store: Path) -> str:
    """One try on a fresh store: the processes' exits, the runs they left and each failure's last line -> a row."""
    store.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "BERTPOOLED_CACHE": str(store / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    procs = start_trainers(processes, bert, data, env)
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    seconds = time.perf_counter() - start
    ok = sum(p.returncode == 0 for p in procs)
    first_errors = sorted(
        {(e.strip().splitlines() or ["?"])[-1][:120] for e, p in zip(errors, procs, strict=True) if p.returncode}
        or {"-"}
    )
    stored = finished_runs(env["MLFLOW_TRACKING_URI"])
    return (
        f"| {repeat + 1} | {processes} | {ok} of {processes} | {stored} | "
        f"{seconds:.0f} | {'; '.join(first_errors)[:300]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    from common.tiny import tiny_bert
    from conftest import VOCAB, write_imdb_tree  # the tests' tiny data and vocabulary

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bert = tiny_bert(Path(tmp) / "tiny-bert", VOCAB)  # small: the processes race on the store, not the training
        data = write_imdb_tree(Path(tmp) / "imdb")
        for repeat in range(args.repeats):
            rows.append(one_try(repeat, args.processes, bert, data, Path(tmp) / f"store{repeat}"))
            print(rows[-1], flush=True)
    print(
        "\n".join(
            [
                "| try | processes | exited 0 | runs FINISHED | wall s | errors |",
                "|---:|---:|---:|---:|---:|---|",
                *rows,
            ]
        )
    )


if __name__ == "__main__":
    main()
