"""Pooling inside the language model, measured: one `bertpooled sweep` per configuration, then a table.

    python benchmarks/pooling/pooling.py --data /path/to/aclImdb_v1.tar.gz   # every row -> benchmarks/pooling/README.md
    python benchmarks/pooling/pooling.py --data ... --rows encoder,layer2   # some rows (others kept from the store)
    python benchmarks/pooling/pooling.py --report-only   # rebuild the table from the store

Every row is a sweep of seeds (child runs of one parent, one process, so `memory/peak_mb` is that process's
peak) on the same label-balanced IMDB subsets. Frozen encoder features are computed by the first child and
cached on disk (`features/cache_hit`), so later seeds and rows on the same features do not run the backbone
over the data again. Runs land in their own tracking store (`--store`, default outputs/pooling-bench/), and the
table is built from what the runs logged, so every number can be opened in `mlflow ui`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from pooling_page import report
from pooling_rows import EXPERIMENT, FROZEN, QUICK, ROWS, TAG, Row, command

ROOT = Path(__file__).resolve().parents[2]


def run_row(row: Row, data: str, max_len: int, env: dict, quick: bool = False) -> float:
    cmd = command(row, data, max_len, quick)
    print(f"== {row.key}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bertpooled", *cmd[1:]], cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"row {row.key} failed (exit {proc.returncode})")
    print(f"== {row.key}: {seconds:.0f}s", flush=True)
    return seconds


def frozen_models(max_len: int, bert, embeddings) -> dict:
    """Each frozen row's architecture, built as its run builds it (seeded; weights do not change the cost)."""
    from bertpooled.config import load_config
    from bertpooled.model.build import build
    from bertpooled.run import runtime
    from bertpooled.run.network import spec_of

    models = {}
    for row in ROWS:
        if row.sizes != FROZEN:
            continue
        config_name = row.args[row.args.index("--config") + 1]
        mode = row.args[row.args.index("--modes") + 1]
        cfg = load_config(config_name, {"mode": mode, "max_len": max_len})
        runtime.seed_everything(cfg.seed)
        spec = spec_of(cfg)
        if cfg.features == "encoder":
            model = build(spec, backbone=bert)
        else:
            model = build(spec, table=embeddings.table, layer=embeddings.layer)
        models[row.key] = model.eval()
    return models


def interleaved_cost(data: str, max_len: int, rounds: int, threads: int = 0) -> dict[str, dict[str, float]]:
    """Latency and throughput of every frozen row's architecture, measured round-robin in one process.

    The runs' own `latency/` and `throughput/` metrics are measured minutes apart, so anything else on the
    machine in between moves them; measured in turns, every configuration sees the same conditions, and the
    median over rounds is compared. Weights do not change the cost, so the heads are freshly initialised.
    """
    import statistics

    import torch

    from bertpooled import data as imdb_data
    from bertpooled.model import backbone
    from bertpooled.run import cost

    if threads:
        torch.set_num_threads(threads)
    info = backbone.inspect("minilm")
    tokenizer = backbone.load_tokenizer(info)
    imdb = imdb_data.load_imdb(data)
    texts = [imdb.test.texts[i] for i in imdb_data.balanced_subset(imdb.test.labels, n=200, seed=0)]
    bert = backbone.load_model(info)
    embeddings = backbone.load_word_embeddings(info)
    models = frozen_models(max_len, bert, embeddings)
    out: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    for r in range(rounds):
        for key, model in models.items():
            out[key].append(
                cost.measure(
                    model, tokenizer, texts, max_len, torch.device("cpu"), latency_texts=8, throughput_batches=1
                )
            )
        print(f"interleaved cost: round {r + 1}/{rounds}", flush=True)
    # Interference only ever adds time, so the best round is the least disturbed one; the median is shown beside it.
    return {
        k: {
            "latency/p50_ms": min(m["latency/p50_ms"] for m in v),
            "throughput/infer_examples_per_s": max(m["throughput/infer_examples_per_s"] for m in v),
            "median latency/p50_ms": statistics.median(m["latency/p50_ms"] for m in v),
            "median throughput/infer_examples_per_s": statistics.median(
                m["throughput/infer_examples_per_s"] for m in v
            ),
            "rounds": len(v),
            "threads": torch.get_num_threads(),
        }
        for k, v in out.items()
    }


def fetch(store: str):
    import mlflow

    mlflow.set_tracking_uri(store)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    col = "params.config/description"
    if runs.empty or col not in runs:
        return None
    runs = runs[runs[col].fillna("").str.startswith(TAG)].copy()
    runs["row"] = runs[col].str.removeprefix(TAG)
    # A row run again keeps only its latest sweep's runs.
    parent = "tags.mlflow.parentRunId"
    latest = runs.sort_values("start_time").groupby("row")[parent].last()
    return runs[runs[parent] == runs["row"].map(latest)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default=os.environ.get("BERTPOOLED_IMDB"), help="IMDB archive or folder (default: $BERTPOOLED_IMDB)"
    )
    parser.add_argument(
        "--rows",
        default="",
        help=f"comma-separated rows to (re)run: {', '.join(r.key for r in ROWS)} (default: all; none: only the "
        "measurement in turns)",
    )
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--store", default=str(ROOT / "outputs" / "pooling-bench"), help="folder of the tracking store")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "pooling" / "README.md"))
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from the store, run nothing")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for the measurement in turns (0 = torch's default)"
    )
    parser.add_argument(
        "--rounds", type=int, default=8, help="rounds of the interleaved cost measurement (0 = skip it)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a check of the script itself: every row at {QUICK} (train, test, epochs, seeds)",
    )
    args = parser.parse_args()
    return args


def run_rows(args, env: dict, seconds: dict[str, float], seconds_file: Path) -> None:
    """Each wanted row's sweep, its wall time and the machine's load when it ended kept beside the store."""
    if not args.data:
        raise SystemExit("pass --data or set BERTPOOLED_IMDB to the IMDB archive")
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()] or [r.key for r in ROWS]
    wanted = [] if wanted == ["none"] else wanted
    unknown = set(wanted) - {r.key for r in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}: use {', '.join(r.key for r in ROWS)}")
    # MLflow needs a store to exist before the first sweep creates the experiment in it.
    for row in ROWS:
        if row.key in wanted:
            seconds[row.key] = run_row(row, args.data, args.max_len, env, args.quick)
            seconds_file.write_text("".join(f"{k}\t{v}\n" for k, v in seconds.items()))
            with open(Path(args.store) / "loads.tsv", "a") as fh:
                fh.write(f"{row.key}\t{os.getloadavg()[0]:.1f}\n")


def measured_turns(args) -> list[dict]:
    """The measurement in turns (taken now unless --report-only or --rounds 0), and every one stored before."""
    import json

    turns_file = Path(args.store) / (f"interleaved-{args.threads}t.json" if args.threads else "interleaved.json")
    if args.rounds and not args.report_only:
        turns_file.write_text(
            json.dumps(interleaved_cost(args.data, args.max_len, args.rounds, args.threads), indent=1)
        )
    # The measurement on torch's default threads first (the runs' own setting), then any fixed-thread ones.
    files = sorted(Path(args.store).glob("interleaved*.json"), key=lambda f: (f.name != "interleaved.json", f.name))
    turns = [json.loads(f.read_text()) for f in files]
    return turns


def main() -> None:
    args = parse_args()
    Path(args.store).mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{Path(args.store).resolve()}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    seconds_file = Path(args.store) / "seconds.tsv"
    seconds = dict(line.split("\t") for line in seconds_file.read_text().splitlines()) if seconds_file.exists() else {}
    seconds = {k: float(v) for k, v in seconds.items()}
    if not args.report_only:
        run_rows(args, env, seconds, seconds_file)
    turns = measured_turns(args)
    loads_file = Path(args.store) / "loads.tsv"
    loads = dict(line.split("\t") for line in loads_file.read_text().splitlines()) if loads_file.exists() else None
    runs = fetch(store)
    if runs is None or runs.empty:
        raise SystemExit("no benchmark runs in the store yet")
    text = report(runs, "$IMDB", args.max_len, seconds, turns, loads, args.quick)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
