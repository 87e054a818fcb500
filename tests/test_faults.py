"""Faults found by trying the service as an attacker would (issue 15): secrets, caches, bad input, provenance,
resume side effects, bad servers. Everything on 127.0.0.1, bounded in time, cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import (
    free_port,
    killed_run_with_a_checkpoint,
    one_error_line,
    runs_in,
    sweep_args,
    two_children_training,
    wait_for_http,
)
from conftest import (
    invoke_train as invoke,
)
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app

#: The options of test_resume.py's interrupted run.
RESUMABLE = ("--max-train-examples", "0", "--seed", "1")
SECRET = "s3cret-pw"


@pytest.fixture()
def no_auth_env(monkeypatch):
    """MLflow's basic-auth variables start unset and are restored afterwards (the code under test sets them)."""
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a SQLite store with served artifacts, on loopback; its URI."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - the server's log for its lifetime, closed in the finally below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        wait_for_http(
            f"http://127.0.0.1:{port}/health",
            proc,
            120,
            lambda: (folder / "server.log").read_text(errors="replace")[-2000:],
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


# --- 1. credentials ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_never_reaches_the_terminal_or_the_run(
    mlflow_server, no_auth_env, tiny_bert, tiny_imdb, tmp_path, monkeypatch
):
    with_password = mlflow_server.replace("http://", f"http://alice:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"secrets-{tmp_path.name}")
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert result.exit_code == 0, result.output
    assert "View run" in result.output  # MLflow's own line is there, without the password
    report = CliRunner().invoke(
        app,
        [
            "compare-runs",
            "--experiment",
            f"secrets-{tmp_path.name}",
            "--tracking-uri",
            with_password,
            "--format",
            "json",
        ],
    )
    assert report.exit_code in (0, 2), report.output
    for output in (result.output, report.output):
        assert SECRET not in output and "alice:" not in output
    (run, *_) = [r for r in runs_in(mlflow_server) if r.data.tags.get("bertpooled.kind") == "train"]
    logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert SECRET not in logged


def test_a_data_uri_with_credentials_is_not_echoed_in_the_error(store, tiny_bert):
    result = invoke("--model", str(tiny_bert), "--data", f"https://alice:{SECRET}@127.0.0.1:9/aclImdb_v1.tar.gz")
    one_error_line(result, "127.0.0.1:9/aclImdb_v1.tar.gz")
    assert SECRET not in result.output and "alice" not in result.output


def test_uri_credentials_move_into_mlflows_basic_auth_variables(no_auth_env, monkeypatch):
    from bertpooled.tracking.runs import move_uri_credentials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:p%40ss@mlflow.example.org:8443/")
    move_uri_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org:8443/"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "p@ss")
    assert move_uri_credentials("postgresql://u:p@db/mlflow") == "postgresql://u:p@db/mlflow"  # the driver needs them


# --- 3. caches ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert):
    from bertpooled.model import backbone

    return backbone.load_tokenizer(backbone.inspect(str(tiny_bert)))


TEXTS = ["a great film", "dull and boring plot", "the actor was superb"]


def _entry(tmp_path, tokenizer):
    from bertpooled.data import tokens

    want, hit = tokens.load_or_tokenize(tokenizer, TEXTS, 8, key="k", cache_dir=tmp_path, progress=False)
    assert not hit
    return want, tmp_path / "tokens" / "k.npz"


def _bit_flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _wrong_arrays(path: Path) -> None:
    import numpy as np

    with np.load(path) as data:
        ids, lengths, sha = data["ids"].copy(), data["lengths"], data["sha256"]
    ids[0, 1] += 1  # a readable, well-formed entry whose ids are not the tokenizer's
    np.savez(path, ids=ids, lengths=lengths, sha256=sha)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        _bit_flip,
        _wrong_arrays,
    ],
    ids=["truncated", "bit-flip", "wrong-arrays"],
)
def test_a_damaged_token_cache_entry_is_rebuilt_with_one_warning(tmp_path, tiny_tokenizer, damage, capsys):
    import numpy as np

    from bertpooled.data import tokens

    want, path = _entry(tmp_path, tiny_tokenizer)
    damage(path)
    capsys.readouterr()
    got, hit = tokens.load_or_tokenize(tiny_tokenizer, TEXTS, 8, key="k", cache_dir=tmp_path, progress=False)
    assert not hit and np.array_equal(got.ids, want.ids) and np.array_equal(got.lengths, want.lengths)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: token cache entry") and "k.npz" in warning[0]
    again, hit = tokens.load_or_tokenize(tiny_tokenizer, TEXTS, 8, key="k", cache_dir=tmp_path, progress=False)
    assert hit and np.array_equal(again.ids, want.ids)  # the rebuilt entry replaced the bad one


def test_an_unwritable_token_cache_means_running_without_it(tmp_path, tiny_tokenizer, capsys):
    from bertpooled.data import tokens

    # A file where the cache folder should be: unwritable even for root (a read-only mount acts the same).
    (tmp_path / "tokens").write_text("")
    got, hit = tokens.load_or_tokenize(tiny_tokenizer, TEXTS, 8, key="k", cache_dir=tmp_path, progress=False)
    assert not hit and len(got) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "running without it" in err[0]


def test_a_full_token_cache_leaves_no_temporary_file(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    import numpy as np

    from bertpooled.data import tokens

    real = np.savez

    def disk_full(file, **arrays):
        real(file, **arrays)  # the file is there, half-written as far as the reader knows
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    got, hit = tokens.load_or_tokenize(tiny_tokenizer, TEXTS, 8, key="k", cache_dir=tmp_path, progress=False)
    assert not hit and len(got) == 3
    assert "No space left on device" in capsys.readouterr().err
    assert list((tmp_path / "tokens").iterdir()) == []


def test_an_altered_parsed_archive_cache_is_not_used_under_the_original_digest(tmp_path, monkeypatch, capsys):
    from conftest import write_imdb_archive, write_imdb_tree

    import bertpooled.data.imdb

    monkeypatch.setattr(bertpooled.data.imdb, "_PARSED_MIN_BYTES", 0)  # tiny archives are cached too
    archive = write_imdb_archive(write_imdb_tree(tmp_path, per_label=3), tmp_path / "aclImdb_v1.tar.gz")
    want = bertpooled.data.imdb.load_imdb(str(archive), cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "parsed").glob("imdb-*.bin")
    head, blob = entry.read_bytes().split(b"\n", 1)
    entry.write_bytes(head + b"\n" + blob.replace(b"the", b"awf", 1))  # same sizes, other text
    capsys.readouterr()
    got = bertpooled.data.imdb.load_imdb(str(archive), cache_dir=tmp_path / "cache")
    assert got.digest == want.digest and got.train.texts == want.train.texts
    assert "parsed IMDB cache" in capsys.readouterr().err


# --- 7. bad input that created a run or a traceback --------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", "4294967296"], ["seed=4294967296", "4294967295"]),
        (["--set", "data_seed=4294967296"], ["data_seed=4294967296"]),
        (["--max-train-examples", "1"], ["1 positive and 0 negative", "max_train_examples"]),
        (["--train-fraction", "0.01"], ["0 positive and 0 negative", "train_fraction"]),
        (["--set", "epochs=@3"], ["epochs='@3'", "integer"]),
        (["--set", "lr=[1"], ["lr='[1'", "number"]),
        (["--mode", "basic", "--pool", "avg:3x3"], ["pool='avg:3x3'", "mode=pool"]),
        (["--mode", "pool", "--pool", "none"], ["pool='none'", "mode=basic"]),
        (["--set", "description=" + "x" * 6001], ["description=", "6001 characters", "at most 6000"]),
    ],
)
def test_bad_input_found_inside_the_run_now_fails_before_any_run(store, tiny_bert, tiny_imdb, args, words):
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), *args)
    one_error_line(result, *words)
    assert runs_in(store) == []


def test_a_config_file_that_is_not_utf8_is_one_line(store, tiny_bert, tiny_imdb, tmp_path):
    bad = tmp_path / "latin.yaml"
    bad.write_bytes("description: caf\xe9\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["train", "--config", str(bad), "--model", str(tiny_bert)])
    one_error_line(result, "latin.yaml", "UTF-8")
    assert runs_in(store) == []


def test_a_damaged_mlflow_db_is_one_line_before_any_work(tiny_bert, tiny_imdb, tmp_path, monkeypatch):
    good = tmp_path / "good.db"
    client = MlflowClient(f"sqlite:///{good}")
    client.create_run(client.create_experiment("x"))
    half = tmp_path / "mlflow.db"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{half}")
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        "bertpooled.run.prepare.read_data", lambda *a, **k: pytest.fail("data read with a broken store")
    )
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    one_error_line(result, "mlflow.db", "malformed", "backup")
    assert len(result.output.splitlines()) == 1


def test_a_store_that_fails_mid_run_is_one_line_not_pages(store, tiny_bert, tiny_imdb, monkeypatch):
    import sqlite3

    from bertpooled.tracking import runs as tracking

    def full(*args, **kwargs):
        raise mlflow.exceptions.MlflowException(
            "(sqlite3.OperationalError) database or disk is full"
        ) from sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(tracking, "log_predictions", full)
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    one_error_line(result, "disk is full", "--resume")
    (run,) = runs_in(store)
    assert run.info.status == "FAILED"  # not left RUNNING


def test_a_run_the_store_will_not_let_end_is_one_warning_naming_the_command_that_ends_it(store, monkeypatch, capsys):
    """Both the status write and the fresh client's final try fail: the run stays RUNNING, and the user is told
    which run and how to end it, instead of nothing."""
    from mlflow.tracking import MlflowClient

    from bertpooled.tracking import runs as tracking

    run = mlflow.start_run(experiment_id=MlflowClient(store).create_experiment("end"))

    def locked(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(mlflow, "set_tag", locked)
    monkeypatch.setattr(MlflowClient, "set_terminated", locked)
    tracking.end_run(run.info.run_id, "KILLED", "interrupted")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "INFO mlflow" not in line]
    assert run.info.run_id in line and "database is locked" in line and "runs end-abandoned" in line
    assert MlflowClient(store).get_run(run.info.run_id).info.status == "RUNNING"


# --- 5. Ctrl-C before the first checkpoint ---------------------------------------------------------------------


def test_ctrl_c_before_the_first_checkpoint_offers_no_resume_that_would_be_refused(
    store, tiny_bert, tiny_imdb, monkeypatch
):
    from bertpooled.data import tokens

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens, "tokenize", interrupted)
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert result.exit_code == 130
    assert "--resume" not in result.output and "start it again" in result.output
    (run,) = runs_in(store)
    assert run.info.status == "KILLED"


# --- 6. bounded waits on a bad server --------------------------------------------------------------------------


def test_a_server_whose_api_hangs_is_one_line_within_seconds(
    hanging_server, tiny_bert, tiny_imdb, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", hanging_server)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert time.perf_counter() - start < 20
    one_error_line(result, "answers /health but its API does not answer")
    assert "KILLED" not in result.output


def test_an_unreachable_postgresql_uri_is_one_line_within_seconds(tiny_bert, tiny_imdb, tmp_path, monkeypatch):
    closed = socket.socket()  # bound, never listening: connections to its port are refused while the test runs
    closed.bind(("127.0.0.1", 0))
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", f"postgresql://mlflow:{SECRET}@127.0.0.1:{closed.getsockname()[1]}/mlflow"
    )
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert time.perf_counter() - start < 20
    one_error_line(result, "tracking database", "unreachable")
    assert len(result.output.splitlines()) == 1 and SECRET not in result.output
    closed.close()


# --- 4. provenance ----------------------------------------------------------------------------------------------


def test_the_logged_commit_is_the_codes_not_the_current_folders(tmp_path, monkeypatch):
    import bertpooled
    from bertpooled.tracking import provenance as tracking

    other = tmp_path / "elsewhere"
    other.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(other)]
    subprocess.run([*git, "init", "-q"], check=True)
    (other / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "other"], check=True)
    monkeypatch.chdir(other)
    code = subprocess.run(
        ["git", "-C", str(Path(bertpooled.__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    other_commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit, _ = tracking.git_commit()
    assert commit != other_commit and commit == (code or "unknown")
    assert tracking.code_provenance()["code/version"]  # the installed package's version


def test_resuming_with_other_code_is_refused_unless_allowed_and_then_recorded(store, tiny_bert, tiny_imdb, monkeypatch):
    from bertpooled.tracking import provenance

    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, *RESUMABLE)
    logged = provenance.logged_code(run_id)
    assert {"git/commit", "git/dirty", "code/version"} <= set(logged)
    changed = {**logged, "git/commit": "f" * 40}
    monkeypatch.setattr(provenance, "code_provenance", lambda: changed)
    refused = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    one_error_line(refused, "other code", "--allow-code-change", "f" * 40)
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"  # left as it was
    allowed = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb), "--allow-code-change"])
    assert allowed.exit_code == 0, allowed.output
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and "f" * 40 in run.data.tags["resume/code_change"]


# --- 5. resume side effects ------------------------------------------------------------------------------------


def test_a_resume_after_the_last_epoch_clears_the_error_tag_fails_orphan_models_and_times_every_epoch(
    store, tiny_bert, tiny_imdb, monkeypatch
):
    from mlflow.entities import LoggedModelStatus

    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, *RESUMABLE)
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.data.tags["error"]
    # What a process killed inside mlflow.pyfunc.log_model leaves: a logged model that stays PENDING.
    orphan = client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id)
    epoch_s = [m.value for m in client.get_metric_history(run_id, "time/epoch_s")]
    result = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert result.exit_code == 0, result.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert client.get_logged_model(orphan.model_id).status == LoggedModelStatus.FAILED
    # Both epochs were trained before the kill; the resumed run's training time is theirs, not ~0 s.
    assert run.data.metrics["time/train_s"] >= sum(epoch_s) * 0.99
    n = run.data.metrics["data/train_examples"] * 2
    assert run.data.metrics["throughput/train_examples_per_s"] <= n / sum(epoch_s) * 1.01


def test_a_second_resume_of_a_run_being_resumed_is_one_line(store, tiny_bert, tiny_imdb, monkeypatch):
    from bertpooled.run.resume import claim_run

    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, *RESUMABLE)
    first = claim_run(run_id)  # another resume of it holds the run
    try:
        second = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    finally:
        first.close()
    one_error_line(second, "being resumed by another process")
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"
    third = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert third.exit_code == 0, third.output  # once the first is gone, a resume goes ahead


# --- 2. a parallel sweep stops -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("target", ["parent", "group"])
def test_a_stopped_parallel_sweep_starts_nothing_new_and_its_resume_continues_the_killed_children(
    store, tiny_bert, bigger_imdb, target
):
    client = MlflowClient(store)
    proc = subprocess.Popen(
        sweep_args(tiny_bert, bigger_imdb),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        started = two_children_training(client, proc, 240)
        if target == "parent":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    exp = client.get_experiment_by_name("bertpooled")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`bertpooled.kind` = 'sweep'")
    assert parent.info.status == "KILLED"
    children = client.search_runs([exp.experiment_id], "tags.`sweep/child` != ''")
    # Nothing started after the stop; every child it had started ended KILLED with a checkpoint.
    assert {c.info.run_id for c in children} == {r.info.run_id for r in started}, err[-3000:]
    assert all(c.info.status == "KILLED" and "checkpoint/epoch" in c.data.tags for c in children), err[-3000:]
    if target == "group":
        return  # the same state as the parent case leaves, whose resume (4 children x 150 epochs) is tested there

    resumed = subprocess.run(
        sweep_args(tiny_bert, bigger_imdb, "--resume-parent", parent.info.run_id),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    children = client.search_runs([exp.experiment_id], "tags.`sweep/child` != ''")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {r.info.run_id for r in started} <= {c.info.run_id for c in children}  # continued, not run again


# --- 8. the served model ---------------------------------------------------------------------------------------


def test_json_nested_too_deeply_is_told_apart_from_json_that_is_merely_deep():
    from bertpooled.serving.server import _json_problem

    assert "nested too deeply" in _json_problem(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert "nested too deeply" not in _json_problem(b'{"inputs": [[["a film"]]]}')
    assert not _json_problem(b'{"inputs": [')  # malformed, not deep: MLflow's own parser answers it


def test_the_served_model_answers_deeply_nested_json_with_a_400_and_still_serves(store, tiny_bert, tiny_imdb):
    import json
    import urllib.error
    import urllib.request

    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--epochs", "1")
    assert result.exit_code == 0, result.output
    (run,) = runs_in(store)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bertpooled", "serve", f"runs:/{run.info.run_id}/model", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def post(body: bytes):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, 120)
        status, answer = post(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert status == 400 and "nested too deeply" in answer["message"]
        status, answer = post(json.dumps({"inputs": ["a wonderful film"]}).encode())
        assert status == 200 and len(answer["predictions"]) == 1
        assert post(b'{"inputs": []}') == (200, {"predictions": []})
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in server.stderr.read()
