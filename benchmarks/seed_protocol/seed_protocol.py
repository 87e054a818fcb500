"""Time the seed protocol end to end: both modes as two `mlflow run` calls, repeated, phase by phase.

    python benchmarks/seed_protocol/seed_protocol.py    # 3 repeats on this machine -> README.md here
    python benchmarks/seed_protocol/seed_protocol.py --device cuda \\
        --output benchmarks/seed_protocol/seed_protocol_gpu.md

Each repeat starts from empty caches (token ids and the parsed archive), so it pays for reading and
tokenizing the data once, as a fresh user would; the second mode of a repeat finds the token ids cached.
IMDB comes from --data or BERTPOOLED_IMDB. Every run lands in a throwaway tracking store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share

from common.machine import describe

ROOT = Path(__file__).resolve().parents[2]

# `precompute` is part of `train` (the training rows' frozen features computed once, when they fit precompute_mb).
PHASES = ["data", "tokenize", "features", "precompute", "train", "eval", "cost", "log_model", "total"]


def one_run(mode: str, args, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one `mlflow run` call, its training process included."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(ROOT),
        "--env-manager",
        "local",
        "--experiment-name",
        "bench",
        "-P",
        f"mode={mode}",
        "-P",
        f"config={args.config}",
    ]
    if args.device:
        cmd += ["-P", f"device={args.device}"]
    for extra in args.param:
        cmd += ["-P", extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    # wait4's ru_maxrss covers the child and every descendant it waited for: the training process too.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"mlflow run failed for mode={mode}:\n{out[-3000:]}")
    return wall, usage.ru_maxrss // 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="experiments/default.yaml")
    parser.add_argument("--data", default=os.environ.get("BERTPOOLED_IMDB", ""))
    parser.add_argument("--device", default="")
    parser.add_argument("--param", action="append", default=[], help="extra -P key=value for every run")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "seed_protocol" / "README.md"))
    args = parser.parse_args()
    if not args.data:
        sys.exit("error: point --data or BERTPOOLED_IMDB at aclImdb_v1.tar.gz")
    return args


def row_of(run, wall: float, rss: float) -> dict:
    """One run's phases, wall time, peak RSS and what it logged about itself."""
    m = run.data.metrics
    row = {f"{p}": m.get(f"time/{p}_s", float("nan")) for p in PHASES}
    row.update(
        wall=wall,
        rss=rss,
        acc=m["test/accuracy"],
        head=m["params/head"],
        hit=m.get("tokens/cache_hit", 0),
        ahead=m.get("train_features/cache_hit", 0),
        n_train=m["data/train_examples"],
        n_test=m["data/test_examples"],
        device=run.data.params.get("runtime/device", "?"),
        threads=run.data.params.get("runtime/threads", "?"),
    )
    return row


def measure(args) -> tuple[dict[str, list[dict]], list[float]]:
    """Both modes, `--repeats` times, each repeat from empty caches: a row per run, and each repeat's wall."""
    import mlflow

    modes = ["basic", "pool"]
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    both = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        bin_dir = str(Path(sys.executable).parent)
        for rep in range(args.repeats):
            cache = Path(tmp) / f"cache{rep}"
            env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": uri,
                "BERTPOOLED_IMDB": args.data,
                "BERTPOOLED_CACHE": str(cache),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            }
            total = 0.0
            for mode in modes:
                wall, rss = one_run(mode, args, env)
                total += wall
                mlflow.set_tracking_uri(uri)
                run = mlflow.search_runs(
                    experiment_names=["bench"],
                    max_results=1,
                    order_by=["attributes.start_time DESC"],
                    output_format="list",
                )[0]
                row = row_of(run, wall, rss)
                rows[mode].append(row)
                print(
                    f"repeat {rep + 1} {mode}: wall {wall:.1f}s train {row['train']:.1f}s acc {row['acc']:.4f} "
                    f"rss {rss} MiB",
                    flush=True,
                )
            both.append(total)
    return rows, both


def command_of(args) -> str:
    """The command line that reproduces this page (options at their defaults left out)."""
    return (
        "python benchmarks/seed_protocol/seed_protocol.py"
        + "".join(
            f" {flag} {val}"
            for flag, val in (
                ("--device", args.device),
                ("--repeats", args.repeats if args.repeats != 3 else ""),
                ("--config", args.config if args.config != "experiments/default.yaml" else ""),
            )
            if val
        )
        + "".join(f" --param {p}" for p in args.param)
    )


def render(args, rows: dict[str, list[dict]], both: list[float]) -> str:
    modes = ["basic", "pool"]
    med = {
        mode: {k: statistics.median(r[k] for r in rows[mode]) for k in rows[mode][0] if k not in ("device", "threads")}
        for mode in modes
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    command = command_of(args)
    b, p = med["basic"], med["pool"]
    lines = [
        f"# Seed protocol timing ({'GPU' if 'cuda' in rows['basic'][0]['device'] else 'CPU'})",
        "",
        f"- machine: {describe()}",
        f"- device: {rows['basic'][0]['device']}, torch threads: {rows['basic'][0]['threads']}",
        f"- commit: {commit}; date: {time.strftime('%Y-%m-%d')}",
        f"- protocol: `{args.config}` ({int(b['n_train']):,} train / {int(b['n_test']):,} test reviews), each "
        "mode as one "
        "`mlflow run . --env-manager local` call, the two one after the other",
        f"- command: `BERTPOOLED_IMDB=/path/to/aclImdb_v1.tar.gz {command}`",
        f"- medians of {args.repeats} repeats; each repeat starts with empty caches, so basic reads and tokenizes, "
        "and pool finds the token ids cached",
        "",
        "| phase (s) | basic | pool | pool/basic |",
        "|---|---:|---:|---:|",
    ]
    for key in PHASES:
        # No ratio against a phase that (nearly) did not happen, e.g. basic's precompute (its features do not fit).
        ratio = f"{p[key] / b[key]:.2f}" if b[key] == b[key] and b[key] > 0.05 else ""
        lines.append(f"| time/{key}_s | {b[key]:.2f} | {p[key]:.2f} | {ratio} |".replace("nan", "-"))
    lines += [
        f"| `mlflow run` wall, process start included | {b['wall']:.1f} | {p['wall']:.1f} | "
        f"{p['wall'] / b['wall']:.2f} |",
        f"| peak RSS (MiB) | {b['rss']:.0f} | {p['rss']:.0f} | |",
        f"| trained on precomputed features (train_features/cache_hit) | {b['ahead']:.0f} | {p['ahead']:.0f} | |",
        f"| test accuracy | {b['acc']:.4f} | {p['acc']:.4f} | |",
        f"| head parameters | {b['head']:,.0f} | {p['head']:,.0f} | {p['head'] / b['head']:.2f} |",
        "",
        f"Both modes, two `mlflow run` calls end to end: median **{statistics.median(both):.1f} s** "
        f"(repeats: {', '.join(f'{t:.1f}' for t in both)}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    rows, both = measure(args)
    text = render(args, rows, both)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
