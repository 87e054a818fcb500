"""Run the reliability scenarios (real signals, real processes, a real PostgreSQL-backed server) several times
and record how each ended -> benchmarks/reliability.md.

    python benchmarks/reliability.py --repeats 2

Each scenario is a test in tests/ that asserts the outcome it names (the resumed run's metrics equal the
uninterrupted run's exactly; every concurrent run finished with every metric; the run outlived the restart).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [
    ("SIGTERM mid-run, then `--resume`: final metrics, loss history and predictions equal an uninterrupted run",
     "tests/test_resume.py::test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result[sigterm]"),
    ("kill -9 mid-run (run left RUNNING), then `--resume`: the same, exactly",
     "tests/test_resume.py::test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result[kill-9]"),
    ("4 training runs started at once into one SQLite `mlflow.db`: all FINISHED, no metric lost",
     "tests/test_concurrency.py::test_four_runs_started_at_once_all_finish_with_every_metric"),
    ("`sweep --parallel 2` with 4 children: all FINISHED under the parent, no metric lost",
     "tests/test_sweep.py::test_parallel_children_run_side_by_side_and_none_is_lost"),
    ("mlflow server on PostgreSQL stopped and restarted in the middle of a run: the run FINISHED, every epoch logged",
     "tests/test_server.py::test_a_run_survives_the_server_restarting_in_its_middle"),
    ("a tampered checkpoint: refused, the run left as it was",
     "tests/test_resume.py::test_a_tampered_checkpoint_is_refused"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "reliability.md"))
    args = parser.parse_args()
    rows = []
    for title, node in SCENARIOS:
        passed, seconds = 0, []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", node],
                                  cwd=ROOT, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            passed += proc.returncode == 0
            print(f"{node}: {'ok' if proc.returncode == 0 else 'FAILED'} ({seconds[-1]:.0f}s)", flush=True)
            if proc.returncode != 0:  # the assertion and its context, not the captured logs after it
                print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("E ", ">")))[-3000:],
                      file=sys.stderr)
        rows.append(f"| {title} | {passed} of {args.repeats} | {sorted(seconds)[len(seconds) // 2]:.0f} | `{node.split('::')[0]}` |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Reliability",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; commit {commit}; "
        f"{time.strftime('%Y-%m-%d')}",
        f"- command: `python benchmarks/reliability.py --repeats {args.repeats}` (each row is a test that asserts its outcome)",
        "",
        "| scenario | held | median s | test |",
        "|---|---:|---:|---|",
        *rows,
        "",
    ])
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
