"""Faults by class (issue 25): each class is handled where it enters, and each test tries several members of
the class, the reported example among them. Everything tiny, on 127.0.0.1, bounded in time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import typer
from conftest import ROOT, SMOKE, beating_owner, invoke_tiny, killed_run_with_a_checkpoint, one_error_line, runs_in
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.cli.errors import OneLineErrors

LONG = "a" * 5000


def assert_one_line(result, *words: str) -> str:
    line = one_error_line(result, *words)
    assert len(line) < 400, line
    return line


# --- 1. any OS error on a user-given path is one line: path, reason, fix ------------------------------------


@pytest.mark.parametrize("option", ["--config", "--data", "--model"])
def test_a_path_too_long_for_the_system_is_one_line_whichever_option_gives_it(store, tiny_bert, tiny_imdb, option):
    given = {"--config": SMOKE, "--data": str(tiny_imdb), "--model": str(tiny_bert), option: LONG}
    args = [x for pair in given.items() for x in pair]
    result = CliRunner().invoke(app, ["train", *args, "--max-len", "16", "--epochs", "1"])
    line = assert_one_line(result, "File name too long", "5,000 characters")
    assert LONG not in line
    assert runs_in(store) == []


def test_a_symlink_loop_in_the_data_folder_is_one_line(store, tiny_bert, tmp_path):
    from conftest import write_imdb_tree

    tree = write_imdb_tree(tmp_path / "loop")
    (tree / "train" / "pos" / "0_9x.txt").symlink_to("0_9x.txt")  # points at itself
    result = invoke_tiny("train", tiny_bert, tree, "--epochs", "1")
    assert_one_line(result, "0_9x.txt", "symbolic links")
    assert runs_in(store) == []


@pytest.mark.parametrize(
    "code, word",
    [
        (errno.EACCES, "Permission denied"),
        (errno.ENOSPC, "disk is full"),
        (errno.EROFS, "read-only"),
        (errno.ENXIO, "device"),
    ],
)
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


@pytest.mark.parametrize(
    "text, words",
    [
        (_bomb(10), ["more than 32 YAML aliases"]),  # the reported 700-byte bomb: 3.7 GB before
        ("description: &d [lol, lol, lol]\nmodel: *d\n", ["description is a list"]),  # no list is a setting
        ("epochs: " + "[" * 30 + "1" + "]" * 30 + "\n", ["nested more than 20 deep"]),
        ("description: " + "x" * 300_000 + "\n", ["over 256 KiB"]),
    ],
)
def test_a_config_file_sized_to_hurt_is_one_line_before_yaml_builds_it(store, tmp_path, text, words):
    path = tmp_path / "hurt.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert_one_line(result, *words)
    assert runs_in(store) == []


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
    assert runs_in(store) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seeds", "100000"], ["100,000", "1,000 children"]),  # silent for 60 s before
        (["--seeds", "600", "--modes", "basic,pool"], ["1,200 children"]),
        (["--seed-list", ",".join(str(10**12 + i) for i in range(700))], ["do not fit"]),
    ],
)
def test_a_sweep_grid_larger_than_a_parent_run_holds_is_one_line_at_once(store, args, words):
    result = CliRunner().invoke(app, ["sweep", "--config", SMOKE, *args])
    assert_one_line(result, *words)
    assert runs_in(store) == []


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
@pytest.mark.parametrize(
    "command",
    [
        ["compare-runs"],
        ["train", "--resume", "0123456789abcdef0123456789abcdef"],
        ["sweep", "--resume-parent", "0123456789abcdef0123456789abcdef", "--config", SMOKE],
        ["serve", "runs:/0123456789abcdef0123456789abcdef/model"],
    ],
)
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


@pytest.mark.parametrize(
    "message, fix",
    [
        ("table _alembic_tmp_experiments already exists", "another process"),
        ("duplicate column name: step", "another process"),
        ("attempt to write a readonly database", "read-only"),
        ("database or disk is full", "disk is full"),
        ("file is not a database", "backup"),
        ("database is locked", "locked by a process"),
    ],
)
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

    import mlflow  # noqa: F401 - importing it sets up the 'mlflow' logger's handlers

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

        record = logging.LogRecord(
            "mlflow.store.db.utils",
            logging.ERROR,
            __file__,
            1,
            "SQLAlchemy database error.\n%s",
            ("many\nlines",),
            sys.exc_info(),
        )
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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_CONTACT, uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    # Without the lock, 6 of 6 failed here (table _alembic_tmp_... already exists, duplicate column name).
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments() if e.name == "race"] == ["race"]
    (tmp_path / "later").mkdir()
    assert client.create_run(client.get_experiment_by_name("race").experiment_id).info.status == "RUNNING"


# --- 4. the scoring server: bounded bodies and texts, predictions in fixed-size batches ------------------------


def _asgi_post(app, chunks: list[bytes], headers: list | None = None) -> tuple[int, dict, bool]:
    """POST `chunks` to /invocations of an ASGI app; (status, JSON answer, whether the inner app was reached)."""
    import asyncio
    import json

    async def go():
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers or []}
        await app(scope, receive, send)
        return sent

    sent = asyncio.run(go())
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body), status == 299


async def _echo_app(scope, receive, send):
    """Stands in for MLflow's app: answers 299 with the body it received."""
    import json

    message = await receive()
    data = json.dumps({"received": len(message["body"])}).encode()
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": data})


@pytest.mark.parametrize("case", ["declared", "streamed", "one long text", "a long text deep inside"])
def test_a_request_over_the_servers_limits_gets_a_413_and_is_not_kept(case):
    import json

    from bertpooled.serving.server import Limits, ServeLimits

    app = Limits(_echo_app, ServeLimits(max_body_mb=1, max_text_chars=1000))
    if case == "declared":  # Content-Length says it up front: answered without reading on
        status, answer, reached = _asgi_post(app, [b"{}"], [(b"content-length", str(50 * 2**20).encode())])
    elif case == "streamed":  # no length given: counted as it arrives, 50 chunks of 64 KiB
        status, answer, reached = _asgi_post(app, [b"x" * 65536] * 50)
    elif case == "one long text":
        status, answer, reached = _asgi_post(app, [json.dumps({"inputs": ["a" * 5000]}).encode()])
    else:
        body = {"dataframe_split": {"columns": ["text"], "data": [["short"]] * 200 + [["b" * 1001]]}}
        status, answer, reached = _asgi_post(app, [json.dumps(body).encode()])
    assert status == 413 and not reached, answer
    assert ("MB" in answer["message"]) if case in ("declared", "streamed") else ("characters" in answer["message"])
    # Within the limits, the body reaches the app whole (chunks joined, a text exactly at the limit).
    ok = [json.dumps({"inputs": ["a" * 1000]}).encode()[:7], json.dumps({"inputs": ["a" * 1000]}).encode()[7:]]
    status, answer, reached = _asgi_post(app, ok)
    assert reached and answer["received"] == len(b"".join(ok))


class _Recording:
    """A pyfunc-like model that records the sizes it was asked to predict."""

    metadata = "the wrapped model's"

    def __init__(self, kind: str) -> None:
        self.kind, self.sizes = kind, []

    def predict(self, data, params=None):
        import numpy as np
        import pandas as pd

        self.sizes.append(len(data))
        values = [float(len(str(x))) for x in (data["text"] if hasattr(data, "iloc") else data)]
        if self.kind == "frame":
            return pd.DataFrame({"probability": values})
        return np.array(values) if self.kind == "array" else values


@pytest.mark.parametrize("kind", ["frame", "array", "list"])
@pytest.mark.parametrize("n", [0, 3, 10, 11])
def test_a_large_request_is_predicted_in_fixed_size_batches_with_the_same_answer(kind, n):
    import numpy as np
    import pandas as pd

    from bertpooled.serving.server import InBatches

    texts = [f"text {'x' * i}" for i in range(n)]
    data = pd.DataFrame({"text": texts}) if kind == "frame" else texts
    whole, batched = _Recording(kind), InBatches(_Recording(kind), batch_size=3)
    expected, got = whole.predict(data), batched.predict(data)
    assert batched.metadata == "the wrapped model's"
    assert max(batched._model.sizes, default=0) <= 3
    assert sum(batched._model.sizes) == n
    if kind == "frame":
        pd.testing.assert_frame_equal(got, expected)
    else:
        assert list(np.asarray(got)) == list(np.asarray(expected))


def test_a_request_past_the_timeout_stops_at_its_next_batch():
    from bertpooled.serving.server import InBatches, RequestTimedOut

    model = _Recording("list")
    batched = InBatches(model, batch_size=2, timeout_s=1e-9)
    with pytest.raises(RequestTimedOut):
        batched.predict([str(i) for i in range(100)])
    assert len(model.sizes) <= 1  # not 50 batches on for a client that already had its 504


def test_small_requests_are_answered_between_the_batches_of_a_large_one():
    import threading

    from bertpooled.serving.server import InBatches

    order, first_batch, release = [], threading.Event(), threading.Event()

    class Slow:
        metadata = None

        def predict(self, data, params=None):
            if len(data) == 1:
                order.append("small")
            else:
                order.append("large batch")
                first_batch.set()
                release.wait(10)
            return list(data)

    batched = InBatches(Slow(), batch_size=2)
    large = threading.Thread(target=batched.predict, args=([str(i) for i in range(8)],))
    large.start()
    assert first_batch.wait(10)
    small = threading.Thread(target=batched.predict, args=(["one"],))
    small.start()
    for _ in range(1000):  # until the small request waits for its turn (bounded: 10 s)
        if batched._lock.waiting:
            break
        threading.Event().wait(0.01)
    release.set()
    large.join(10)
    small.join(10)
    # The small request ran before the large one's last batch, not after all four of them.
    assert order.index("small") < len(order) - 1, order


# --- 5. sweep workers die with their parent ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_parallel_sweep_takes_its_workers_with_it_and_its_runs_are_marked(store, tiny_bert, bigger_imdb):
    import signal
    import subprocess

    import psutil
    from conftest import sweep_args, two_children_training, wait_until

    client = MlflowClient(store)
    proc = subprocess.Popen(
        sweep_args(tiny_bert, bigger_imdb),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers = []
    try:
        started = two_children_training(client, proc, 300)
        # Known by their relation to the sweep's pid, not by words in their command line (a checkout's path can
        # hold any word): every process under it, its spawned workers and multiprocessing's resource tracker,
        # must go with it.
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _gone, alive = psutil.wait_procs(workers, timeout=120)
        assert alive == [], [p.cmdline() for p in alive]  # they stayed under PID 1 for good before
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in workers:
            if p.is_running():
                p.kill()
    exp = client.get_experiment_by_name("bertpooled")

    def ended() -> list | None:  # the workers mark the runs on their way out: read them once none is RUNNING
        runs = client.search_runs([exp.experiment_id])
        return None if any(r.info.status == "RUNNING" for r in runs) else runs

    def left_running() -> str:  # what a failure shows: the runs left RUNNING and what the sweep and workers said
        running = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]
        said = proc.stderr.read() if proc.stderr else ""
        return f"{[(r.info.run_name, r.data.tags.get('error', '')) for r in running]}; stderr ends: {said[-3000:]}"

    if not wait_until(ended, 60, "", fail=False):
        pytest.fail(f"the sweep's runs still RUNNING 60 s after its workers exited: {left_running()}")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`bertpooled.kind` = 'sweep'")
    assert parent.info.status == "KILLED" and "died" in parent.data.tags["error"]
    children = client.search_runs([exp.experiment_id], "tags.`sweep/child` != ''")
    # No queued child started after the kill; the two running ones ended KILLED with their checkpoints.
    assert {c.info.run_id for c in children} == {r.info.run_id for r in started}
    assert all(c.info.status == "KILLED" and "checkpoint/epoch" in c.data.tags for c in children)


# --- 6. a resumed sweep's children stay comparable with its earlier ones ------------------------------------------


def _logged_run(threads: str):
    from types import SimpleNamespace

    return SimpleNamespace(data=SimpleNamespace(params={"config/num_threads": threads}))


@pytest.mark.parametrize(
    "earlier, given, expected, kept",
    [
        ("1", 0, 1, True),  # parallel children (cores/N) before, resumed in this process now: the reported case
        ("0", 0, 0, True),  # local (auto) before, resumed with --parallel now: auto kept, not cores/N
        ("3", 2, 2, True),  # a count the user gave now wins (the config check of the resume then says if it differs)
        (None, 0, 0, False),  # a new sweep: the executor decides
    ],
)
def test_a_resumed_sweep_runs_its_children_on_the_thread_count_its_earlier_children_had(earlier, given, expected, kept):
    from bertpooled.config import load_config
    from bertpooled.sweep.plan import plan
    from bertpooled.sweep.resume import threads_as_before as _threads_as_before

    children = plan(SMOKE, {"num_threads": given}, ["basic", "pool"], [0])
    existing = {} if earlier is None else {"some-key": [_logged_run(earlier)]}
    lines: list[str] = []
    todo, keep = _threads_as_before(children, existing, lines.append)
    assert [c.config.num_threads for c in todo] == [expected, expected] and keep is kept
    assert [c.key for c in todo] == [c.key for c in children]  # the cells keep their identity
    assert load_config(SMOKE).num_threads == 0


def test_parallel_workers_keep_a_kept_auto_thread_count(monkeypatch):
    """run_parallel gives auto children cores/N unless the sweep keeps its earlier count (auto)."""
    import concurrent.futures as cf

    from bertpooled.sweep import parallel
    from bertpooled.sweep.plan import plan

    seen = []

    class Pool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, config, *args):
            seen.append(config.num_threads)
            future = cf.Future()
            future.set_result(None)
            return future

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Pool)
    children = plan(SMOKE, {}, ["basic", "pool"], [0])
    for keep in (True, False):
        seen.clear()
        parallel.run_parallel(children, "parent", 2, lambda line: None, keep_threads=keep)
        assert seen == ([0, 0] if keep else [max(1, (os.cpu_count() or 1) // 2)] * 2)


def test_ray_tasks_keep_a_kept_auto_thread_count_too(store, monkeypatch):
    """The leftover of issue 33: the Ray executor gave every auto child its reserved CPUs, so a sweep resumed on Ray
    logged a thread count unlike its earlier children's; it keeps the count the way run_parallel does."""
    from bertpooled.sweep import ray_executor
    from bertpooled.sweep.plan import plan

    seen = []

    class Task:
        def options(self, **kwargs):
            return self

        def remote(self, config, *args):
            seen.append(config.num_threads)
            return object()

    class FakeRay:
        @staticmethod
        def remote(fn):
            return Task()

    monkeypatch.setattr(ray_executor, "import_ray", lambda: FakeRay)  # Ray itself is an extra, not installed here
    children = plan(SMOKE, {}, ["basic", "pool"], [0])
    for keep in (True, False):
        seen.clear()
        ray_executor.RayExecutor(cpus_per_run=2)._submit(FakeRay, children, "parent", keep_threads=keep)
        assert seen == ([0, 0] if keep else [2, 2])


# --- 7. checkpoints that verify themselves, whatever the run's tags say -------------------------------------------


def _checkpoint_folder(client, run_id: str) -> Path:
    from urllib.parse import urlparse

    run = client.get_run(run_id)
    return Path(urlparse(run.info.artifact_uri).path) / run.data.tags["checkpoint/path"]


def _alter_a_weight(folder: Path) -> None:
    """Change one stored float of the trained head, keeping the file a valid safetensors file."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "state.safetensors"))
    name = next(k for k in tensors if k.startswith("model/"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(folder / "state.safetensors"))


@pytest.mark.parametrize(
    "tamper, words",
    [
        ("weights", ["weights do not match the sha256 written inside"]),  # accuracy 0.50 before
        ("meta", ["meta.json does not match the sha256 written inside"]),
        ("copied", ["belongs to another run", "copied from another run"]),  # finished as the other seed before
    ],
)
def test_a_checkpoint_altered_or_copied_with_its_tag_deleted_or_copied_is_refused(
    store, tiny_bert, tiny_imdb, monkeypatch, tamper, words
):
    client = MlflowClient(store)
    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, "--seed", "0")
    folder = _checkpoint_folder(client, run_id)
    if tamper == "weights":
        _alter_a_weight(folder)
        client.delete_tag(run_id, "checkpoint/sha256")
    elif tamper == "meta":
        meta = folder / "meta.json"
        meta.write_text(meta.read_text().replace('"epoch": 2', '"epoch": 1'))
        client.delete_tag(run_id, "checkpoint/sha256")
    else:
        other = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, "--seed", "1")
        import shutil

        shutil.rmtree(folder)
        shutil.copytree(_checkpoint_folder(client, other), folder)
        client.set_tag(run_id, "checkpoint/sha256", client.get_run(other).data.tags["checkpoint/sha256"])
    result = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert_one_line(result, *words)
    assert client.get_run(run_id).info.status == "KILLED"  # left as it was


def test_an_untouched_checkpoint_whose_tag_was_deleted_still_resumes(store, tiny_bert, tiny_imdb, monkeypatch):
    client = MlflowClient(store)
    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, "--seed", "0")
    client.delete_tag(run_id, "checkpoint/sha256")
    result = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert result.exit_code == 0, result.output
    assert client.get_run(run_id).info.status == "FINISHED"


# --- 8. a run is driven by one live process: owner and heartbeat in the tracking store -----------------------------


def _tags(owner: str, beat: str) -> dict[str, str]:
    return {"bertpooled.owner": owner, "bertpooled.heartbeat": beat}


def test_liveness_tells_a_driven_run_from_one_whose_process_died():
    import socket
    import subprocess
    import sys

    from bertpooled.tracking.ownership import ENDED, liveness, me

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    here = socket.gethostname()
    cases = {
        # (tags, status) -> alive? (None: one read cannot tell, the heartbeat is watched; see test_fencing.py)
        ("another-host:12:abc", "1000", "RUNNING"): None,  # another machine: whatever its heartbeat's value says
        ("another-host:12:abc", "1000", "KILLED"): None,  # a resume elsewhere may have claimed it and prepare it
        (f"{here}:{dead_pid}:abc", "1000", "RUNNING"): False,  # kill -9 here: the pid is gone at once
        (me(), "1000", "RUNNING"): True,  # this very process
        (me(), ENDED, "KILLED"): False,  # its owner let it go when it ended
        ("", "", "RUNNING"): False,  # an older run, never heartbeated
        ("another-host:12:abc", "1000", "FINISHED"): False,
    }
    for (owner, beat, status), alive in cases.items():
        assert liveness(_tags(owner, beat), status)[0] is alive, (owner, beat, status)


def test_a_run_driven_by_a_live_process_is_refused_by_resume_and_taken_over_only_when_asked(
    store, tiny_bert, tiny_imdb, monkeypatch
):

    from bertpooled.tracking import ownership

    client = MlflowClient(store)
    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, "--seed", "0")
    assert client.get_run(run_id).data.tags["bertpooled.heartbeat"] == ownership.ENDED  # let go when it ended
    # Another machine drives it (the reported case: a resume while it still trains; or a resume elsewhere).
    client.update_run(run_id, status="RUNNING")
    with beating_owner(client, run_id, "another-host:4242:abc"):
        refused = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert_one_line(refused, "still being driven by another process", "another-host:4242", "--take-over")
    assert client.get_run(run_id).data.tags["bertpooled.owner"] == "another-host:4242:abc"  # untouched
    taken = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb), "--take-over"])
    assert taken.exit_code == 0, taken.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bertpooled.heartbeat"] == ownership.ENDED


def test_a_resume_in_another_process_holds_the_run_whatever_its_cache_folder(store, tiny_bert, tiny_imdb, monkeypatch):
    """The resume lock file lives in the cache folder; the claim lives in the store, which both processes share."""
    from bertpooled.tracking import ownership

    run_id = killed_run_with_a_checkpoint(store, tiny_bert, tiny_imdb, monkeypatch, "--seed", "0")
    ownership.claim(run_id, "run")  # a resume elsewhere, preparing its data: the run still shows KILLED
    try:
        monkeypatch.setenv("BERTPOOLED_CACHE", str(Path(store.split("///")[1]).parent / "other-cache"))
        second = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    finally:
        ownership.let_go(run_id)
    assert_one_line(second, "still being driven by another process")
    third = CliRunner().invoke(app, ["train", "--resume", run_id, "--data", str(tiny_imdb)])
    assert third.exit_code == 0, third.output  # once the first let go, a resume goes ahead


def test_a_sweep_still_driven_by_a_live_process_is_refused_by_resume_parent(store, tiny_bert, monkeypatch):
    client = MlflowClient(store)
    exp = client.create_experiment("bertpooled")
    parent = client.create_run(exp, tags={"bertpooled.kind": "sweep", "mlflow.runName": "sweep-x"})
    with beating_owner(client, parent.info.run_id, "another-host:99:abc"):
        result = CliRunner().invoke(
            app,
            [
                "sweep",
                "--config",
                SMOKE,
                "--model",
                str(tiny_bert),
                "--resume-parent",
                parent.info.run_id,
                "--modes",
                "basic",
                "--seeds",
                "1",
            ],
        )
    assert_one_line(result, "sweep", "still being driven by another process")
    assert client.search_runs([exp], "tags.`sweep/child` != ''") == []  # no child started twice


# --- 9. a predictions file edited or damaged is a note, not a traceback --------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [
        ("id,label,probability\na,1,0.9\nb,0,high\n", "not a number"),  # the reported case
        ("id,label,probability\na,1,0.9\nb,0,1.7\n", "not a number in [0, 1]"),
        ("id,label,probability\na,1,0.9\nb,0,nan\n", "not a number"),
        ("id,label,probability\na,2,0.9\nb,0,0.1\n", "labels other than 0 and 1"),
        ("id,label\na,1\n", "no column probability"),
        ("id,label,probability\na,1,0.9\na,0,0.1\n", "repeated ids"),
        ("id,label,probability\na,1,0.9\nb,0,0.1\n", ""),
    ],
)
def test_every_kind_of_unusable_predictions_file_is_named(tmp_path, text, problem):
    import pandas as pd

    from bertpooled.tracking.store import unusable_predictions

    path = tmp_path / "test.csv"
    path.write_text(text)
    found = unusable_predictions(pd.read_csv(path, dtype={"id": str}))
    assert (problem in found) if problem else found == ""


@pytest.mark.parametrize("damage", ["truncated weights", "edited width"])
def test_serving_a_damaged_logged_model_is_one_line(store, tiny_bert, tiny_imdb, damage):
    import json
    from urllib.parse import urlparse

    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "1")
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("bertpooled").experiment_id])
    (model,) = client.search_logged_models([run.info.experiment_id])
    artifacts = Path(urlparse(model.artifact_location).path) / "artifacts"
    if damage == "truncated weights":
        weights = artifacts / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        config = artifacts / "model_config.json"
        spec = json.loads(config.read_text())
        assert _edit_width(spec) != spec
        config.write_text(json.dumps(_edit_width(spec)))
    served = CliRunner().invoke(app, ["serve", f"runs:/{run.info.run_id}/model", "--port", "1"])
    assert_one_line(served, "damaged")


def _edit_width(spec):
    """The model config with its first width-like integer changed (the weights then no longer fit)."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and any(w in key for w in ("units", "hidden", "size", "dim"))
            ):
                return {**spec, key: value + 3}
        return {k: _edit_width(v) if isinstance(v, (dict, list)) else v for k, v in spec.items()}
    return spec


def test_resume_against_a_server_whose_api_hangs_is_one_line_within_seconds(hanging_server, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", hanging_server)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["train", "--resume", "0123456789abcdef0123456789abcdef"])
    assert time.perf_counter() - start < 60  # it skipped the probe and waited 200 s before
    assert_one_line(result, "answers /health but its API does not answer")


def test_a_sweep_interrupted_before_its_parent_existed_says_so_and_claims_no_killed_run(store, monkeypatch):
    from bertpooled.sweep import plan as sweeping

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeping, "plan", interrupted)
    result = CliRunner().invoke(app, ["sweep", "--config", SMOKE])
    assert result.exit_code == 130
    assert "before the sweep's parent run was created" in result.output and "KILLED" not in result.output
