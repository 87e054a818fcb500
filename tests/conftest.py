"""Fixtures: a tiny BERT saved like a real checkpoint, a tiny IMDB archive, a private tracking store; and the
helpers several test files share (the smoke config's command line, a sweep in a subprocess, waiting for a server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from common import tiny  # benchmarks/common (pyproject's pythonpath): the studies' tiny BERT too

ROOT = Path(__file__).resolve().parents[1]

#: The smoke protocol (experiments/smoke.yaml) most command-line tests start from.
SMOKE = str(ROOT / "experiments" / "smoke.yaml")

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "waste", "hated"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and", "of", "this"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, ".", ","]


def make_review(rng, words: list[str], n: int) -> str:
    picks = [rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(n)]
    return " ".join(picks) + " ."


def write_imdb_tree(root: Path, per_label: int = 24, seed: int = 0) -> Path:
    """An aclImdb/ folder with `per_label` reviews per split and label, learnable from its words."""
    import random

    rng = random.Random(seed)
    base = root / "aclImdb"
    for split in ("train", "test"):
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            folder = base / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_label):
                rating = 9 if label == "pos" else 2
                (folder / f"{i}_{rating}.txt").write_text(make_review(rng, words, rng.randint(5, 30)), encoding="utf-8")
    return base


def write_imdb_archive(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    return path


@pytest.fixture(scope="session")
def tiny_imdb(tmp_path_factory) -> Path:
    """A tiny aclImdb_v1.tar.gz, in the official layout."""
    root = tmp_path_factory.mktemp("imdb")
    tree = write_imdb_tree(root)
    return write_imdb_archive(tree, root / "aclImdb_v1.tar.gz")


@pytest.fixture(scope="session")
def bigger_imdb(tmp_path_factory) -> Path:
    """100 reviews per split and label: enough that an epoch of the tiny BERT takes a while (to interrupt it)."""
    root = tmp_path_factory.mktemp("imdb-bigger")
    return write_imdb_archive(write_imdb_tree(root, per_label=100), root / "aclImdb_v1.tar.gz")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with a 31-word vocabulary, saved with save_pretrained: the hub-name loading path."""
    from transformers import BertTokenizerFast

    folder = tiny.tiny_bert(tmp_path_factory.mktemp("tiny-bert"), VOCAB)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    assert tokenizer("great film")["input_ids"] == [2, VOCAB.index("great"), VOCAB.index("film"), 3]
    return folder


@pytest.fixture(autouse=True)
def _no_experiment_carried_between_tests(monkeypatch):
    """`mlflow.set_experiment` writes MLFLOW_EXPERIMENT_ID into os.environ; each test starts without it."""
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _no_user_imdb(request, monkeypatch):
    """Only the imdb-marked test sees the user's BERTPOOLED_IMDB: a stale path there must not fail other tests,
    and no other test may read the real archive."""
    if request.node.get_closest_marker("imdb") is None:
        monkeypatch.delenv("BERTPOOLED_IMDB", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _session_in_a_tmp_folder(tmp_path_factory):
    """Module- and session-scoped fixtures run before a test's own folder is its working folder: they run in a
    folder of the session's, so a store one of them makes keeps its artifacts out of the checkout too (MLflow
    resolves a SQLite store's default artifact root, ./mlruns, once, when it first opens the store)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path, so whatever it writes to a relative path (MLflow puts a new
    experiment's artifacts under ./mlruns) lands there, not in the checkout (`make test` leaves it as it was)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def store(tmp_path, monkeypatch) -> str:
    """A private SQLite tracking store and token cache under tmp_path (the test's working folder); returns the
    tracking URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


def tiny_bert_model(layers: int = 2, seed: int = 0):
    """A tiny BertModel in memory (40-word vocabulary, hidden 32), in eval mode."""
    return tiny.tiny_bert_model(40, layers, seed)


def id_batch(seed: int = 0, n: int = 4, length: int = 16):
    """Right-padded token ids (padding id 0) of real lengths length, length-5, 3 and 1, and those lengths."""
    import torch

    from bertpooled.model.pooling import lengths_mask

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, length), generator=gen)
    lengths = torch.tensor([length, length - 5, 3, 1][:n])
    ids[lengths_mask(lengths, length).logical_not()] = 0
    return ids, lengths


def wait_for_http(url: str, proc, timeout: float, log=lambda: "") -> None:
    """Poll `url` until it answers; fail if `proc` exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert proc.poll() is None, f"server exited: {log()}"
            assert time.time() < deadline, f"{url} did not come up"
            time.sleep(0.5)


def wait_until(check, timeout: float, what: str, every: float = 0.2, fail: bool = True):
    """Poll `check()` until it returns something truthy (returned) or `timeout` seconds pass (the test fails
    naming `what`, or with `fail=False` the last value is returned for the test to explain): the state decides,
    not a guess at how long the machine takes."""
    deadline = time.time() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.time() >= deadline:
            if not fail:
                return found
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def tiny_args(tiny_bert, data, *extra: str) -> list[str]:
    """A command's options for the smoke config on the tiny BERT and `data`, 16 tokens a review, then `extra`."""
    return ["--config", SMOKE, "--model", str(tiny_bert), "--data", str(data), "--max-len", "16", *extra]


def invoke_tiny(command: str, tiny_bert, data, *extra: str):
    """`bertpooled <command>` in this process on `tiny_args`; typer's result (exit code, output)."""
    from typer.testing import CliRunner

    from bertpooled.cli import app

    return CliRunner().invoke(app, [command, *tiny_args(tiny_bert, data, *extra)])


def mlflow_run(params: dict[str, str], store: str, *extra: str, entry: str | None = None, experiment="bertpooled"):
    """`mlflow run` of this project (`--env-manager local`, entry point `entry` or main) against the SQLite `store`.

    MLflow runs the entry point in the project's folder, where an experiment the run creates would keep its
    artifacts (./mlruns, MLflow's default): the run's experiment and the comparison runs' are made first, their
    artifacts beside the store, so the checkout stays as it was."""
    from mlflow.tracking import MlflowClient

    from bertpooled.contract import COMPARISON_EXPERIMENT

    client, folder = MlflowClient(store), Path(store.removeprefix("sqlite:///")).parent
    for name in (experiment, COMPARISON_EXPERIMENT):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(folder / "mlruns" / name).as_uri())
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment]
    cmd += [*(["-e", entry] if entry else []), *extra]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    # The project's commands are `python -m bertpooled`: the `python` of this test's environment.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def sweep_args(tiny_bert, data, *extra: str) -> list[str]:
    """A long parallel sweep (2 modes x 2 seeds, 2 workers, 150 epochs) as a `python -m bertpooled` command line."""
    return [
        sys.executable,
        "-m",
        "bertpooled",
        "sweep",
        *tiny_args(tiny_bert, data),
        *("--epochs", "150", "--max-train-examples", "0", "--max-test-examples", "16"),
        *("--modes", "basic,pool", "--seeds", "2", "--parallel", "2", "--no-progress", "--format", "json"),
        *extra,
    ]


def two_children_training(client, proc, timeout: float) -> list:
    """Wait until two of a sweep's children run with a checkpoint logged (both past their first epoch), while
    `proc` lives; returns them, or fails after `timeout` seconds."""
    deadline, started = time.time() + timeout, []
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("bertpooled")
        runs = client.search_runs([exp.experiment_id], "tags.`sweep/child` != ''") if exp else []
        started = [r for r in runs if r.info.status == "RUNNING" and "checkpoint/epoch" in r.data.tags]
        if len(started) == 2:
            return started
        time.sleep(0.2)
    pytest.fail("two children never trained side by side")


def invoke_train(*args: str):
    """`bertpooled train` in this process on the smoke config, 16 tokens a review, then `args`."""
    from typer.testing import CliRunner

    from bertpooled.cli import app

    return CliRunner().invoke(app, ["train", "--config", SMOKE, "--max-len", "16", *args])


def one_error_line(result, *words: str) -> str:
    """A user error as the CLI reports one: exit 2, no traceback, exactly one `error: ` line, naming each of
    `words`; returns that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def runs_in(uri: str) -> list:
    """Every run of every experiment in the tracking store at `uri`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def killed_run_with_a_checkpoint(store: str, tiny_bert, data, monkeypatch, *extra: str) -> str:
    """A 2-epoch smoke run stopped as if by Ctrl-C right after its last checkpoint (KILLED, checkpoint/epoch 2);
    `extra` options go to `train`. Returns the run's id."""
    from mlflow.tracking import MlflowClient

    from bertpooled.run import fit

    real_fit = fit.fit

    def fit_then_interrupt(*args, **kwargs):
        real_fit(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "fit", fit_then_interrupt)
    result = invoke_tiny("train", tiny_bert, data, "--epochs", "2", *extra)
    monkeypatch.setattr(fit, "fit", real_fit)
    assert result.exit_code == 130, result.output
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("bertpooled").experiment_id
    (run,) = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)
    assert run.info.status == "KILLED" and run.data.tags["checkpoint/epoch"] == "2"
    return run.info.run_id


@contextmanager
def beating_owner(client, run_id: str, owner: str, every: float = 0.2) -> Iterator[None]:
    """Another process driving `run_id`: its owner tag set, its heartbeat moved every `every` seconds until the
    block ends (readers judge liveness by whether the heartbeat moves, not by its value)."""
    import threading

    stop = threading.Event()
    client.set_tag(run_id, "bertpooled.owner", owner)

    def beat() -> None:
        n = 0
        while not stop.wait(every):
            n += 1
            client.set_tag(run_id, "bertpooled.heartbeat", f"{1000 + n}")

    thread = threading.Thread(target=beat, daemon=True)
    client.set_tag(run_id, "bertpooled.heartbeat", "1000")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def hanging_server():
    """An HTTP server on 127.0.0.1 whose /health answers and whose every other path hangs for 60 s."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/health":
                release.wait(60)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        do_POST = do_GET

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the client gave up on a hanging request on purpose: its broken pipe is expected, not news

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()
