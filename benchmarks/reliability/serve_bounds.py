"""`bertpooled serve` under one 50 MB request and 20 concurrent small clients (issue 25) -> a markdown table.

    python benchmarks/reliability/serve_bounds.py   # MiniLM, the default 10 MB limit and the limit raised to 64 MB

Trains one tiny MiniLM classifier (64 synthetic reviews, 1 epoch: serving cost does not depend on what it
learned) into a temporary store, then for each server setting: starts `bertpooled serve` on 127.0.0.1, sends
one ~50 MB request (about 550,000 short texts) while 20 clients each send one-text requests in a loop, samples
the server's resident memory every 0.2 s, and reports the large request's status and time, the memory peak and
the memory 5 s after it ended, and the small requests' p50/p99/max latency. Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "great",
    "wonderful",
    "superb",
    "moving",
    "awful",
    "boring",
    "dull",
    "terrible",
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actor",
    "scene",
    "it",
    "was",
]
#: The one-text request the small clients send.
SMALL = json.dumps({"inputs": ["a wonderful film"]}).encode()


def tiny_imdb(root: Path, per_label: int = 32) -> Path:
    rng = random.Random(0)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(per_label):
                (folder / f"{i}_{9 if label == 'pos' else 2}.txt").write_text(" ".join(rng.choices(WORDS, k=40)))
    return root / "aclImdb"


def post(port: int, body: bytes, timeout: float) -> tuple[int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = -1
    return status, time.perf_counter() - start


def rss_mb(pid: int) -> float:
    import psutil

    try:
        process = psutil.Process(pid)
        return (process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))) / 2**20
    except psutil.Error:
        return 0.0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for the server to take."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(port: int) -> None:
    """Until the server answers a one-text request 200 (at most ~600 tries), so that loading the model is not
    measured as load."""
    for _ in range(600):
        if post(port, b'{"inputs": ["warm up"]}', 5)[0] == 200:
            break
        time.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    """The `q` quantile of sorted `values` (nan when there are none)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def under_load(port: int, pid: int, big: bytes, clients: int, deadline_s: float, idle: float):
    """The large request sent while `clients` loop on one-text requests until it ends, the server's memory sampled
    meanwhile -> (memory samples, the large request's status and seconds, the small ones' statuses and latencies)."""
    peak, done, latencies, statuses, big_result = [idle], threading.Event(), [], [], {}

    def sample():
        while not done.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.2)

    def large():
        big_result["status"], big_result["s"] = post(port, big, deadline_s)
        done.set()

    def client():
        stop_at = time.perf_counter() + deadline_s
        while not done.is_set() and time.perf_counter() < stop_at:
            status, seconds = post(port, SMALL, 60)
            statuses.append(status)
            latencies.append(seconds)

    threads = [threading.Thread(target=sample), threading.Thread(target=large)]
    threads += [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 120)
    done.set()
    return peak, big_result, statuses, latencies


def scenario(model_uri: str, env: dict, extra: list[str], big: bytes, clients: int, deadline_s: float) -> dict:
    """One server setting (`extra`: its options): idle, under the load, and 5 s after; the server stopped after."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bertpooled", "serve", model_uri, "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(port)
        idle = rss_mb(server.pid)
        alone = sorted(post(port, SMALL, 30)[1] for _ in range(20))
        peak, big_result, statuses, latencies = under_load(port, server.pid, big, clients, deadline_s, idle)
        time.sleep(5)
        after = rss_mb(server.pid)
        after_alone = sorted(post(port, SMALL, 30)[1] for _ in range(20))
    finally:
        server.terminate()
        server.wait(30)
    latencies.sort()
    return {
        "big_status": big_result.get("status"),
        "big_s": big_result.get("s"),
        "idle_mb": idle,
        "peak_mb": max(peak),
        "after_mb": after,
        "small_n": len(latencies),
        "small_ok": sum(s == 200 for s in statuses),
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
        "alone_p50": pct(alone, 0.5),
        "after_p50": pct(after_alone, 0.5),
    }


def train_tiny(model: str, env: dict, tmp: Path) -> str:
    """The model URI of one tiny classifier trained into the temporary store (exits with its error if it fails)."""
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertpooled",
            "train",
            "--model",
            model,
            "--data",
            str(tiny_imdb(tmp)),
            "--epochs",
            "1",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if trained.returncode:
        sys.exit(trained.stderr[-3000:])
    return next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("model: "))


def large_body(mb: float) -> tuple[bytes, int]:
    """A request body of about `mb` MB of short texts, and how many texts it holds."""
    texts, size = [], 12
    phrases = [
        "a wonderful film with moving scenes",
        "dull and far too long",
        "the plot was awful",
        "superb acting, loved it",
        "boring, a waste of time",
    ]
    while size < mb * 2**20:
        texts.append(f"{random.choice(phrases)} #{len(texts)}")
        size += len(texts[-1]) + 4
    return json.dumps({"inputs": texts}).encode(), len(texts)


def table(rows: list[str]) -> str:
    """The markdown table: its header, then one row per server setting."""
    return "\n".join(
        [
            "| server | large request | idle MB | peak MB | MB 5 s after | small requests answered 200 | "
            "small p50 alone s | "
            "small p50 s | small p99 s | small max s | small p50 after s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--mb", type=float, default=50.0, help="size of the large request")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds any one request or loop may take")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common.machine import describe

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "BERTPOOLED_CACHE": f"{tmp}/cache",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        model_uri = train_tiny(args.model, env, Path(tmp))
        big, n_texts = large_body(args.mb)
        print(
            f"machine: {describe()}\nlarge request: {len(big) / 2**20:.1f} MB, {n_texts:,} texts; "
            f"{args.clients} small clients",
            flush=True,
        )
        rows = []
        for name, extra in (("default (10 MB limit)", []), ("--max-body-mb 64", ["--max-body-mb", "64"])):
            r = scenario(model_uri, env, extra, big, args.clients, args.deadline)
            print(name, r, flush=True)
            rows.append(
                f"| {name} | {r['big_status']} after {r['big_s']:.1f} s | {r['idle_mb']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['after_mb']:.0f} | {r['small_ok']} of {r['small_n']} | {r['alone_p50']:.2f} | {r['p50']:.2f} | "
                f"{r['p99']:.2f} | {r['max']:.2f} | {r['after_p50']:.2f} |"
            )
    print(table(rows))


if __name__ == "__main__":
    main()
