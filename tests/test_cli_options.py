"""One list of config fields: `Config` is the source of `train`'s and `sweep`'s options, the MLproject's `-P`
parameters and the config table of docs/configuration.md; a field added to Config is reachable everywhere with
its docstring."""

from __future__ import annotations

import dataclasses
import enum
import re

import pytest
import typer.main
import yaml
from conftest import ROOT
from typer.testing import CliRunner

import bertpooled.cli.commands as cli
from bertpooled.cli import app
from bertpooled.cli.options import config_fields, field_docs
from bertpooled.config import Config
from bertpooled.errors import BertpooledError

FIELDS = [f.name for f in dataclasses.fields(Config) if f.init]  # a derived field (init=False) is no setting

# Two valid configs that between them set every field to a value that is not its default (features=encoder is
# what finetune, backbone_lr and pool_at need, and what padding=read excludes). A new Config field fails
# `test_the_samples_cover_every_field` until it has a sample here: that is the point.
TOKENS = {
    "mode": "pool",
    "model": "bert-base-uncased",
    "data": "/data/aclImdb_v1.tar.gz",
    "epochs": "3",
    "batch_size": "8",
    "max_len": "64",
    "lr": "0.01",
    "seed": "5",
    "train_fraction": "0.5",
    "max_train_examples": "100",
    "max_test_examples": "200",
    "validation_fraction": "0.2",
    "device": "cpu",
    "pool": "max:2x1",
    "features": "embeddings",
    "padding": "read",
    "lstm_units": "8",
    "init": "torch",
    "lstm_bias": "torch",
    "shuffle_buffer": "100",
    "adam_eps": "1e-08",
    "data_seed": "3",
    "eval_batch_size": "64",
    "eval_each_epoch": "true",
    "num_threads": "2",
    "precision": "fp32",
    "precompute_mb": "0",
    "reference_text": "full",
    "latency_texts": "4",
    "throughput_batches": "1",
    "description": "a note",
    "system_metrics": "true",
}
ENCODER = {
    "mode": "pool",
    "features": "encoder",
    "finetune": "true",
    "backbone_lr": "1e-05",
    "pool": "avg:2x1",
    "pool_at": "output",
}
# The recipes of issue 29: a run that starts from another run's model and distils from it, pooled inside the
# encoder with [CLS] kept apart, on its first 3 layers.
RECIPE = {
    "features": "encoder",
    "finetune": "true",
    "pool": "avg:2x1",
    "pool_at": "layer:1",
    "separate_cls": "true",
    "keep_layers": "3",
    "init_from": "0123456789abcdef0123456789abcdef",
    "distill_from": "runs:/0123456789abcdef0123456789abcdef/model",
    "distill_alpha": "0.3",
    "distill_temperature": "3.0",
    "distill_hidden": "0.5",
    "unlabelled": "100",
}
PROFILES = {"tokens": TOKENS, "encoder": ENCODER, "recipe": RECIPE}


def command(name: str):
    return typer.main.get_command(app).commands[name]


def config_params(name: str) -> dict:
    return {p.name: p for p in command(name).params if p.name in FIELDS}


def as_options(values: dict[str, str]) -> list[str]:
    """The command line for `values`: `--max-len 64`, and a bool as its flag (`--finetune`)."""
    args = []
    for field in config_fields():
        if field.name in values:
            on = field.decls[0].split("/")[0]
            args += [on] if field.kind is bool else [on, values[field.name]]
    return args


def typed(name: str, text: str):
    kind = {f.name: f.kind for f in config_fields()}[name]
    return {"true": True, "false": False}[text] if kind is bool else kind(text)


@pytest.fixture()
def captured(monkeypatch):
    """The Config each `train` resolves, the run stopped right there (one-line error "captured")."""
    import bertpooled.config

    seen = []
    real = bertpooled.config.load_config

    def load_and_stop(config=None, overrides=None):
        seen.append(real(config, overrides))
        raise BertpooledError("captured")

    monkeypatch.setattr(bertpooled.config, "load_config", load_and_stop)
    return seen


def assert_reached(cfg: Config, values: dict[str, str]) -> None:
    for name, text in values.items():
        value = getattr(cfg, name)
        assert value == typed(name, text) or str(value) == text, (name, value, text)
        assert value != Config.__dataclass_fields__[name].default, name  # the sample proves something


def assert_stopped_where_captured(result) -> None:
    assert result.exit_code == 2 and "error: captured" in result.output, result.output


def test_the_samples_cover_every_field():
    assert set(TOKENS) | set(ENCODER) | set(RECIPE) == set(FIELDS)


def test_every_config_field_has_a_docstring():
    docs = field_docs(Config)
    assert [name for name in FIELDS if not docs.get(name)] == []
    assert [f.doc for f in config_fields()] == [docs[name] for name in FIELDS]


def test_every_config_field_is_a_train_option_with_its_docstring_as_help():
    from rich.text import Text

    params = config_params("train")
    assert list(params) == FIELDS  # in Config's order, none left out
    for field in config_fields():
        param = params[field.name]
        default = Config.__dataclass_fields__[field.name].default
        assert param.default is None, field.name  # unset = not given: the YAML file's value stands
        assert param.help.startswith(field.doc), field.name
        suffix = param.help[len(field.doc) :]
        if default in (None, ""):
            assert suffix == "", field.name
        elif field.kind is bool:
            assert suffix == f" (default: {param.opts[0] if default else param.secondary_opts[0]})", field.name
        else:
            assert suffix == f" (default: {default})", field.name
        assert Text.from_markup(param.help).plain == param.help, field.name  # typer's rich help shows it all


def annotation_of(param):
    """The Python type an option parses to, by its click type's name (typer below 0.29 has no type_descriptor)."""
    kinds = {"int": int, "integer": int, "float": float, "bool": bool, "boolean": bool}
    return kinds.get(param.type.name, str)


def test_option_types_follow_the_annotations_and_anything_else_is_text_for_load_config():
    annotations = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, param in config_params("train").items():
        expected = {"bool": bool, "int": int, "float": float}.get(annotations[name], str)
        assert annotation_of(param) is expected, name
        assert param.is_bool_flag == (expected is bool), name


def test_the_spellings_users_rely_on_stay():
    options = {p.name: (p.opts, p.secondary_opts) for p in command("train").params}
    assert options["finetune"] == (["--finetune"], ["--frozen"])
    assert options["max_len"] == (["--max-len"], []) and options["pool_at"] == (["--pool-at"], [])
    assert options["config"] == (["--config", "-c"], []) and options["set_"] == (["--set"], [])
    assert options["resume"] == (["--resume"], []) and options["allow_code_change"] == (["--allow-code-change"], [])
    assert options["progress"] == (["--progress"], ["--no-progress"])
    assert options["eval_each_epoch"] == (["--eval-each-epoch"], ["--no-eval-each-epoch"])


def test_sweep_takes_the_same_config_options_but_mode_and_seed():
    def shape(p):
        return p.opts, p.secondary_opts, p.help, p.default, annotation_of(p)

    train, sweep = config_params("train"), config_params("sweep")
    assert list(sweep) == [name for name in FIELDS if name not in ("mode", "seed")]
    assert {name: shape(p) for name, p in sweep.items()} == {name: shape(train[name]) for name in sweep}
    own = {p.name for p in command("sweep").params} - set(sweep)
    assert {"modes", "seeds", "seed_list", "config", "set_", "progress", "parallel", "executor"} <= own


@pytest.mark.parametrize("profile", PROFILES)
def test_every_field_given_as_a_train_option_reaches_the_config(captured, profile):
    values = PROFILES[profile]
    result = CliRunner().invoke(app, ["train", *as_options(values)])
    assert_stopped_where_captured(result)
    assert_reached(captured[-1], values)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_field_given_as_an_mlproject_parameter_reaches_the_config(captured, profile):
    # `mlflow run . -P key=value` runs `mlproject-train --key value` (the entry point declares no parameters).
    values = PROFILES[profile]
    args = [token for name, text in values.items() for token in (f"--{name}", text)]
    result = CliRunner().invoke(app, ["mlproject-train", *args])
    assert_stopped_where_captured(result)
    assert_reached(captured[-1], values)


def test_options_left_out_keep_the_yaml_files_values(captured, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("epochs: 4\npadding: read\nfinetune: false\neval_each_epoch: true\n")
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--lr", "0.01", "--set", "lstm_units=4"])
    assert_stopped_where_captured(result)
    cfg = captured[-1]
    assert (cfg.epochs, cfg.padding, cfg.eval_each_epoch, cfg.lr, cfg.lstm_units) == (4, "read", True, 0.01, 4)


def test_an_option_wins_over_set(captured):
    result = CliRunner().invoke(app, ["train", "--set", "padding=mask", "--padding", "read", "--set", "epochs=2"])
    assert_stopped_where_captured(result)
    assert (captured[-1].padding, captured[-1].epochs) == ("read", 2)


@pytest.fixture()
def planned(monkeypatch):
    """The overrides and the children's configs each `sweep` plans, stopped right there."""
    from bertpooled.sweep import plan as sweep

    seen = {}
    real = sweep.plan

    def plan_and_stop(config, overrides, modes, seeds):
        seen["overrides"], seen["children"] = overrides, real(config, overrides, modes, seeds)
        raise BertpooledError("captured")

    monkeypatch.setattr(sweep, "plan", plan_and_stop)
    return seen


@pytest.mark.parametrize("profile", PROFILES)
def test_every_field_but_mode_and_seed_reaches_each_sweep_child(planned, profile):
    values = {k: v for k, v in PROFILES[profile].items() if k not in ("mode", "seed")}
    for args in (
        ["sweep", "--modes", "pool", "--seeds", "1", *as_options(values)],
        [
            "mlproject-sweep",
            "--modes",
            "pool",
            "--seeds",
            "1",
            *[token for name, text in values.items() for token in (f"--{name}", text)],
        ],
    ):
        result = CliRunner().invoke(app, args)
        assert_stopped_where_captured(result)
        (child,) = planned["children"]
        assert_reached(child.config, values)


@pytest.mark.parametrize(
    "args, words",
    [
        (["sweep", "--mode", "pool"], ["No such option", "--mode"]),
        (["mlproject-sweep", "--seed", "3"], ["--seeds"]),
        (["mlproject-train", "--epoch", "3"], ["unknown setting 'epoch'"]),
        (["train", "--padding", "sideways"], ["padding='sideways'", "mask or read"]),
        (["mlproject-train", "--eval_each_epoch", "maybe"], ["eval_each_epoch='maybe'", "true or false"]),
    ],
)
def test_mistakes_in_config_options_are_still_one_line(args, words):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), result.output
    text = " ".join(result.output.split())
    assert all(word in text for word in words), result.output
    if args[0] != "sweep":  # typer's own usage errors come as its box, not as our one line
        assert len([line for line in result.output.splitlines() if line.startswith("error: ")]) == 1, result.output


def test_every_mlproject_parameter_is_a_config_field_or_the_entry_points_own():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    text = (ROOT / "MLproject").read_text()
    accepted = {
        "main": set(FIELDS) | set(cli.MLPROJECT_TRAIN.own_names),
        "sweep": (set(FIELDS) - {"mode", "seed"}) | set(cli.MLPROJECT_SWEEP.own_names),
        "compare": set(cli.MLPROJECT_COMPARE.own_names),
        "tune": (set(FIELDS) - {"mode"}) | set(cli.MLPROJECT_TUNE.own_names),
        "adapt": set(cli.MLPROJECT_ADAPT.own_names),
    }
    assert set(project["entry_points"]) == set(accepted)
    sections = re.split(r"^  (\w+):$", text, flags=re.M)[1:]
    for entry, body in zip(sections[::2], sections[1::2], strict=True):
        declared = set(project["entry_points"][entry].get("parameters") or {})
        assert declared <= accepted[entry], entry
        named = set(re.findall(r"-P (\w+)=", body)) - {"key"}  # `-P key=value` is the pattern, no parameter
        assert named and named <= accepted[entry], (entry, named - accepted[entry])


def test_the_docs_config_table_lists_every_config_field_and_nothing_else():
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("| parameter | meaning | default |") :]
    table = table[: table.index("\n\n")]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    listed = [name for cell in rows for name in re.findall(r"`(\w+)`", cell)]
    assert sorted(listed) == sorted(FIELDS)


class Kind(enum.Enum):
    AVG = "avg"
    MAX = "max"


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str = "avg"
    seq: int = 2

    def __str__(self) -> str:
        return f"{self.kind}:{self.seq}x2"


@dataclasses.dataclass
class Typed:
    """A config with the typed fields a Config may grow (a parsed spec, an enum, an optional number)."""

    pool: Spec = dataclasses.field(default_factory=Spec)
    """Pooling as KIND:SxH."""
    kind: Kind = Kind.MAX
    """A kind."""
    cap: int | None = None
    """A cap; unset = none."""
    quiet: bool = True
    undocumented: float = 0.5


def test_typed_fields_are_text_for_load_config_with_their_canonical_default():
    fields = {f.name: f for f in config_fields(Typed)}
    assert {name: f.kind for name, f in fields.items()} == {
        "pool": str,
        "kind": str,
        "cap": str,
        "quiet": bool,
        "undocumented": float,
    }
    assert fields["pool"].help == "Pooling as KIND:SxH. (default: avg:2x2)"  # the spec's own spelling
    assert fields["kind"].help == "A kind. (default: max)"  # an enum's value, not Kind.MAX
    assert fields["cap"].help == "A cap; unset = none."
    assert fields["quiet"].decls == ("--quiet/--no-quiet",) and fields["quiet"].help == "(default: --quiet)"
    assert fields["undocumented"].doc == ""  # an option still, without help (Config's own test requires one)


def test_a_command_whose_options_would_clash_with_a_field_is_refused_at_import():
    from bertpooled.cli.options import fields_but, with_config_options

    def no_fields(config=None):
        """No place for the options."""

    def clashing(epochs=None, fields=None):
        """An own option named like a field."""

    with pytest.raises(TypeError, match="fields"):
        with_config_options(no_fields)
    with pytest.raises(TypeError, match="epochs"):
        with_config_options(clashing)
    with pytest.raises(TypeError, match="colour"):
        fields_but(["colour"])
