"""`bertpooled train` through typer's CliRunner: bad input is one line, exit 2, no run left behind."""

from __future__ import annotations

import pytest
from conftest import invoke_train as invoke
from conftest import one_error_line, runs_in, write_imdb_archive, write_imdb_tree
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app


@pytest.fixture()
def bad_trees(tmp_path):
    """Folders and archives that are broken in one way each."""
    made = {}
    good = write_imdb_tree(tmp_path / "good", per_label=4)
    made["good"] = good
    no_neg = write_imdb_tree(tmp_path / "noneg", per_label=4)
    for f in (no_neg / "test" / "neg").iterdir():
        f.unlink()
    (no_neg / "test" / "neg").rmdir()
    made["no_neg"] = no_neg
    latin = write_imdb_tree(tmp_path / "latin", per_label=4)
    (latin / "train" / "pos" / "0_9.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    made["latin"] = latin
    empty = write_imdb_tree(tmp_path / "empty", per_label=4)
    (empty / "test" / "pos" / "1_9.txt").write_text("   \n")
    made["empty"] = empty
    archive = write_imdb_archive(good, tmp_path / "aclImdb_v1.tar.gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    made["truncated"] = truncated
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a tar file at all" * 10)
    made["garbage"] = garbage
    return made


@pytest.mark.parametrize(
    "args, words",
    [
        (["--mode", "fancy"], ["mode='fancy'", "basic"]),
        (["--epochs", "0"], ["epochs=0", "positive"]),
        (["--batch-size", "0"], ["batch_size=0"]),
        (["--max-len", "0"], ["max_len=0"]),
        (["--train-fraction", "1.5"], ["train_fraction=1.5", "(0, 1]"]),
        (["--set", "nonsense=1"], ["unknown setting 'nonsense'"]),
        (["--model", "./no-such-folder"], ["does not exist"]),
        (["--data", "/no/such/aclImdb_v1.tar.gz"], ["/no/such/aclImdb_v1.tar.gz"]),
    ],
)
def test_bad_options_fail_before_any_run_is_created(store, tiny_bert, tiny_imdb, args, words):
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), *args)
    one_error_line(result, *words)
    assert runs_in(store) == []


def test_max_len_beyond_the_backbone_positions_names_the_limit(store, tiny_bert, tiny_imdb):
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--max-len", "100")
    one_error_line(result, "max_len=100", "64 positions", "--max-len 64")
    assert runs_in(store) == []


@pytest.mark.parametrize(
    "case, words",
    [
        ("no_neg", ["neg"]),
        ("latin", ["UTF-8", "0_9.txt"]),
        ("empty", ["empty", "1_9.txt"]),
        ("truncated", ["corrupt or truncated"]),
        ("garbage", ["garbage.tar.gz"]),
    ],
)
def test_unusable_data_is_a_one_line_error_and_leaves_no_run(store, tiny_bert, bad_trees, case, words):
    result = invoke("--model", str(tiny_bert), "--data", str(bad_trees[case]))
    one_error_line(result, *words)
    assert runs_in(store) == []


def test_offline_without_a_local_copy_says_how_to_provide_one(store, tiny_bert, monkeypatch):
    from bertpooled.data import imdb

    monkeypatch.delenv("BERTPOOLED_IMDB", raising=False)
    monkeypatch.setattr(imdb, "IMDB_URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")
    result = invoke("--model", str(tiny_bert))
    one_error_line(result, "BERTPOOLED_IMDB", "--data")
    assert runs_in(store) == []


def test_a_failure_inside_the_run_marks_it_failed_with_the_reason(store, tiny_bert, tiny_imdb, monkeypatch):
    from bertpooled.run import fit

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while training")

    monkeypatch.setattr(fit, "fit", broken)
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert result.exit_code != 0
    (run,) = runs_in(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "disk full while training"
    assert "config/mode" in run.data.params  # what was logged before the failure stays


def test_same_seed_same_machine_gives_identical_metrics(store, tiny_bert, tiny_imdb):
    for _ in range(2):
        assert (
            invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "pool", "--seed", "3").exit_code == 0
        )
    a, b = runs_in(store)
    # Timings, latency and peak memory vary from run to run; results, parameter and FLOP counts may not.
    keys = [k for k in a.data.metrics if not k.startswith(("time/", "throughput/", "tokens/", "latency/", "memory/"))]
    assert keys and {k: a.data.metrics[k] for k in keys} == {k: b.data.metrics[k] for k in keys}
    client = MlflowClient(store)
    history = [[m.value for m in client.get_metric_history(r.info.run_id, "train/loss")] for r in (a, b)]
    assert history[0] == history[1]


def test_a_successful_run_prints_a_summary_and_the_runs_table_link(store, tiny_bert, tiny_imdb):
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "pool")
    assert result.exit_code == 0, result.output
    assert "pool" in result.output and "test accuracy" in result.output and "head params" in result.output
    assert "#/experiments/" in result.output and "workflowType=machine_learning" in result.output
    (run,) = runs_in(store)
    assert run.info.status == "FINISHED"
    # The smoke protocol (2 epochs, 64 + 32 reviews, 16 tokens here) is not the default: the name and tag say so.
    assert run.data.tags["mlflow.runName"] == f"pool-{tiny_bert.name}-s0-e2-n64-t32-custom"
    assert run.data.tags["protocol"] == "epochs=2 max_len=16 max_train_examples=64 max_test_examples=32"


def test_an_unreachable_tracking_server_fails_fast_and_never_shows_the_password(tiny_bert, tiny_imdb, monkeypatch):
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")
    start = time.perf_counter()
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb))
    assert time.perf_counter() - start < 15
    one_error_line(result, "unreachable", "MLFLOW_TRACKING_URI")
    assert "s3cret" not in result.output and "alice" not in result.output


def test_credentials_are_removed_from_uris_before_they_are_shown_or_logged():
    from bertpooled.tracking.runs import redact_uri

    assert redact_uri("https://bob:pw@mlflow.example.org:8443/x?y=1") == "https://mlflow.example.org:8443/x?y=1"
    assert redact_uri("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert redact_uri("/data/aclImdb_v1.tar.gz") == "/data/aclImdb_v1.tar.gz"


def test_mlproject_parameters_that_are_not_key_value_pairs_are_one_line_errors():

    result = CliRunner().invoke(app, ["mlproject-train", "--epochs"])
    assert result.exit_code == 2 and "error: MLproject parameters arrive as --key value" in result.output
    result = CliRunner().invoke(app, ["mlproject-train", "--epoch", "3"])
    assert result.exit_code == 2 and "epoch" in result.output and "Traceback" not in result.output


def test_train_help_names_the_data_variable_and_the_config_defaults():

    from bertpooled.config import Config

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "$BERTPOOLED_IMDB" in text  # once lost: typer's rich help read "[env: ...]" as markup
    assert f"(default: {Config.epochs})" in text and f"(default: {Config.lr})" in text


def test_an_unknown_compare_parameter_is_a_one_line_error():

    result = CliRunner().invoke(app, ["mlproject-compare", "--baseline", "basic", "--groupby", "mode"])
    assert result.exit_code == 2 and "unknown compare parameter(s) groupby" in result.output


def test_a_run_in_mlflows_default_experiment_says_so_and_bare_compare_runs_finds_it(
    store, tiny_bert, tiny_imdb, monkeypatch
):
    # Issue 31: `mlflow run . -P mode=pool` without --experiment-name logs into Default, silently before.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "Default")
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "pool")
    assert result.exit_code == 0, result.output
    closing = result.output.strip().splitlines()[-1]
    assert closing.startswith("experiment: Default") and "`bertpooled compare-runs --experiment Default`" in closing
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):  # mlflow.set_experiment leaves the id behind
        monkeypatch.delenv(name, raising=False)
    # No `bertpooled` experiment: bare compare-runs reads the experiment holding the newest training run.
    report = CliRunner().invoke(app, ["compare-runs", "--no-log"])
    assert report.exit_code == 0, report.output
    assert "compares experiment 'Default'" in report.stdout and "make run MODE=basic" in report.stderr
    # Once `bertpooled` has training runs too, it is read, and the note says where the newer run is.
    assert invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "basic").exit_code == 0
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "Default")
    assert invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "basic").exit_code == 0
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):  # mlflow.set_experiment leaves the id behind
        monkeypatch.delenv(name, raising=False)
    report = CliRunner().invoke(app, ["compare-runs", "--no-log"])
    assert report.exit_code == 0, report.output
    assert "is in experiment 'Default', not 'bertpooled'" in report.stdout


def test_a_run_in_the_projects_experiment_ends_without_an_experiment_line(store, tiny_bert, tiny_imdb):
    result = invoke("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "pool")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("model: runs:/")


def test_a_run_name_says_how_its_protocol_differs_from_the_default():
    # Issue 31: three different runs were all pool-minilm-s0 (the quick start, a 2-epoch sweep child, a tuned run).
    from bertpooled.config import Config
    from bertpooled.run.experiment import protocol_differences
    from bertpooled.tracking.runs import protocol_tag, run_name

    def named(**settings) -> tuple[str, str]:
        differs = protocol_differences(Config(mode="pool", **settings))
        return run_name("pool", "minilm", 0, differs), protocol_tag(differs)

    assert named() == ("pool-minilm-s0", "default")
    # The machine's threads, the device, how cost is sampled and where the data is read from are no protocol.
    assert named(num_threads=2, device="cpu", latency_texts=4, data="x.tar.gz") == ("pool-minilm-s0", "default")
    assert named(epochs=2, max_train_examples=1000) == (
        "pool-minilm-s0-e2-n1000",
        "epochs=2 max_train_examples=1000",
    )
    assert named(lr=0.01, lstm_units=32)[0] == "pool-minilm-s0-tuned"
    assert named(padding="read") == ("pool-minilm-s0-custom", "padding=read")
