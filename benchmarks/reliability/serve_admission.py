"""`bertpooled serve` under six concurrent ~10 MB requests (issue 33) -> a markdown table.

    python benchmarks/reliability/serve_admission.py         # MiniLM; the default cap on bytes in flight, then no cap

Trains one tiny MiniLM classifier as serve_bounds.py does, then for each setting starts the server on 127.0.0.1
(`serving.server.serve` with that `ServeLimits`), sends six ~9.8 MB requests at once (a 503 is retried after
its Retry-After, as a client should, until the deadline) while 4 clients loop on one-text requests, samples the
server's resident memory every 0.2 s, and reports the large requests' outcomes, the memory peak and the
one-text latency p50/p99/max while they run. Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "benchmarks")]  # serve_bounds beside, machine above
from serve_bounds import SMALL, free_port, pct, post, rss_mb, train_tiny, wait_until_answering  # noqa: E402

SERVER = "import sys; from bertpooled.serving.server import ServeLimits, serve; serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]), ServeLimits(max_inflight_mb=float(sys.argv[3])))"  # noqa: E501


def large_request(mb: float) -> bytes:
    phrases = ["a wonderful film with moving scenes", "dull and far too long", "the plot was awful"]
    texts, size = [], 12
    while size < mb * 2**20:
        texts.append(f"{random.choice(phrases)} #{len(texts)}")
        size += len(texts[-1]) + 4
    return json.dumps({"inputs": texts}).encode()


def under_load(port: int, pid: int, big: bytes, deadline_s: float, idle: float):
    """Six large requests at once (a 503 retried after its Retry-After until the deadline) while 4 clients loop on
    one-text requests, the server's memory sampled meanwhile -> (memory samples, each large request's final status
    and 503s, the one-text latencies)."""
    peak, outcomes, latencies, lock = [idle], [], [], threading.Lock()
    stop_at = time.perf_counter() + deadline_s

    def sample():
        while time.perf_counter() < stop_at and len(outcomes) < 6:
            peak.append(rss_mb(pid))
            time.sleep(0.2)

    def large():
        refused = 0
        while True:
            status, _ = post(port, big, max(1.0, stop_at - time.perf_counter()))
            if status != 503 or time.perf_counter() > stop_at:
                break
            refused += 1
            time.sleep(2)  # the server's Retry-After
        with lock:
            outcomes.append((status, refused))

    def client():
        while time.perf_counter() < stop_at and len(outcomes) < 6:
            status, seconds = post(port, SMALL, 120)
            if status == 200:
                latencies.append(seconds)

    threads = [threading.Thread(target=sample), *(threading.Thread(target=large) for _ in range(6))]
    threads += [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 180)
    return peak, outcomes, latencies


def stop(server: subprocess.Popen) -> None:
    """The server stopped; killed after 30 s, as a request still being predicted holds uvicorn's graceful stop."""
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(30)


def scenario(model_uri: str, env: dict, inflight_mb: float, big: bytes, deadline_s: float) -> dict:
    """One cap on bytes in flight (`inflight_mb`, 0: the default): idle, then under the load; the server stopped
    after."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, model_uri, str(port), str(inflight_mb)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(port)
        idle = rss_mb(server.pid)
        peak, outcomes, latencies = under_load(port, server.pid, big, deadline_s, idle)
    finally:
        stop(server)
    latencies.sort()
    statuses = sorted(status for status, _ in outcomes)
    return {
        "statuses": statuses,
        "retried_503": sum(n for _, n in outcomes),
        "idle_mb": idle,
        "peak_mb": max(peak),
        "small_n": len(latencies),
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--mb", type=float, default=9.8, help="size of each large request")
    parser.add_argument("--deadline", type=float, default=200.0, help="seconds a setting's load lasts at most")
    args = parser.parse_args()
    from machine import describe

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "BERTPOOLED_CACHE": f"{tmp}/cache",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        model_uri = train_tiny(args.model, env, Path(tmp))
        big = large_request(args.mb)
        print(f"machine: {describe()}\nsix requests of {len(big) / 2**20:.1f} MB; 4 one-text clients", flush=True)
        rows = []
        for name, inflight in (("admission (default: 20 MB in flight)", 0.0), ("no cap (1,000 MB in flight)", 1000.0)):
            r = scenario(model_uri, env, inflight, big, args.deadline)
            print(name, r, flush=True)
            rows.append(
                f"| {name} | {', '.join(map(str, r['statuses']))} | {r['retried_503']} | {r['idle_mb']:.0f} | "
                f"{r['peak_mb']:.0f} | {r['small_n']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |"
            )
        print(
            "\n| server | large requests' final status | 503s retried | idle MB | peak MB | one-text answers | "
            "p50 s | p99 s | max s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        print("\n".join(rows))


if __name__ == "__main__":
    main()
