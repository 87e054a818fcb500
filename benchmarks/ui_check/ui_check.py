"""What the printed runs link shows in MLflow's UI, checked in a real headless Chromium.

    python benchmarks/ui_check/ui_check.py [--keep DIR]

Makes a tiny IMDB, trains two smoke runs (basic, pool; `--config smoke` on the offline MiniLM), a sweep of two
children (seed 7) and a study of 8 trials (`bertpooled tune`, pool) into a fresh SQLite store, adds a run
tagged as a comparison to the same experiment (which the view must hide), starts `mlflow ui` on 127.0.0.1, and
loads the link `bertpooled train` printed in Chromium (Debian's `chromium`, headless, a fresh profile, no
network but loopback). It checks the rendered page: the view's columns are shown, mode and backbone before the
metrics, the comparison run and the sweep's parent are not, the sweep's children are rows of their own, and
the chart view opens on train/loss, train/accuracy, test/accuracy and draws the final metrics as bars (time/*
included), one per run; the study's printed `trials:` link shows its trials (state, val/accuracy, the searched
values) and neither the study's parent nor training runs, sorted by val/accuracy, and its chart view opens on
val/accuracy. Screenshots of the training view, its charts, the run page, the tuning view and its charts go to
docs/. Exit 0 when every check holds; each failure is one line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_imdb_archive, write_imdb_tree  # noqa: E402 - after the sys.path line above

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # The UI fetches runs after it renders; virtual time lets those requests finish before the capture.
    "--virtual-time-budget=30000",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(url: str, work: Path, *, screenshot: Path | None = None, height: int = 1000) -> str:
    """The DOM Chromium rendered for `url` (or, with `screenshot`, write a PNG); a fresh profile each time.
    MLflow draws a chart card only once it scrolls into view: a tall window (`height`) draws them all."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("error: no chromium on PATH: apt-get install chromium")
    profile = Path(tempfile.mkdtemp(dir=work, prefix="profile-"))
    action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--window-size=1920,{height}", f"--user-data-dir={profile}", *action, url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return out.stdout


def bertpooled(env: dict, what: str, timeout: float, *args: str) -> str:
    """`python -m bertpooled ARGS --config smoke --no-progress` in the check's folder; its stdout, or exit naming
    `what` failed and its last error line."""
    out = subprocess.run(
        [sys.executable, "-m", "bertpooled", *args, "--config", "smoke", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["WORK"],
        timeout=timeout,
    )
    if out.returncode:
        sys.exit(f"error: {what} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return out.stdout


def train(mode: str, env: dict, data: Path) -> tuple[str, str]:
    """One smoke run through the CLI; the runs link and run link it printed."""
    stdout = bertpooled(env, f"training {mode}", 600, "train", "--mode", mode, "--data", str(data))
    runs = re.search(r"^runs: (\S+)", stdout, re.M).group(1)
    run = re.search(r"^run:  (\S+)", stdout, re.M).group(1)
    return runs, run


SHOTS = ("runs-table", "charts", "run", "tuning", "tuning-charts")
TUNE_SPACE = "lr=1e-3..1e-1:log,lstm_units=4|8"


def tune(env: dict, data: Path, trials: int) -> str:
    """A small study (pool, smoke protocol) through the CLI; the `trials:` link it printed."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "bertpooled", "tune", "--config", "smoke", "--modes", "pool"),
            *("--space", TUNE_SPACE, "--trials", str(trials), "--data", str(data), "--no-progress"),
            # The store here is `mlflow ui`'s server: the study's own storage is a file beside it.
            *("--storage", f"sqlite:///{env['WORK']}/optuna.db"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["WORK"],
        timeout=1800,
    )
    if out.returncode:
        sys.exit(f"error: the study failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return re.search(r"^trials: (\S+)", out.stderr, re.M).group(1)


def check_tuning_view(link: str, work: Path, docs: Path) -> list[str]:
    """The tuning view the study's link opens: its trials as rows with state, val/accuracy and the searched values;
    the study's parent and the training runs not; the chart view opens on val/accuracy. Two screenshots."""
    failures = []
    table = chromium(link, work)
    for column in ("tune/state", "val/accuracy", "config/lr", "config/lstm_units"):
        if f">{column}<" not in table and f'"{column}"' not in table:
            failures.append(f"tuning view: no column {column!r}")
    if "trial-0-pool" not in table:
        failures.append("tuning view: trial-0-pool not shown")
    for other in (">tune-pool<", "basic-minilm-s0"):
        if other in table:
            failures.append(f"tuning view: {other.strip('<>')} is shown (the study's parent or a training run)")
    if "Sort: val/accuracy" not in table:
        failures.append("tuning view: the sort button does not say val/accuracy")
    first: list[str] = []
    for _ in range(3):  # as for the training charts: a loaded machine may need more than one budget
        charts = chromium(link + "&compareRunsMode=CHART", work, height=4000)
        first = list(dict.fromkeys(re.findall(r">((?:val|train|tune|time)/[\w/]+|Parallel Coordinates)<", charts)))
        if first:
            break
    if first[:2] != ["val/accuracy", "Parallel Coordinates"]:
        failures.append(f"tuning chart view: first charts are {first[:2]}, not val/accuracy, Parallel Coordinates")
    chromium(link, work, screenshot=docs / "ui-tuning.png")
    chromium(link + "&compareRunsMode=CHART", work, screenshot=docs / "ui-tuning-charts.png", height=1400)
    return failures


def start_ui(work: Path, port: int) -> subprocess.Popen:
    """`mlflow ui` on the work folder's fresh store, on 127.0.0.1 only; its log beside the store."""
    uri = f"sqlite:///{work}/mlflow.db"
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "ui.log", "w"),  # the server's log for as long as it runs
    )


def wait_for_ui(ui: subprocess.Popen, port: int, work: Path) -> None:
    """Until the UI answers its health check; exits with the end of its log if it stops or takes over 120 s."""
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if ui.poll() is not None or time.time() > deadline:
                sys.exit(f"error: mlflow ui did not start: {(work / 'ui.log').read_text()[-500:]}")
            time.sleep(0.5)


def sweep(env: dict, data: Path) -> None:
    """A sweep of two children (basic, pool; seed 7) through the CLI: its children must be rows, its parent not."""
    bertpooled(env, "the sweep", 900, "sweep", "--modes", "basic,pool", "--seed-list", "7", "--data", str(data))


def add_comparison_run(env: dict) -> str:
    """A run tagged as a comparison in the training runs' experiment (the view must hide it); the experiment's id."""
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("bertpooled")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="a-comparison-run"):
        mlflow.set_tag("bertpooled.kind", "comparison")
        mlflow.log_metric("compare/pool/accuracy_diff", -0.01)
    return experiment.experiment_id


def check_runs_table(link: str, work: Path, experiment_id: str) -> list[str]:
    """The training view the runs link opens: its columns, mode and backbone before the metrics, every training run
    (a sweep's children included) a row, the comparison run and the sweep's parent not, sorted by end_time."""
    import mlflow

    failures = []
    table = chromium(link, work)
    for column in ("mode", "backbone", "config/seed", "test/accuracy", "time/total_s", "params/head"):
        if f">{column}<" not in table and f'"{column}"' not in table:
            failures.append(f"runs table: no column {column!r}")
    for name in ("basic-minilm-s0", "pool-minilm-s0", "basic-minilm-s7", "pool-minilm-s7"):
        if name not in table:
            failures.append(f"runs table: training run {name} not shown (s7: a sweep's child)")
    if "a-comparison-run" in table:
        failures.append("runs table: the comparison run is shown")
    sweep_parents = mlflow.search_runs([experiment_id], "tags.`bertpooled.kind` = 'sweep'", output_format="list")
    for parent in sweep_parents:
        if parent.info.run_name in table:
            failures.append(f"runs table: the sweep's parent {parent.info.run_name} is shown")
    # ag-grid's DOM order is not the visual one; each header cell's aria-colindex is.
    position = {
        colid: int(index)
        for index, colid in re.findall(r'role="columnheader"[^>]*?aria-colindex="(\d+)"[^>]*?col-id="([^"]+)"', table)
    }
    order = [position.get(c) for c in ("tags.`mode`", "tags.`backbone`", "metrics.`test/accuracy`")]
    if None in order or not order[0] < order[1] < order[2]:
        failures.append(f"runs table: mode and backbone are not before test/accuracy (header positions {order})")
    if "Sort: end_time" not in table:
        failures.append("runs table: the sort button does not say end_time")
    return failures


def check_chart_view(link: str, work: Path) -> list[str]:
    """The training view's charts: train/loss, train/accuracy, test/accuracy first, and the final metrics (time/*
    and params/* included) drawn as bars, one per run."""
    failures = []
    first: list[str] = []
    for _ in range(3):  # a loaded machine may need more than one virtual-time budget to draw the charts
        charts = chromium(link + "&compareRunsMode=CHART", work, height=12000)
        first = list(dict.fromkeys(re.findall(r">((?:train|test|time|params|compare)/[\w/]+)<", charts)))[:3]
        if first:
            break
    if first != ["train/loss", "train/accuracy", "test/accuracy"]:
        failures.append(f"chart view: first charts are {first}, not train/loss, train/accuracy, test/accuracy")
    titles = set(re.findall(r">((?:test|time|params)/[\w/]+)<", charts))
    for metric in ("time/total_s", "time/data_s", "params/head"):
        if metric not in titles:
            failures.append(f"chart view: no card for {metric}")
    # Plotly draws a bar chart's bars as `trace bars` groups; a one-dot line chart has none.
    if charts.count("trace bars") < 10:
        failures.append(
            f"chart view: {charts.count('trace bars')} bar traces drawn, expected the final metrics as bars"
        )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="Work folder to keep (default: a temporary one, removed).")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="Where the screenshots go.")
    parser.add_argument("--trials", type=int, default=8, help="Trials of the study (pruning starts at the 6th).")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bertpooled-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_imdb_archive(write_imdb_tree(work / "imdb"), work / "aclImdb_v1.tar.gz")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "BERTPOOLED_CACHE": str(work / "cache"),
        "PYTHONPATH": str(ROOT),
        "WORK": str(work),
    }
    for var in ("BERTPOOLED_IMDB", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    ui = start_ui(work, port)
    failures: list[str] = []
    try:
        wait_for_ui(ui, port, work)
        runs_link, run_link = train("basic", env, data)
        train("pool", env, data)
        sweep(env, data)
        experiment_id = add_comparison_run(env)
        trials_link = tune(env, data, args.trials)
        print(f"runs link: {runs_link}\nrun link:  {run_link}\ntrials link: {trials_link}")

        failures += check_runs_table(runs_link, work, experiment_id)
        failures += check_chart_view(runs_link, work)
        run_page = chromium(run_link, work)
        if "basic-minilm-s0" not in run_page:
            failures.append("run page: run name not shown")

        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        chromium(runs_link, work, screenshot=docs / "ui-runs-table.png")
        chromium(runs_link + "&compareRunsMode=CHART", work, screenshot=docs / "ui-charts.png")
        chromium(run_link, work, screenshot=docs / "ui-run.png")
        failures += check_tuning_view(trials_link, work, docs)
        print(f"screenshots: {', '.join(str(docs / f'ui-{n}.png') for n in SHOTS)}")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for line in failures:
        print(f"FAIL {line}")
    print("ok" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
