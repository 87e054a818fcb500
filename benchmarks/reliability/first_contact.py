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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import VOCAB, write_imdb_tree  # the tests' tiny data and vocabulary
    from mlflow.tracking import MlflowClient
    from transformers import BertConfig, BertModel, BertTokenizerFast

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bert = Path(tmp) / "tiny-bert"
        bert.mkdir()
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
        torch.manual_seed(0)
        BertModel(
            BertConfig(
                vocab_size=len(VOCAB),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        ).save_pretrained(bert)
        tokenizer.save_pretrained(bert)
        data = write_imdb_tree(Path(tmp) / "imdb")
        for repeat in range(args.repeats):
            store = Path(tmp) / f"store{repeat}"
            store.mkdir()
            env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
                "BERTPOOLED_CACHE": str(store / "cache"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            start = time.perf_counter()
            procs = [
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
                for i in range(args.processes)
            ]
            errors = [p.communicate(timeout=1800)[1] for p in procs]
            seconds = time.perf_counter() - start
            ok = sum(p.returncode == 0 for p in procs)
            first_errors = sorted(
                {
                    (e.strip().splitlines() or ["?"])[-1][:120]
                    for e, p in zip(errors, procs, strict=True)
                    if p.returncode
                }
                or {"-"}
            )
            try:
                client = MlflowClient(env["MLFLOW_TRACKING_URI"])
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
                stored = f"{sum(r.info.status == 'FINISHED' for r in runs)} of {len(runs)}"
            except Exception as exc:
                stored = f"store unusable afterwards ({str(exc).splitlines()[0][:100]})"
            rows.append(
                f"| {repeat + 1} | {args.processes} | {ok} of {args.processes} | {stored} | "
                f"{seconds:.0f} | {'; '.join(first_errors)[:300]} |"
            )
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
