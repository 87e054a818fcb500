import pytest
from conftest import ROOT

from bertpooled.config import Config, load_config, parse_sets
from bertpooled.errors import BertpooledError

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_yaml_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert Config(**cfg.to_dict()) == cfg  # the resolved config round-trips


def test_the_protocol_files_exist():
    assert {"default", "seed", "smoke"} <= {p.stem for p in EXPERIMENTS}


def test_seed_yaml_states_the_original_protocol():
    cfg = load_config(ROOT / "experiments" / "seed.yaml")
    assert (cfg.model, cfg.max_len, cfg.lstm_units, cfg.lr, cfg.batch_size, cfg.epochs, cfg.train_fraction) == (
        "bert-base-uncased",
        128,
        16,
        1e-3,
        32,
        10,
        0.75,
    )
    assert cfg.padding == "read" and cfg.init == "keras" and cfg.adam_eps == 1e-7


def test_default_yaml_is_the_same_protocol_on_the_offline_backbone():
    seed, default = load_config(ROOT / "experiments" / "seed.yaml"), load_config(ROOT / "experiments" / "default.yaml")
    assert default.model == "minilm"
    for field in ("max_len", "lstm_units", "lr", "adam_eps", "batch_size", "epochs", "train_fraction", "init"):
        assert getattr(default, field) == getattr(seed, field), field


@pytest.mark.parametrize("alias", ["basic_lstm", "lstm_basic", "BASIC"])
def test_the_original_mode_names_mean_basic(alias):
    assert load_config(overrides={"mode": alias}).mode == "basic"


def test_modes_set_their_pooling_preset_unless_pool_is_given():
    assert load_config(overrides={"mode": "pool"}).pool == "avg:2x2"
    assert load_config(overrides={"mode": "basic"}).pool == "none"
    assert load_config(overrides={"mode": "pool", "pool": "max:2x1"}).pool == "max:2x1"


def test_reference_mode_reads_the_tokens_unless_told_to_read_the_full_text():
    cfg = load_config(overrides={"mode": "reference"})
    assert (cfg.mode, cfg.pool, cfg.reference_text) == ("reference", "none", "tokens")
    assert load_config(overrides={"mode": "reference", "reference_text": "FULL"}).reference_text == "full"


def test_overrides_win_over_the_file_and_empty_overrides_are_ignored(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("epochs: 3\nseed: 4\n")
    cfg = load_config(path, {"epochs": "5", "seed": ""})
    assert cfg.epochs == 5 and cfg.seed == 4


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"mode": "fancy"}, "mode='fancy'"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"max_len": 0}, "max_len=0"),
        ({"train_fraction": 0}, "train_fraction=0"),
        ({"train_fraction": 1.5}, "train_fraction=1.5"),
        ({"lr": "-1"}, "lr=-1"),
        ({"epochs": "three"}, "epochs='three'"),
        ({"epochs": "2.5"}, "epochs=2.5"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"padding": "left"}, "padding='left'"),
        ({"pool": "avg:2"}, "KIND:SxH"),
        ({"max_test_examples": -3}, "max_test_examples=-3"),
        ({"reference_text": "words"}, "reference_text='words'"),
        ({"mode": "reference", "pool": "avg:2x2"}, "pool='avg:2x2'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field_and_the_fix(overrides, words):
    with pytest.raises(BertpooledError) as err:
        load_config(overrides=overrides)
    message = str(err.value)
    assert words in message and "\n" not in message
    assert "use" in message or "write" in message


def test_unknown_keys_in_a_file_are_rejected(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(BertpooledError, match="unknown setting 'epoch'"):
        load_config(path)


def test_invalid_yaml_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [3\n")
    with pytest.raises(BertpooledError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(BertpooledError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_pairs_parse_and_reject_malformed_ones():
    assert parse_sets(["epochs=3", "mode="]) == {"epochs": "3", "mode": ""}
    with pytest.raises(BertpooledError, match="key=value"):
        parse_sets(["epochs"])


def test_a_config_name_resolves_inside_experiments(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert load_config("smoke").epochs == load_config("experiments/smoke.yaml").epochs


def test_a_config_name_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here: the project's own folder is the fallback
    assert load_config("smoke").epochs == load_config(ROOT / "experiments" / "smoke.yaml").epochs
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "smoke.yaml").write_text("epochs: 7\n")
    assert load_config("smoke").epochs == 7  # ./experiments comes first
    with pytest.raises(BertpooledError, match="config file nosuch not found"):
        load_config("nosuch")


def test_tests_do_not_see_the_users_imdb(monkeypatch):
    # conftest's autouse fixture removed it before this test (bites where it is set, as in CI); only the
    # imdb-marked test keeps it.
    import os

    assert "BERTPOOLED_IMDB" not in os.environ


def test_system_metrics_without_psutil_is_a_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real(name, *a))
    with pytest.raises(BertpooledError, match=r"system_metrics.*install psutil") as caught:
        load_config(None, {"system_metrics": "true"})
    # A hint that works from a checkout: the package is on no index (issue 31).
    assert "'bertpooled[" not in str(caught.value) and 'pip install -e ".[system-metrics]"' in str(caught.value)
    assert load_config(None, {}).system_metrics is False
