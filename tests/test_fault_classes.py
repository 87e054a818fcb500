"""Faults by class (issue 25): each class is handled where it enters, and each test tries several members of
the class, the reported example among them. Everything tiny, on 127.0.0.1, bounded in time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.cli_errors import OneLineErrors

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")
LONG = "a" * 5000


def assert_one_line(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert len(errors[0]) < 400, errors[0]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def no_runs(uri: str) -> bool:
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return not (client.search_runs(exps) if exps else [])


# --- 1. any OS error on a user-given path is one line: path, reason, fix ------------------------------------


@pytest.mark.parametrize("option", ["--config", "--data", "--model"])
def test_a_path_too_long_for_the_system_is_one_line_whichever_option_gives_it(store, tiny_bert, tiny_imdb, option):
    given = {"--config": SMOKE, "--data": str(tiny_imdb), "--model": str(tiny_bert), option: LONG}
    args = [x for pair in given.items() for x in pair]
    result = CliRunner().invoke(app, ["train", *args, "--max-len", "16", "--epochs", "1"])
    line = assert_one_line(result, "File name too long", "5,000 characters")
    assert LONG not in line
    assert no_runs(store)


def test_a_symlink_loop_in_the_data_folder_is_one_line(store, tiny_bert, tmp_path):
    from conftest import write_imdb_tree

    tree = write_imdb_tree(tmp_path / "loop")
    (tree / "train" / "pos" / "0_9x.txt").symlink_to("0_9x.txt")  # points at itself
    result = CliRunner().invoke(app, ["train", "--config", SMOKE, "--model", str(tiny_bert), "--data", str(tree),
                                      "--max-len", "16", "--epochs", "1"])
    assert_one_line(result, "0_9x.txt", "symbolic links")
    assert no_runs(store)


@pytest.mark.parametrize("code, word", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "disk is full"),
                                        (errno.EROFS, "read-only"), (errno.ENXIO, "device")])
def test_every_command_turns_an_os_error_on_a_path_into_one_line_and_a_bug_keeps_its_traceback(code, word):
    probe = typer.Typer(cls=OneLineErrors)

    @probe.command()
    def touch(path: str, bug: bool = False) -> None:
        if bug:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # no path: nothing the user gave, so a bug
        raise OSError(code, os.strerror(code), path)

    @probe.command()
    def other() -> None:  # a second command: typer makes a group, whose invoke is the boundary
        pass

    result = CliRunner().invoke(probe, ["touch", "/some/where"])
    assert_one_line(result, "/some/where", word)
    bug = CliRunner().invoke(probe, ["touch", "/some/where", "--bug"])
    assert bug.exit_code == 1 and isinstance(bug.exception, OSError)


@pytest.mark.parametrize("target", ["file", "device"])
def test_compare_runs_output_onto_a_file_or_a_device_is_one_line_before_any_run_is_read(store, tmp_path, target):
    path = tmp_path / "report.md" if target == "file" else Path("/dev/null")
    if target == "file":
        path.write_text("keep me")
    result = CliRunner().invoke(app, ["compare-runs", "--output", str(path)])
    assert_one_line(result, "not a folder")
    if target == "file":
        assert path.read_text() == "keep me"


# --- 2. sizes and depths checked before work starts -----------------------------------------------------------


def _bomb(levels: int, width: int = 9, key: str = "description") -> str:
    lines = [f"x0: &x0 [{', '.join(['lol'] * width)}]"]
    lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"{key}: *x{levels - 1}"]) + "\n"


@pytest.mark.parametrize("text, words", [
    (_bomb(10), ["more than 32 YAML aliases"]),  # the reported 700-byte bomb: 3.7 GB before
    ("description: &d [lol, lol, lol]\nmodel: *d\n", ["description is a list"]),  # no list is a setting
    ("epochs: " + "[" * 30 + "1" + "]" * 30 + "\n", ["nested more than 20 deep"]),
    ("description: " + "x" * 300_000 + "\n", ["over 256 KiB"]),
])
def test_a_config_file_sized_to_hurt_is_one_line_before_yaml_builds_it(store, tmp_path, text, words):
    path = tmp_path / "hurt.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert_one_line(result, *words)
    assert no_runs(store)


def test_a_set_value_sized_to_hurt_is_one_line_and_a_plain_anchor_still_works(store, tmp_path):
    from bertpooled.config import load_config

    result = CliRunner().invoke(app, ["train", "--set", "epochs=" + "[" * 30 + "1" + "]" * 30])
    assert_one_line(result, "nested more than 20 deep")
    path = tmp_path / "anchor.yaml"
    path.write_text("seed: &s 3\ndata_seed: *s\n")
    assert load_config(path).data_seed == 3


@pytest.mark.parametrize("where", ["env", "sweep"])
def test_an_experiment_name_past_mlflows_limit_is_one_line_before_the_data_is_read(store, monkeypatch, tmp_path, where):
    missing = str(tmp_path / "no-such-imdb.tar.gz")  # were the data read first, its error would come first
    if where == "env":
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "e" * 10_000)
        result = CliRunner().invoke(app, ["train", "--config", SMOKE, "--data", missing])
        words = ["MLFLOW_EXPERIMENT_NAME", "too long"]
    else:
        result = CliRunner().invoke(app, ["sweep", "--config", SMOKE, "--data", missing, "--experiment", "e" * 10_000])
        words = ["--experiment", "too long"]
    assert_one_line(result, *words)
    assert no_runs(store)


@pytest.mark.parametrize("args, words", [
    (["--seeds", "100000"], ["100,000", "1,000 children"]),  # silent for 60 s before
    (["--seeds", "600", "--modes", "basic,pool"], ["1,200 children"]),
    (["--seed-list", ",".join(str(10**12 + i) for i in range(700))], ["do not fit"]),
])
def test_a_sweep_grid_larger_than_a_parent_run_holds_is_one_line_at_once(store, args, words):
    result = CliRunner().invoke(app, ["sweep", "--config", SMOKE, *args])
    assert_one_line(result, *words)
    assert no_runs(store)


# --- 3. the tracking store: probed first by every command, its failures one truthful line --------------------


def _half_db(tmp_path: Path) -> str:
    good = tmp_path / "good.db"
    client = MlflowClient(f"sqlite:///{good}")
    client.create_run(client.create_experiment("bertpooled"))
    half = tmp_path / "mlflow.db"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return f"sqlite:///{half}"


def _closed_postgres() -> tuple[str, object]:
    import socket

    closed = socket.socket()  # bound, never listening: connections to its port are refused
    closed.bind(("127.0.0.1", 0))
    return f"postgresql://mlflow:pw@127.0.0.1:{closed.getsockname()[1]}/mlflow", closed


@pytest.mark.parametrize("store_kind", ["half-truncated sqlite", "unreachable postgresql"])
@pytest.mark.parametrize("command", [
    ["compare-runs"],
    ["train", "--resume", "0123456789abcdef0123456789abcdef"],
    ["sweep", "--resume-parent", "0123456789abcdef0123456789abcdef", "--config", SMOKE],
    ["serve", "runs:/0123456789abcdef0123456789abcdef/model"],
])
def test_every_command_that_touches_the_store_probes_it_first_and_says_so_in_one_line(
    tmp_path, monkeypatch, store_kind, command
):
    import time

    closed = None
    if store_kind == "half-truncated sqlite":
        uri, words = _half_db(tmp_path), ["mlflow.db", "malformed", "backup"]
    else:
        (uri, closed), words = _closed_postgres(), ["tracking database", "unreachable"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    result = CliRunner().invoke(app, command)
    elapsed = time.perf_counter() - start
    if closed is not None:
        closed.close()
    assert_one_line(result, *words)
    assert len(result.output.splitlines()) == 1, result.output
    assert elapsed < 60  # the probe waits 5 s; MLflow's own retries took 109 s and 222 lines


@pytest.mark.parametrize("message, fix", [
    ("table _alembic_tmp_experiments already exists", "another process"),
    ("duplicate column name: step", "another process"),
    ("attempt to write a readonly database", "read-only"),
    ("database or disk is full", "disk is full"),
    ("file is not a database", "backup"),
    ("database is locked", "locked by a process"),
])
def test_a_store_failure_names_the_fix_that_fits_its_cause_and_no_other(message, fix):
    import sqlite3

    from bertpooled.tracking.probe import store_error

    try:
        try:
            raise sqlite3.OperationalError(message)
        except sqlite3.OperationalError as cause:
            raise RuntimeError("wrapped") from cause
    except RuntimeError as exc:
        line = str(store_error("sqlite:///x/mlflow.db", exc))
    assert message in line and fix in line
    others = {"another process", "read-only", "disk is full", "backup", "locked by a process"} - {fix}
    if fix != "another process":  # a cut-short migration may need the backup too
        assert not any(other in line for other in others), line


def test_mlflows_own_log_lines_keep_their_first_line_and_lose_their_traceback():
    import logging

    import mlflow  # noqa: F401 - configures MLflow's logging handler

    from bertpooled.tracking.probe import keep_tracebacks_out

    keep_tracebacks_out()
    keep_tracebacks_out()  # idempotent: one filter per handler
    handlers = logging.getLogger("mlflow").handlers
    assert handlers and all(len([f for f in h.filters if type(f).__name__ == "_FirstLineOnly"]) == 1 for h in handlers)
    handler = handlers[0]
    try:
        raise ValueError("deep inside SQLAlchemy")
    except ValueError:
        import sys

        record = logging.LogRecord("mlflow.store.db.utils", logging.ERROR, __file__, 1,
                                   "SQLAlchemy database error.\n%s", ("many\nlines",), sys.exc_info())
    assert handler.filter(record)
    assert record.exc_info is None and handler.format(record).count("\n") == 0


FIRST_CONTACT = """
import sys
from bertpooled.tracking.probe import check_tracking_reachable
from mlflow.tracking import MlflowClient
check_tracking_reachable(sys.argv[1])
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("race") or client.get_experiment(client.create_experiment("race"))
""".strip()


@pytest.mark.slow
def test_processes_meeting_a_new_sqlite_store_at_once_all_get_it_made_once(tmp_path):
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_CONTACT, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for _ in range(4)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    # Without the lock, 6 of 6 failed here (table _alembic_tmp_... already exists, duplicate column name).
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments() if e.name == "race"] == ["race"]
    (tmp_path / "later").mkdir()
    assert client.create_run(client.get_experiment_by_name("race").experiment_id).info.status == "RUNNING"
