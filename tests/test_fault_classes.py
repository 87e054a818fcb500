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
