"""Faults by class, second round (issue 33): each guard the last round put on one door now stands at every door
of its class (every worker pool, every YAML read, every logged model, every store opened, every file written,
every numeric option and payload, every size that costs memory). Everything tiny, on 127.0.0.1, bounded in
time; processes are found by their pid and parent, never by words in a command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_error_line, tiny_args
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app


def assert_one_line(result, *words: str) -> str:
    line = one_error_line(result, *words)
    assert len(line) < 400, line
    return line


def wait_until(check, timeout: float, what: str, proc=None):
    """Poll `check()` until it returns something truthy (returned), failing after `timeout` seconds or when
    `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited first ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout} s")


# --- 1. every worker pool dies with its parent ----------------------------------------------------------------


def _kill_parent_and_expect_its_workers_gone(proc) -> list:
    """SIGKILL `proc` once its workers are up; every process under it must be gone within a deadline (none left
    under PID 1). Returns the workers that were found."""
    import psutil

    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the pool started no process"
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _gone, alive = psutil.wait_procs(workers, timeout=120)
        assert alive == [], [(p.pid, p.status()) for p in alive]
    finally:
        for p in workers:
            if p.is_running():
                p.kill()
    return workers


@pytest.mark.slow
def test_a_sigkilled_tune_parallel_takes_its_workers_with_it_and_marks_its_runs(store, tiny_bert, bigger_imdb):
    client = MlflowClient(store)
    cmd = [sys.executable, "-m", "bertpooled", "tune", *tiny_args(tiny_bert, bigger_imdb)]
    cmd += ["--epochs", "150", "--max-train-examples", "0", "--modes", "basic", "--trials", "4", "--parallel", "2"]
    cmd += ["--space", "lr=1e-3..1e-1:log", "--pruner", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def two_trials_training() -> list:
        exp = client.get_experiment_by_name("bertpooled-tuning")
        runs = client.search_runs([exp.experiment_id], "tags.`tune/trial` != ''") if exp else []
        running = [r for r in runs if r.info.status == "RUNNING" and "train/loss" in r.data.metrics]
        return running if len(running) == 2 else []

    try:
        wait_until(two_trials_training, 300, "two trials training side by side", proc)
        _kill_parent_and_expect_its_workers_gone(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    exp = client.get_experiment_by_name("bertpooled-tuning")
    runs = client.search_runs([exp.experiment_id])
    left = [(r.info.run_name, r.data.tags.get("error")) for r in runs if r.info.status == "RUNNING"]
    assert left == []  # the parent was left RUNNING before
    (parent,) = [r for r in runs if "tune/trial" not in r.data.tags]
    assert parent.info.status == "KILLED" and "died" in parent.data.tags["error"]


@pytest.mark.slow
def test_a_sigkilled_sweep_parallel_takes_every_process_under_it(store, tiny_bert, bigger_imdb):
    from conftest import sweep_args, two_children_training

    client = MlflowClient(store)
    proc = subprocess.Popen(
        sweep_args(tiny_bert, bigger_imdb),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        two_children_training(client, proc, 300)
        _kill_parent_and_expect_its_workers_gone(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    runs = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    assert [r for r in runs if r.info.status == "RUNNING"] == []


def test_every_pool_starts_its_processes_through_the_one_worker_module():
    """No module but sweep/workers.py picks a multiprocessing context or starts a process itself."""
    import bertpooled

    package = Path(bertpooled.__file__).parent
    words = ("get_context(", "multiprocessing.Process(", "os.fork(", "subprocess.Popen(")
    offenders = {
        str(p.relative_to(package)): [w for w in words if w in p.read_text()]
        for p in package.rglob("*.py")
        if p.name != "workers.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_an_idle_orphaned_worker_marks_the_parent_run_and_exits(store):
    """A worker whose parent is gone and which runs nothing leaves at once, ending the parent run KILLED."""
    from bertpooled.sweep import workers

    client = MlflowClient(store)
    exp = client.create_experiment("pool")
    run = client.create_run(exp)
    code = (
        "import sys, time; from bertpooled.sweep import workers\n"
        f"workers.init(None, workers.Owner({os.getpid()} + 10**6, {run.info.run_id!r}, {store!r}, 'resume it'))\n"
        "time.sleep(60); sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(workers.__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    ended = client.get_run(run.info.run_id)
    assert (
        ended.info.status == "KILLED" and "died" in ended.data.tags["error"] and "resume it" in ended.data.tags["error"]
    )


def test_an_orphaned_worker_finishes_ending_its_interrupted_work_before_it_leaves(tmp_path):
    """The parent dies while a worker trains: the worker's work is interrupted and ends its run (seconds on a loaded
    machine), and only then does the worker leave. Its watch thread once took the interrupted work for finished
    and left mid-cleanup, leaving the run RUNNING (seen under two busy loops)."""
    import psutil
    from conftest import wait_until

    from bertpooled.sweep import workers

    ready, ended = tmp_path / "ready", tmp_path / "ended"
    worker = (
        "import os, time; from bertpooled.sweep import workers\n"
        "workers.init(None, workers.Owner(os.getppid()))\n"
        "with workers.busy():\n"
        "    try:\n"
        f"        open({str(ready)!r}, 'w').close(); time.sleep(120)\n"
        "    except KeyboardInterrupt:\n"
        f"        time.sleep(3); open({str(ended)!r}, 'w').close(); raise\n"  # a slow ending, as under load
    )
    parent = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}]); print(w.pid, flush=True); time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(workers.__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", parent], env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    child = None
    try:
        child = psutil.Process(int(proc.stdout.readline()))
        wait_until(ready.exists, 120, "the worker never started its work")
        proc.kill()
        proc.wait(30)
        child.wait(60)  # it left (psutil.TimeoutExpired otherwise) ...
        assert ended.exists()  # ... after its work's cleanup, not in the middle of it
    finally:
        proc.kill()
        if child is not None and child.is_running():
            child.kill()


# --- 2. every YAML the project reads goes through the one bounded reader ----------------------------------------


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, words",
    [
        (_alias_bomb(), ["aliases"]),
        ("lr: " + "[" * 5000 + "]" * 5000 + "\n", ["nested"]),
        ("lr:\n" + "".join(f"{' ' * (2 * i)}- \n" for i in range(1, 400)), ["nested"]),
        ("lr: [1, 2\n", ["not valid YAML"]),
        ("# " + "x" * 300_000 + "\n", ["KiB"]),
        (b"lr: \xff\xfe\n", ["UTF-8"]),
        ("- lr\n- 3\n", ["mapping"]),
    ],
    ids=["alias bomb", "5000 deep flow", "400 deep block", "syntax", "300 KB", "not utf-8", "a list"],
)
def test_a_space_file_sized_to_hurt_is_one_line_before_yaml_builds_it(store, tmp_path, text, words):
    space = tmp_path / "space.yaml"
    space.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = CliRunner().invoke(app, ["tune", "--config", "smoke", "--space", str(space), "--trials", "1"])
    assert_one_line(result, "search space file", *words)


def test_no_module_but_the_bounded_reader_loads_yaml():
    """yaml.load, safe_load, full_load, unsafe_load and their *_all forms, or a yaml Loader's get_data, appear only
    in config/files.py (the reader that checks size, aliases and depth before building anything)."""
    import ast

    import bertpooled

    package = Path(bertpooled.__file__).parent
    loaders = {"load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all", "full_load_all"}
    loaders |= {"unsafe_load_all", "compose", "compose_all", "SafeLoader", "FullLoader", "Loader", "UnsafeLoader"}
    loaders |= {"CSafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}
    offenders = []
    for path in package.rglob("*.py"):
        if path.relative_to(package).as_posix() == "config/files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in loaders and getattr(node.value, "id", "") == "yaml":
                offenders.append(f"{path.relative_to(package)}:{node.lineno} yaml.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "yaml":
                offenders += [
                    f"{path.relative_to(package)}:{node.lineno} from yaml import {a.name}" for a in node.names
                ]
    assert offenders == []


# --- 3. a logged model is validated before it is built, wherever it is loaded -----------------------------------


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory, tiny_bert, tiny_imdb):
    """A tiny logged model (features=embeddings) in a store of this module's: (its store, its pyfunc folder)."""
    from conftest import invoke_tiny

    folder = tmp_path_factory.mktemp("logged-model")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("BERTPOOLED_CACHE", str(folder / "cache"))
        # A module fixture runs before the per-test cleaner: an earlier test's in-process run may have left
        # MLflow's experiment variables naming an experiment of another store ("No Experiment with id=1").
        for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            patch.delenv(var, raising=False)
        result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "1")
    assert result.exit_code == 0, result.output
    from urllib.parse import urlparse

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    (model,) = client.search_logged_models([run.info.experiment_id])
    return uri, Path(urlparse(model.artifact_location).path), run.info.run_id


@pytest.fixture()
def damaged(logged_model):
    """The logged model's files, restored after the test damaged them."""
    folder = logged_model[1]
    files = {p: p.read_bytes() for p in (folder / "artifacts").iterdir() if p.is_file()}
    yield folder
    for path, data in files.items():
        path.write_bytes(data)


def _edit_spec(folder: Path, **changes) -> None:
    import json

    path = folder / "artifacts" / "model_config.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps({k: v for k, v in spec.items() if v is not ...}))


DAMAGES = [
    ({"max_len": 10**8}, ["max_len=100000000", "from 2 to 64"]),
    ({"max_len": "16"}, ["max_len='16'"]),
    ({"max_len": 1}, ["max_len=1"]),
    ({"lstm_units": 10**6}, ["lstm_units=1000000"]),
    ({"lstm_units": 0}, ["lstm_units=0"]),
    ({"lstm_units": True}, ["lstm_units=True"]),
    ({"lstm_units": 19}, ["lstm_units=19", "does not match the weights"]),
    ({"pool": "avg:0x0"}, ["pool='avg:0x0'"]),
    ({"pool": ["avg"]}, ["pool=['avg']"]),
    ({"pool_at": "nowhere"}, ["pool_at='nowhere'"]),
    ({"padding": "sideways"}, ["padding='sideways'"]),
    ({"features": "video"}, ["features='video'"]),
    ({"features": "encoder"}, ["backbone_config"]),
    ({"lstm_bias": 3}, ["lstm_bias=3"]),
    ({"precision": "fp8"}, ["precision='fp8'"]),
    ({"pool": ...}, ["pool=None"]),
    ({"keep_layers": 500}, ["keep_layers=500"]),
    ({"separate_cls": "yes"}, ["separate_cls='yes'"]),
]


@pytest.mark.parametrize("changes, words", DAMAGES, ids=[str(c) for c, _ in DAMAGES])
def test_every_field_of_a_logged_models_spec_is_checked_before_it_is_built(damaged, changes, words):
    import mlflow.pyfunc

    from bertpooled.model.spec_checks import DamagedModel

    _edit_spec(damaged, **changes)
    with pytest.raises(DamagedModel) as caught:
        mlflow.pyfunc.load_model(str(damaged))
    line = str(caught.value)
    assert "\n" not in line and "model_config.json" in line, line
    assert all(w in line for w in words), line
    # One line from the check, not a traceback from inside torch or the loader chained to it.
    exc = caught.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


@pytest.mark.parametrize(
    "damage, words",
    [
        ("truncated weights", ["weights.safetensors does not load"]),
        ("config not json", ["model_config.json is not JSON"]),
        ("config a list", ["not a mapping"]),
        ("weights of another width", ["weights.safetensors", "lstm_units"]),
    ],
)
def test_damaged_model_files_are_one_line_at_load_model_and_at_serve(damaged, logged_model, damage, words):
    import json

    import mlflow.pyfunc

    from bertpooled.model.spec_checks import DamagedModel

    artifacts = damaged / "artifacts"
    if damage == "truncated weights":
        weights = artifacts / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "config not json":
        (artifacts / "model_config.json").write_text("{nope")
    elif damage == "config a list":
        (artifacts / "model_config.json").write_text("[1, 2]")
    else:
        from safetensors.torch import load_file, save_file

        state = load_file(artifacts / "weights.safetensors")
        units = json.loads((artifacts / "model_config.json").read_text())["lstm_units"]
        state["head.weight_hh_l0"] = state["head.weight_hh_l0"][: 4 * (units - 1), : units - 1].contiguous()
        save_file(state, artifacts / "weights.safetensors")
    with pytest.raises(DamagedModel) as caught:
        mlflow.pyfunc.load_model(str(damaged))
    assert "\n" not in str(caught.value) and all(w in str(caught.value) for w in words), str(caught.value)
    served = CliRunner().invoke(app, ["serve", str(damaged), "--port", "1"])
    assert_one_line(served, "damaged", *words)


def test_a_source_models_weights_are_held_against_its_spec_from_their_header_alone(damaged):
    """For `init_from`/`distill_from` (run/sources.py's check calls it before any run exists): the weights' shapes
    against the spec, without reading a tensor."""
    import json

    from bertpooled.model.spec_checks import DamagedModel, check_weights

    weights, spec_path = damaged / "artifacts" / "weights.safetensors", damaged / "artifacts" / "model_config.json"
    check_weights(json.loads(spec_path.read_text()), str(weights))  # untouched: passes
    with pytest.raises(DamagedModel, match=r"lstm_units=19.*does not match the weights"):
        check_weights({**json.loads(spec_path.read_text()), "lstm_units": 19}, str(weights))
    with pytest.raises(DamagedModel, match="lstm_units=10000000"):
        check_weights({**json.loads(spec_path.read_text()), "lstm_units": 10**7}, str(weights))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DamagedModel, match="does not load"):
        check_weights(json.loads(spec_path.read_text()), str(weights))


def test_a_damaged_model_named_by_init_from_or_distill_from_is_one_line_before_any_run(
    damaged, logged_model, tiny_bert, tiny_imdb, monkeypatch, tmp_path
):
    uri, _folder, run_id = logged_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    _edit_spec(damaged, max_len=10**8)
    before = len(runs_of_store(uri))
    for option in ("--init-from", "--distill-from"):
        encoder = ["--mode", "basic", "--features", "encoder", "--finetune"]
        result = CliRunner().invoke(app, ["train", *tiny_args(tiny_bert, tiny_imdb), *encoder, option, run_id])
        assert_one_line(result, option.removeprefix("--").replace("-", "_"), "max_len=100000000")
    assert len(runs_of_store(uri)) == before


def test_a_spec_with_fields_this_code_does_not_know_still_loads(damaged):
    import mlflow.pyfunc
    import pandas as pd

    _edit_spec(damaged, keep_layers=2, some_later_field={"a": 1})
    model = mlflow.pyfunc.load_model(str(damaged))
    assert len(model.predict(pd.DataFrame({"text": ["great film"]}))) == 1


# --- 4. a store is never created over something that is there; read-only commands create nothing ----------------


def _foreign_sqlite(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()


def _real_store(path: Path) -> None:
    MlflowClient(f"sqlite:///{path}").search_experiments()


STORE_FILES = {
    "empty": (lambda p: p.write_bytes(b""), ["empty file (0 bytes)"]),
    "text": (lambda p: p.write_text("these are my notes\n" * 10), ["not a SQLite database"]),
    "foreign sqlite": (_foreign_sqlite, ["holds the tables notes", "not MLflow's"]),
    "header only": (lambda p: (_real_store(p), p.write_bytes(p.read_bytes()[:100])), ["tracking store"]),
}
COMMANDS = {
    "train": lambda bert, data: ["train", *tiny_args(bert, data)],
    "compare-runs": lambda bert, data: ["compare-runs"],
    "compare-runs --no-log": lambda bert, data: ["compare-runs", "--no-log"],
    "sweep": lambda bert, data: ["sweep", *tiny_args(bert, data), "--modes", "basic"],
    "tune": lambda bert, data: ["tune", *tiny_args(bert, data), "--space", "lr=1e-3..1e-1", "--trials", "1"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(STORE_FILES))
def test_a_file_that_is_not_an_mlflow_store_is_refused_and_left_as_it_was(
    store, tmp_path, tiny_bert, tiny_imdb, kind, command
):
    path = tmp_path / "mlflow.db"
    make, words = STORE_FILES[kind]
    make(path)
    before = path.read_bytes()
    result = CliRunner().invoke(app, COMMANDS[command](tiny_bert, tiny_imdb))
    assert_one_line(result, str(path), *words)
    assert path.read_bytes() == before  # a 0-byte store got a schema written over it before


def test_a_read_only_command_creates_no_store_and_writes_nothing_to_one_that_is_there(store, tmp_path):
    path = tmp_path / "mlflow.db"
    result = CliRunner().invoke(app, ["compare-runs", "--no-log"])
    assert_one_line(result, "no tracking store", str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no lock file
    _real_store(path)
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["compare-runs", "--no-log"])
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stamp, result.output
    assert not (tmp_path / "mlflow.db-init.lock").exists()


def test_a_new_store_is_still_created_where_there_was_none(store, tmp_path):
    from bertpooled.tracking.probe import check_tracking_reachable

    check_tracking_reachable(store)
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    check_tracking_reachable(store)  # and opened again as the MLflow store it now is


# --- 5. every file the project writes goes to a new temporary file and is renamed over its target ---------------


def _plant_link(target: Path, victim: Path) -> None:
    victim.write_text("the user's own file\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(victim)


def test_the_one_writer_replaces_a_planted_link_and_never_writes_through_it(tmp_path):
    from bertpooled import files

    victim, target = tmp_path / "victim.txt", tmp_path / "out" / "report.md"
    _plant_link(target, victim)
    files.write_text(target, "report\n")
    assert victim.read_text() == "the user's own file\n"
    assert not target.is_symlink() and target.read_text() == "report\n"
    with pytest.raises(RuntimeError), files.replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "report\n" and sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_compare_runs_output_never_writes_through_a_link_planted_in_its_folder(store, tmp_path):
    client = MlflowClient(store)
    client.create_run(client.create_experiment("bertpooled"), tags={"mode": "basic"})
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    names = ["report.md", "report.json", "report.csv", "report.html", "accuracy_vs_time.png", "learning_curves.png"]
    for name in names:
        _plant_link(out / name, victim)
    result = CliRunner().invoke(app, ["compare-runs", "--no-log", "--output", str(out), "--include-unfinished"])
    assert victim.read_text() == "the user's own file\n", result.output
    written = [n for n in names if (out / n).exists() and not (out / n).is_symlink()]
    assert "report.md" in written, result.output


def test_tune_output_never_writes_through_a_link_planted_in_its_folder(store, tmp_path, tiny_bert, tiny_imdb):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    _plant_link(out / "best-basic.yaml", victim)
    args = ["tune", *tiny_args(tiny_bert, tiny_imdb), "--modes", "basic", "--space", "lr=1e-3..1e-1"]
    result = CliRunner().invoke(app, [*args, "--trials", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "the user's own file\n"
    assert not (out / "best-basic.yaml").is_symlink() and "lr:" in (out / "best-basic.yaml").read_text()


def test_every_write_goes_through_the_one_writer_or_into_a_private_temporary_folder():
    """A call that writes a file (write_text, write_bytes, savefig, to_csv, np.savez, safetensors' save_file, open
    for writing) appears only in files.py, inside `files.replacing`, or in a function that writes into a fresh
    `tempfile.TemporaryDirectory` (or is handed one: the list below, each with its reason). Lock files, opened
    to append ("a+") and never written, are not writes."""
    import ast

    import bertpooled

    handed_a_temporary_folder = {
        "run/checkpoint.py:save",  # run/experiment.py passes a TemporaryDirectory; the files are logged from there
        "tune/study.py:_plots",  # _conclude passes a TemporaryDirectory, logged as the study's artifacts
        "report/render.py:to_csv",  # into an in-memory buffer
        "run/cost.py:reset_peak_memory",  # /proc/self/clear_refs: a kernel control file, no data
    }
    package = Path(bertpooled.__file__).parent
    writers = {"write_text", "write_bytes", "savefig", "to_csv", "savez", "save_file", "dump"}
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "files.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            source = ast.get_source_segment(path.read_text(), func) or ""
            where = f"{path.relative_to(package)}:{func.name}"
            private = (
                "TemporaryDirectory" in source or "files.replacing" in source or where in handed_a_temporary_folder
            )
            for node in ast.walk(func):
                if not isinstance(node, ast.Call) or private:
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if getattr(getattr(node.func, "value", None), "id", "") in ("files", "render"):
                    continue  # the one writer; a renderer returning text
                opened_for_writing = name == "open" and any(
                    isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wx")
                    for a in node.args[1:2]
                )
                if (name in writers and node.args and name != "dump") or opened_for_writing:
                    offenders.append(f"{where}:{node.lineno} {name}")
    assert sorted(set(offenders)) == []


# --- 6. every number, every payload, every experiment name validated at its door --------------------------------


def _commands() -> list:
    """Every command as (its words, typer's info): top-level ones and those of groups (`runs end-abandoned`)."""
    from bertpooled.cli import app

    found = [(info.name or "", info) for info in app.registered_commands]
    for group in app.registered_groups:
        found += [(f"{group.name} {info.name}", info) for info in group.typer_instance.registered_commands]
    return found


def _numeric_options() -> list[tuple[str, str, str]]:
    """(command, option, type) of every int or float option of every command (config fields excepted: the config
    checks those), read from the commands themselves, so that an option added later is tried too."""
    import inspect
    import typing

    found = []
    for words, info in _commands():
        callback = info.callback
        hints = typing.get_type_hints(inspect.unwrap(callback), include_extras=False)
        for name, hint in hints.items():
            kinds = set(typing.get_args(hint)) or {hint}
            kind = "float" if float in kinds else "int" if int in kinds and bool not in kinds else None
            if kind and name != "return":
                found.append((words, f"--{name.rstrip('_').replace('_', '-')}", kind))
    return found


NUMERIC = _numeric_options()


def test_the_commands_have_numeric_options_and_every_command_checks_its_numbers():
    expected = {("serve", "--max-body-mb", "float"), ("tune", "--timeout", "float"), ("sweep", "--parallel", "int")}
    assert expected | {("runs end-abandoned", "--older-than", "float")} <= set(NUMERIC)
    commands = [(words, i) for words, i in _commands() if not words.startswith("mlproject-")]
    unchecked = [words for words, i in commands if not _checked(i.callback)]
    assert unchecked == []


def _checked(callback) -> bool:
    while callback is not None:
        if getattr(callback, "numbers_checked", False):
            return True
        callback = getattr(callback, "__wrapped__", None)
    return False


REQUIRED = {"serve": ["runs:/0123456789abcdef0123456789abcdef/model"], "tune": ["--space", "lr=1e-3..1e-1"]}


@pytest.mark.parametrize("command, option, kind", NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_every_numeric_option_refuses_non_finite_and_negative_numbers_in_one_line(store, command, option, kind):
    for value in ["nan", "inf", "-inf", "-1.5"] if kind == "float" else ["-1"]:
        result = CliRunner().invoke(app, [*command.split(), *REQUIRED.get(command, []), option, value])
        if result.exit_code == 2 and "Traceback" not in result.output and "Usage:" in result.output:
            continue  # click refused it itself (a range such as --port 1..65535)
        assert_one_line(result, option)


@pytest.mark.parametrize(
    "payload, content_type, words",
    [
        ({"inputs": ["fine", None]}, "application/json", ["text 1", "NoneType"]),
        ({"inputs": ["fine", "also fine", 3.5]}, "application/json", ["text 2", "float"]),
        ({"inputs": [{"a": 1}]}, "application/json", ["text 0"]),
        ({"dataframe_split": {"columns": ["text"], "data": [["ok"], [None]]}}, "application/json", ["text 1"]),
        ({"dataframe_records": [{"text": "ok"}, {"text": ["x"]}]}, "application/json", ["text 1"]),
        ("text\nfine\n\n", "text/csv", []),
    ],
    ids=["null", "a number", "an object", "split with null", "records with a list", "csv"],
)
def test_a_text_that_is_not_a_string_is_a_400_naming_its_position(damaged, payload, content_type, words):
    import json

    from starlette.testclient import TestClient

    from bertpooled.serving.server import app_for

    client = TestClient(app_for(str(damaged)))  # the logged model, undamaged here
    body = payload if isinstance(payload, str) else json.dumps(payload)
    answer = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    if content_type == "text/csv":
        assert answer.status_code in (200, 400), answer.text  # a blank CSV line is no row, or a null text
        return
    assert answer.status_code == 400, answer.text
    assert all(w in answer.json()["message"] for w in words), answer.text


def test_a_csv_body_is_held_to_the_same_text_limit_as_json(damaged):
    from starlette.testclient import TestClient

    from bertpooled.serving.server import ServeLimits, app_for

    client = TestClient(app_for(str(damaged), ServeLimits(max_text_chars=50)))
    for body, kind in (
        ("text\n" + "great " * 20 + "\n", "text/csv"),
        ('text\n"' + "great, film " * 10 + '"\n', "text/csv"),
        ('{"inputs": ["' + "great " * 20 + '"]}', "application/json"),
    ):
        answer = client.post("/invocations", content=body, headers={"Content-Type": kind})
        assert answer.status_code == 413 and "over the limit of 50" in answer.text, (kind, answer.text)
    ok = client.post("/invocations", content="text\ngreat film\n", headers={"Content-Type": "text/csv"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("where", ["option", "env"])
@pytest.mark.parametrize("command", ["train", "sweep", "tune", "compare-runs"])
def test_one_experiment_name_check_for_every_command(store, monkeypatch, tiny_bert, tiny_imdb, command, where):
    long = "e" * 10_000
    args = {
        "train": ["train", *tiny_args(tiny_bert, tiny_imdb)],
        "sweep": ["sweep", *tiny_args(tiny_bert, tiny_imdb), "--modes", "basic"],
        "tune": ["tune", *tiny_args(tiny_bert, tiny_imdb), "--space", "lr=1e-3..1e-1", "--trials", "1"],
        "compare-runs": ["compare-runs", "--no-log"],
    }[command]
    if where == "env":
        if command == "compare-runs":
            pytest.skip("compare-runs reads --experiment only (default bertpooled), not MLFLOW_EXPERIMENT_NAME")
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", long)
    else:
        if command == "train":
            pytest.skip("train takes its experiment from MLFLOW_EXPERIMENT_NAME (or mlflow run's)")
        args = [*args, "--experiment", long]
    result = CliRunner().invoke(app, args)
    assert_one_line(result, "too long")


# --- 7. budgets before work: workers against cores, a run's memory against the machine, reviews against a cap ----


@pytest.mark.parametrize("command", ["sweep", "tune"])
def test_more_workers_than_cores_is_one_line_before_any_run(store, tiny_bert, tiny_imdb, command):
    too_many = str((os.cpu_count() or 1) + 1)
    extra = ["--modes", "basic,pool"] if command == "sweep" else ["--space", "lr=1e-3..1e-1", "--trials", "2"]
    result = CliRunner().invoke(app, [command, *tiny_args(tiny_bert, tiny_imdb), *extra, "--parallel", too_many])
    assert_one_line(result, f"--parallel {too_many}", "cores")
    assert not (Path(store.removeprefix("sqlite:///")).exists() and runs_of_store(store))


def runs_of_store(store: str) -> list:
    from conftest import runs_in

    return runs_in(store)


@pytest.mark.parametrize(
    "command, extra, words",
    [
        ("train", ["--lstm-units", "6000"], ["lstm_units=6000"]),
        ("sweep", ["--modes", "basic,pool", "--parallel", "2"], ["2 workers"]),
        ("tune", ["--space", "lstm_units=8|6000", "--trials", "1"], ["lstm_units=6000", "largest trial"]),
    ],
)
def test_a_run_too_large_for_the_machines_memory_is_one_line_with_the_override(
    store, tiny_bert, tiny_imdb, monkeypatch, command, extra, words
):
    from bertpooled import budget

    if command == "sweep" and (os.cpu_count() or 1) < 2:
        pytest.skip("two workers need two cores")
    # As on a machine with 700 MB free: one small run fits, two worker processes or a 6000-unit head do not.
    monkeypatch.setattr(budget, "available_bytes", lambda: 700 * budget.MIB)
    result = CliRunner().invoke(app, [command, *tiny_args(tiny_bert, tiny_imdb), *extra])
    assert_one_line(result, "GiB", budget.OVERRIDE_ENV, *words)
    assert runs_of_store(store) == [] if Path(store.removeprefix("sqlite:///")).exists() else True


def test_the_memory_estimate_grows_with_width_batch_length_and_the_override_skips_it(monkeypatch):
    from types import SimpleNamespace

    from bertpooled import budget
    from bertpooled.errors import BertpooledError

    base = dict(lstm_units=16, batch_size=32, max_len=128, features="embeddings", finetune=False, mode="pool")
    small = budget.run_bytes(SimpleNamespace(**base), 384)
    for field, value in (("lstm_units", 6000), ("batch_size", 4096), ("max_len", 512)):
        assert budget.run_bytes(SimpleNamespace(**{**base, field: value}), 384) > small, field
    wide = SimpleNamespace(**{**base, "lstm_units": 6000})
    assert budget.run_bytes(wide, 384) > 2 * 2**30  # the 3.5 GB model
    monkeypatch.setattr(budget, "available_bytes", lambda: 2**30)
    with pytest.raises(BertpooledError, match="lstm_units=6000"):
        budget.check_memory(wide, 384)
    budget.check_memory(SimpleNamespace(**base), 384)  # the seed's head fits
    monkeypatch.setenv(budget.OVERRIDE_ENV, "1")
    budget.check_memory(wide, 384)


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_a_review_past_the_size_cap_is_refused_before_it_is_read(tmp_path, monkeypatch, layout):
    from conftest import write_imdb_archive, write_imdb_tree

    from bertpooled.data import imdb
    from bertpooled.errors import BertpooledError

    tree = write_imdb_tree(tmp_path / "data", per_label=2)
    (tree / "train" / "pos" / "9_10.txt").write_bytes(b"great " * 200_000)  # 1.2 MB: one "review"
    source = write_imdb_archive(tree, tmp_path / "aclImdb_v1.tar.gz") if layout == "archive" else tree
    reads = []
    real = imdb._add
    monkeypatch.setattr(
        imdb,
        "_add",
        lambda found, s, lab, stem, raw, where: reads.append(len(raw)) or real(found, s, lab, stem, raw, where),
    )
    with pytest.raises(BertpooledError, match=r"9_10\.txt.*over the 1,024 KiB"):
        imdb.load_imdb(str(source), cache_dir=tmp_path / "cache")
    assert max(reads, default=0) <= imdb.MAX_REVIEW_BYTES


# --- 8. every wait has a deadline -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
@pytest.mark.parametrize("command", [["compare-runs", "--no-log"], ["train", "--resume", "0" * 32]])
def test_a_database_port_that_accepts_but_never_answers_is_one_line_within_seconds(
    monkeypatch, tmp_path, kind, command
):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel's backlog; nothing ever answers them
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{kind}://mlflow:pw@127.0.0.1:{silent.getsockname()[1]}/mlflow")
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    start = time.monotonic()
    try:
        result = CliRunner().invoke(app, command)
    finally:
        silent.close()
    assert time.monotonic() - start < 30  # over 300 s before
    line = assert_one_line(result, "accepts connections but does not answer")
    assert "pw" not in line


def test_a_sqlite_store_in_a_folder_that_does_not_exist_is_one_line_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no/such/folder/mlflow.db")
    start = time.monotonic()
    result = CliRunner().invoke(app, ["compare-runs"])
    assert time.monotonic() - start < 20  # MLflow retried for about 100 s
    assert_one_line(result, "does not exist")


@pytest.mark.slow
def test_mlflow_models_serve_refuses_a_damaged_model_with_the_checks_line(damaged):
    from conftest import free_port

    _edit_spec(damaged, max_len=10**8)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(damaged), "--env-manager", "local"]
    proc = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(free_port())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _out, err = proc.communicate(timeout=180)  # it exits: the model never loads, no request is answered
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert b"DamagedModel: model_config.json: max_len=100000000 is out of bounds" in err, err[-3000:]
