"""Runs that build on runs (issue 29): start from a tracked model, distil from a teacher, keep tokens by attention,
[CLS] kept out of the windows, the first K layers only."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from conftest import SMOKE, one_error_line, runs_in, tiny_bert_model
from conftest import id_batch as batch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model.encoder import PoolingEncoder, attention_received, truncated
from bertpooled.model.pooling import PoolPosition, PoolSpec, keep_top, lengths_mask, pool_sequence_cls
from bertpooled.run import cost, runtime

FT = ("--set", "features=encoder", "--set", "finetune=true", "--set", "backbone_lr=1e-3")


def train(tiny_bert, data, *args: str):
    return CliRunner().invoke(
        app, ["train", "--config", SMOKE, "--model", str(tiny_bert), "--data", str(data), "--max-len", "16", *FT, *args]
    )


def trained_run(store: str, result) -> str:
    assert result.exit_code == 0, result.output
    return max(runs_in(store), key=lambda r: r.info.start_time).info.run_id


def weights_of(store: str, run_id: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    mlflow.set_tracking_uri(store)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    finally:
        mlflow.set_tracking_uri(None)
    return load_file(str(next(folder.rglob("weights.safetensors"))))


@pytest.fixture()
def teacher(store, tiny_bert, tiny_imdb) -> str:
    """A fine-tuned unpooled tiny model: the first stage of the recipe."""
    return trained_run(store, train(tiny_bert, tiny_imdb))


# --- tokens chosen by attention -------------------------------------------------------------------------------


def test_topk_keeps_cls_and_the_top_scoring_real_tokens_in_order_and_never_padding():
    x = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1).repeat(1, 1, 3)
    mask = lengths_mask(torch.tensor([8, 3]), 8)
    scores = torch.tensor([[0.0, 5.0, 1.0, 9.0, 2.0, 8.0, 0.5, 7.0], [0.0, 1.0, 2.0, 99.0, 99.0, 99.0, 99.0, 99.0]])
    kept, kept_mask = keep_top(x, mask, scores, keep=4)
    # Row 0: [CLS] (low score, kept anyway), then the three best (9 at 3, 8 at 5, 7 at 7) in their order.
    assert kept[0, :, 0].tolist() == [0.0, 3.0, 5.0, 7.0] and kept_mask[0].all()
    # Row 1 has 3 real tokens: all three, in order; high-scoring padding is never chosen, the fill stays masked.
    assert kept[1, :3, 0].tolist() == [8.0, 9.0, 10.0] and kept_mask[1].tolist() == [True, True, True, False]


def test_attention_received_sums_real_queries_attention_to_each_key_and_gives_padding_none():
    bert = tiny_bert_model(layers=2)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    hidden = bert.embeddings(input_ids=ids)
    scores = attention_received(bert.encoder.layer[0], hidden, mask)
    heads = bert.config.num_attention_heads
    # Each real query's attention sums to 1 per head: the scores of a row sum to heads x its real tokens.
    torch.testing.assert_close(scores.sum(1), (lengths * heads).float())
    assert (scores[~mask] == 0).all()


def test_topk_keeping_everything_equals_the_plain_encoder_exactly():
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    with torch.no_grad():
        plain = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden, out_mask = PoolingEncoder(bert, PoolPosition.parse("layer:1"), PoolSpec.parse("topk:1"))(ids, mask)
    assert torch.equal(hidden, plain) and torch.equal(out_mask, mask)


def test_topk_halves_the_sequence_after_its_layer_with_the_kept_tokens_real_first():
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    with torch.no_grad():
        hidden, out_mask = PoolingEncoder(bert, PoolPosition.parse("layer:1,layer:2"), PoolSpec.parse("topk:0.5"))(
            ids, mask
        )
    assert hidden.shape[1] == 4  # 16 -> 8 -> 4
    assert out_mask.sum(1).tolist() == [4, 4, 3, 1]  # rows of 16, 11, 3 and 1 real tokens
    assert all(row[: int(row.sum())].all() for row in out_mask)  # still right-padded


# --- [CLS] kept apart, and the first K layers ------------------------------------------------------------------


def test_separate_cls_passes_cls_unpooled_and_pools_the_windows_after_it():
    x = torch.randn(2, 7, 3)
    mask = lengths_mask(torch.tensor([7, 2]), 7)
    spec = PoolSpec.parse("avg:2x1")
    pooled, pooled_mask = pool_sequence_cls(x, mask, spec, separate_cls=True)
    assert torch.equal(pooled[:, 0], x[:, 0])  # [CLS] alone
    torch.testing.assert_close(pooled[0, 1:], (x[0, 1:7:2] + x[0, 2:7:2]) / 2)
    torch.testing.assert_close(pooled[1, 1], x[1, 1])  # a window of one real token and padding: the token
    assert pooled_mask.tolist() == [[True] * 4, [True, True, False, False]]
    # Through the encoder: 16 positions -> [CLS] + 7 windows, the mask pooled with them.
    bert = tiny_bert_model(layers=2)
    ids, lengths = batch()
    with torch.no_grad():
        hidden, out_mask = PoolingEncoder(bert, PoolPosition.parse("layer:1"), spec, separate_cls=True)(
            ids, lengths_mask(lengths, ids.shape[1])
        )
    assert hidden.shape[1] == 8 and out_mask.sum(1).tolist() == [8, 6, 2, 1]


def test_keep_layers_runs_the_first_layers_only_and_counts_their_flops():
    bert = tiny_bert_model(layers=2)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    shallow = truncated(bert, 1)
    assert len(shallow.encoder.layer) == 1 and shallow.config.num_hidden_layers == 1 and len(bert.encoder.layer) == 2
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[1]
        hidden, _ = PoolingEncoder(shallow, PoolPosition.parse("input"), PoolSpec())(ids, mask)
    torch.testing.assert_close(hidden[mask], expected[mask])

    from bertpooled.model.build import ModelSpec, build

    def backbone_flops(keep: int) -> float:
        spec = ModelSpec(
            "encoder", PoolSpec(), PoolPosition.parse("input"), 4, "mask", "keras", 16, "t", keep_layers=keep
        )
        return cost.flops_per_example(build(spec, backbone=bert), ids, lengths)[0]

    full, half = backbone_flops(0), backbone_flops(1)
    assert 0.4 * full < half < 0.6 * full  # the embedding layer counts nothing: one of two layers' FLOPs


@pytest.mark.parametrize(
    "sets, words",
    [
        ({"features": "encoder", "pool": "topk:0.5", "pool_at": "layer:0"}, ["pool_at", "K >= 1"]),
        ({"features": "encoder", "pool": "topk:0.5", "pool_at": "output"}, ["pool_at"]),
        ({"features": "encoder", "pool": "topk:1.5", "pool_at": "layer:1"}, ["topk", "(0, 1]"]),
        ({"features": "encoder", "separate_cls": "true"}, ["separate_cls"]),
        ({"keep_layers": "2"}, ["keep_layers", "features=encoder"]),
        ({"features": "encoder", "keep_layers": "-1"}, ["keep_layers"]),
        ({"features": "encoder", "keep_layers": "2", "pool": "avg:2x1", "pool_at": "layer:2"}, ["keep_layers"]),
        ({"features": "encoder", "finetune": "true", "distill_from": "abc"}, ["distill_from", "runs:/"]),
        ({"features": "encoder", "init_from": "0" * 32}, ["init_from", "finetune=true"]),
        ({"features": "encoder", "finetune": "true", "distill_alpha": "1.5"}, ["distill_alpha"]),
        ({"features": "encoder", "finetune": "true", "distill_temperature": "nan"}, ["distill_temperature"]),
        ({"features": "encoder", "finetune": "true", "distill_hidden": "0.5"}, ["distill_hidden", "teacher"]),
    ],
)
def test_every_bad_recipe_setting_is_one_line_naming_the_field(sets, words):
    with pytest.raises(BertpooledError) as err:
        load_config(None, sets)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


# --- runs that build on runs -----------------------------------------------------------------------------------


def test_a_run_started_from_a_tracked_model_reproduces_its_predictions_before_training(
    store, teacher, tiny_bert, tiny_imdb
):
    from bertpooled.run import prepare
    from bertpooled.run.measure import Phases, predict_logits
    from bertpooled.run.network import build_model
    from bertpooled.run.prepare import model_inputs

    phases = Phases()
    for ref in (teacher, f"runs:/{teacher}/model"):
        config = load_config(
            SMOKE,
            {
                "model": str(tiny_bert),
                "data": str(tiny_imdb),
                "max_len": 16,
                "features": "encoder",
                "finetune": True,
                "init_from": ref,
                "seed": 7,
            },
        )
        info = prepare.check(config)
        imdb, train_split, test_split = prepare.read_data(config, phases)
        prepared = prepare.prepare(
            config, info, imdb, train_split, test_split, phases, rt=runtime.Runtime.resolve(config)
        )
        student = build_model(prepared)
        source = prepared.sources["init_from"]
        from bertpooled.model.build import ModelSpec, from_state

        original = from_state(ModelSpec.from_json(source.spec), source.state())
        inputs = model_inputs(prepared, "test")
        rt = prepared.rt
        assert torch.equal(
            predict_logits(student, *inputs, 64, rt.device, rt.precision),
            predict_logits(original, *inputs, 64, rt.device, rt.precision),
        )


def test_the_chain_teacher_to_student_is_logged_and_distillation_at_alpha_1_equals_plain_training(
    store, teacher, tiny_bert, tiny_imdb
):
    pooled = ("--set", "pool=avg:2x1", "--set", "pool_at=layer:1", "--set", f"init_from={teacher}", "--epochs", "1")
    plain = trained_run(store, train(tiny_bert, tiny_imdb, *pooled))
    alpha1 = trained_run(
        store, train(tiny_bert, tiny_imdb, *pooled, "--set", f"distill_from={teacher}", "--set", "distill_alpha=1")
    )
    distilled = trained_run(store, train(tiny_bert, tiny_imdb, *pooled, "--set", f"distill_from={teacher}"))
    a, b = weights_of(store, plain), weights_of(store, alpha1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = weights_of(store, distilled)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # alpha 0.5 learns from the teacher too

    client = MlflowClient(store)
    run = client.get_run(distilled)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["teacher/run_id"] == params["init/run_id"] == teacher
    assert params["teacher/uri"] == f"runs:/{teacher}/model" and len(params["teacher/weights_sha256"]) == 64
    assert tags["distill_from"] == tags["init_from"] == teacher
    assert tags["variant"] == "encoder-ft-avg:2x1@layer:1+init+kd"
    assert metrics["time/teacher_s"] > 0
    # The teacher's outputs were computed by the alpha=1 run and read from the cache by this one.
    assert client.get_run(alpha1).data.metrics["teacher/cache_hit"] == 0.0 and metrics["teacher/cache_hit"] == 1.0


def test_another_teacher_misses_the_teacher_cache(store, teacher, tiny_bert, tiny_imdb):
    other = trained_run(store, train(tiny_bert, tiny_imdb, "--seed", "1"))
    kd = ("--set", f"init_from={teacher}", "--epochs", "1")
    first = trained_run(store, train(tiny_bert, tiny_imdb, *kd, "--set", f"distill_from={teacher}"))
    second = trained_run(store, train(tiny_bert, tiny_imdb, *kd, "--set", f"distill_from={other}"))
    client = MlflowClient(store)
    assert client.get_run(first).data.metrics["teacher/cache_hit"] == 0.0
    assert client.get_run(second).data.metrics["teacher/cache_hit"] == 0.0


def test_distilling_hidden_states_trains_and_logs(store, teacher, tiny_bert, tiny_imdb):
    run_id = trained_run(
        store,
        train(
            tiny_bert,
            tiny_imdb,
            *("--set", "pool=avg:2x1", "--set", "pool_at=layer:1", "--set", f"init_from={teacher}", "--epochs", "1"),
            *("--set", f"distill_from={teacher}", "--set", "distill_hidden=1.0"),
        ),
    )
    assert MlflowClient(store).get_run(run_id).data.params["config/distill_hidden"] == "1.0"


def test_a_truncated_student_from_a_full_teacher_serves_at_its_depth(store, teacher, tiny_bert, tiny_imdb):
    run_id = trained_run(
        store,
        train(tiny_bert, tiny_imdb, "--set", "keep_layers=1", "--set", f"init_from={teacher}", "--epochs", "1"),
    )
    weights = weights_of(store, run_id)
    assert not [k for k in weights if ".layer.1." in k] and [k for k in weights if ".layer.0." in k]
    mlflow.set_tracking_uri(store)
    try:
        preds = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(["great film", "awful plot"])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(preds) == 2


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--lstm-units", "8"), ["init_from", "lstm_units"]),
        (("--set", "pool=avg:2x2", "--set", "pool_at=output"), ["init_from", "features"]),
    ],
)
def test_a_model_that_cannot_seed_the_run_is_refused_in_one_line_before_any_run(
    store, teacher, tiny_bert, tiny_imdb, extra, words
):
    before = {r.info.run_id for r in runs_in(store)}
    result = train(tiny_bert, tiny_imdb, "--set", f"init_from={teacher}", *extra)
    one_error_line(result, *words)
    assert {r.info.run_id for r in runs_in(store)} == before


@pytest.mark.parametrize("option", ["init_from", "distill_from"])
def test_a_source_that_does_not_exist_is_refused_in_one_line_before_any_run(store, tiny_bert, tiny_imdb, option):
    result = train(tiny_bert, tiny_imdb, "--set", f"{option}={'0' * 32}")
    one_error_line(result, option, "no model found")
    assert runs_in(store) == []


def test_mlflow_run_takes_the_recipe_as_parameters_and_logs_the_chain(
    store, teacher, tiny_bert, tiny_imdb, monkeypatch
):
    from conftest import mlflow_run

    # The teacher's in-process run set MLflow's experiment variables, which `mlflow run` would see beside its own.
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)

    params = {"config": SMOKE, "model": str(tiny_bert), "data": str(tiny_imdb), "max_len": "16", "epochs": "1"}
    params |= {"features": "encoder", "finetune": "true", "pool": "avg:2x1", "pool_at": "layer:1"}
    params |= {"init_from": teacher, "distill_from": f"runs:/{teacher}/model"}
    done = mlflow_run(params, store)
    assert done.returncode == 0, done.stderr[-2000:]
    (student,) = [r for r in runs_in(store) if r.info.run_id != teacher and r.data.tags.get("distill_from")]
    assert student.data.params["teacher/run_id"] == student.data.params["init/run_id"] == teacher
    assert student.info.status == "FINISHED"


@pytest.mark.parametrize("option", ["init_from", "distill_from"])
def test_a_source_whose_weights_do_not_fit_its_spec_is_refused_in_one_line_before_any_run(
    store, teacher, tiny_bert, tiny_imdb, option
):
    """A logged model is a file anyone with access to the store can change: its weights' shapes are read (from the
    safetensors header) and held against its spec before a run builds on it."""
    from safetensors.torch import load_file, save_file

    # The logged model's own file in the store (MLflow 3 keeps models beside the runs, not in the checkpoints).
    experiment = Path(MlflowClient(store).get_run(teacher).info.artifact_uri.replace("file://", "")).parents[1]
    (weights,) = [p for p in experiment.rglob("weights.safetensors") if "models" in p.parts]
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    save_file(state, str(weights))
    before = {r.info.run_id for r in runs_in(store)}
    one_error_line(train(tiny_bert, tiny_imdb, "--set", f"{option}={teacher}"), option)
    assert {r.info.run_id for r in runs_in(store)} == before
