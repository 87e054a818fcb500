"""Pooling inside the language model: layer:K, output pooling, FLOPs, the feature cache, every bad combination."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import ROOT, SMOKE, tiny_bert_model
from conftest import id_batch as batch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.config import load_config
from bertpooled.data import features
from bertpooled.errors import BertpooledError
from bertpooled.model.encoder import PoolingEncoder
from bertpooled.model.pooling import PoolPosition, PoolSpec, lengths_mask, pool, pooled_lengths
from bertpooled.run import cost, measure, prepare, runtime

# --- masked pooling against a direct computation -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_masked_pooling_over_both_axes_matches_a_direct_computation_and_skips_padding(kind):
    torch.manual_seed(0)
    x = torch.randn(3, 9, 6)
    lengths = torch.tensor([9, 4, 1])
    spec = PoolSpec.parse(f"{kind}:3x2")
    y, m = pool(x, lengths_mask(lengths, 9), spec)
    assert y.shape == (3, 3, 3)
    reduce = (lambda t: t.mean()) if kind == "avg" else (lambda t: t.max())
    for b in range(3):
        for w in range(3):
            real = [t for t in range(3 * w, 3 * w + 3) if t < lengths[b]]
            assert bool(m[b, w]) == bool(real)
            for f in range(3):
                expected = reduce(x[b, real, 2 * f : 2 * f + 2]) if real else torch.tensor(0.0)
                torch.testing.assert_close(y[b, w, f], expected)
    assert m.sum(1).tolist() == pooled_lengths(lengths, spec, 9).tolist() == [3, 2, 1]


# --- layer:K ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2])
def test_layer_k_pooling_with_window_1_equals_the_plain_encoder_exactly(k):
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    with torch.no_grad():
        plain = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden, out_mask = PoolingEncoder(bert, PoolPosition.parse(f"layer:{k}"), PoolSpec.parse("avg:1x1"))(ids, mask)
    assert torch.equal(hidden, plain)
    assert torch.equal(out_mask, mask)


@pytest.mark.parametrize("spec, length, expected_len", [("avg:2x1", 16, 8), ("max:4x1", 16, 4), ("avg:3x1", 16, 5)])
def test_layer_k_pooling_shortens_the_sequence_and_pools_the_mask_with_it(spec, length, expected_len):
    bert = tiny_bert_model()
    ids, lengths = batch(length=length)
    pooled = PoolSpec.parse(spec)
    with torch.no_grad():
        hidden, mask = PoolingEncoder(bert, PoolPosition.parse("layer:1"), pooled)(ids, lengths_mask(lengths, length))
    assert hidden.shape == (4, expected_len, 32)
    assert mask.sum(1).tolist() == pooled_lengths(lengths, pooled, length).tolist()


def test_padding_never_reaches_the_pooled_encoder_output():
    bert = tiny_bert_model()
    ids, lengths = batch()
    other = ids.clone()
    other[lengths_mask(lengths, ids.shape[1]).logical_not()] = 7  # different tokens where the padding is
    enc = PoolingEncoder(bert, PoolPosition.parse("layer:1"), PoolSpec.parse("max:2x1"))
    with torch.no_grad():
        a, mask = enc(ids, lengths_mask(lengths, 16))
        b, _ = enc(other, lengths_mask(lengths, 16))
    torch.testing.assert_close(a[mask], b[mask])


# --- FLOPs --------------------------------------------------------------------------------------------------


def layer_flops(tokens: int, hidden: int = 32, intermediate: int = 64) -> int:
    """One BERT layer on `tokens` positions: Q, K, V, output and the two FFN matmuls, plus QK^T and AV."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * tokens * tokens * hidden


def test_pooling_at_layer_1_cuts_the_counted_flops_by_the_expected_share():
    from bertpooled.model.heads import EncoderLSTMClassifier

    bert = tiny_bert_model(layers=2)
    ids, lengths = batch(length=32)
    plain = EncoderLSTMClassifier(PoolingEncoder(bert, PoolPosition("output"), PoolSpec()), 32, PoolSpec(), units=4)
    pooled = EncoderLSTMClassifier(
        PoolingEncoder(bert, PoolPosition.parse("layer:1"), PoolSpec.parse("avg:2x1")), 32, PoolSpec(), units=4
    )
    plain_backbone, plain_head = cost.flops_per_example(plain, ids, lengths)
    pooled_backbone, pooled_head = cost.flops_per_example(pooled, ids, lengths)
    assert plain_backbone == 2 * layer_flops(32)
    assert pooled_backbone == layer_flops(32) + layer_flops(16)
    assert pooled_backbone / plain_backbone == pytest.approx(0.725)
    # The LSTM reads half the steps: its input projection and recurrence halve, the dense layer does not.
    lstm_step = 2 * 32 * 16 + 2 * 4 * 16
    assert plain_head == 32 * lstm_step + 2 * 4 and pooled_head == 16 * lstm_step + 2 * 4
    # SDPA and oneDNN are back in place after counting.
    assert bert.config._attn_implementation == "sdpa" and torch.backends.mkldnn.enabled


def test_a_word_embedding_lookup_costs_no_backbone_flops():
    from bertpooled.model.heads import PooledLSTMClassifier

    model = PooledLSTMClassifier(torch.randn(40, 32), PoolSpec.parse("avg:2x2"), units=4)
    ids, lengths = batch()
    backbone, head = cost.flops_per_example(model, ids, lengths)
    assert backbone == 0 and head == 8 * (2 * 16 * 16 + 2 * 4 * 16) + 2 * 4


# --- the feature cache ----------------------------------------------------------------------------------------


def prepared_for(overrides: dict, tiny_bert, tiny_imdb):
    cfg = load_config(
        SMOKE, {"model": str(tiny_bert), "data": str(tiny_imdb), "max_len": 16, "features": "encoder", **overrides}
    )
    info = prepare.check(cfg)
    phases = measure.Phases()
    imdb, tr, te = prepare.read_data(cfg, phases, progress=False)
    return prepare.prepare(cfg, info, imdb, tr, te, phases, rt=runtime.Runtime.resolve(cfg), progress=False)


@pytest.fixture()
def counted_compute(monkeypatch):
    calls = []
    real = features.compute

    def compute(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "compute", compute)
    return calls


def test_frozen_features_are_computed_once_and_the_backbone_is_not_run_on_a_hit(
    store, tiny_bert, tiny_imdb, counted_compute
):
    first = prepared_for({"pool": "avg:2x1", "pool_at": "layer:1"}, tiny_bert, tiny_imdb)
    assert counted_compute == ["features train", "features test"] and not first.features_cache_hit
    assert first.train_features.hidden.dtype == torch.float16 and first.train_features.hidden.shape[1:] == (8, 32)
    files = list((Path(store.removeprefix("sqlite:///")).parent / "cache" / "features").glob("*.safetensors"))
    assert len(files) == 2

    second = prepared_for({"pool": "avg:2x1", "pool_at": "layer:1", "seed": 5}, tiny_bert, tiny_imdb)
    assert counted_compute == ["features train", "features test"]  # no new backbone pass
    assert second.features_cache_hit
    assert torch.equal(second.train_features.hidden, first.train_features.hidden)
    assert torch.equal(second.test_features.lengths, first.test_features.lengths)


@pytest.mark.parametrize(
    "changed",
    [{"pool_at": "layer:0"}, {"pool": "max:2x1"}, {"max_len": 12}, {"max_train_examples": 32}],
    ids=["position", "pool", "max_len", "data subset"],
)
def test_anything_that_changes_the_features_misses_the_cache(store, tiny_bert, tiny_imdb, counted_compute, changed):
    prepared_for({"pool": "avg:2x1", "pool_at": "layer:1"}, tiny_bert, tiny_imdb)
    again = prepared_for({"pool": "avg:2x1", "pool_at": "layer:1", **changed}, tiny_bert, tiny_imdb)
    assert not again.features_cache_hit and len(counted_compute) == 4 - ("max_train_examples" in changed)


def test_other_backbone_weights_miss_the_cache(store, tiny_bert, tiny_imdb, counted_compute, tmp_path):
    import shutil

    prepared_for({}, tiny_bert, tiny_imdb)
    other = tmp_path / "other-bert"
    shutil.copytree(tiny_bert, other)
    tiny_bert_model(seed=1).save_pretrained(other)  # same architecture and tokenizer, other weights
    again = prepared_for({}, other, tiny_imdb)
    assert not again.features_cache_hit and len(counted_compute) == 4


def test_pooling_at_the_output_reuses_the_unpooled_encoders_entry(store, tiny_bert, tiny_imdb, counted_compute):
    prepared_for({}, tiny_bert, tiny_imdb)
    pooled = prepared_for({"pool": "max:2x2", "pool_at": "output"}, tiny_bert, tiny_imdb)
    assert pooled.features_cache_hit and len(counted_compute) == 2


# --- runs end to end: metrics, models -------------------------------------------------------------------------


def train_cli(*args):
    return CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            SMOKE,
            "--max-len",
            "16",
            "--epochs",
            "1",
            "--set",
            "latency_texts=3",
            "--set",
            "throughput_batches=1",
            *args,
        ],
    )


def only_run(store):
    client = MlflowClient(store)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps)
    assert len(runs) == 1
    return runs[0]


COST_METRICS = {
    "cost/backbone_flops_per_example",
    "cost/head_flops_per_example",
    "latency/p50_ms",
    "latency/p95_ms",
    "throughput/infer_examples_per_s",
    "memory/peak_mb",
    "runtime/threads",
}


@pytest.mark.parametrize(
    "sets, name",
    [
        (["features=encoder"], "encoder"),
        (["features=encoder", "pool=avg:2x2", "pool_at=output"], "encoder-avg:2x2@output"),
        (["features=encoder", "pool=max:2x1", "pool_at=layer:1"], "encoder-max:2x1@layer:1"),
        (
            ["features=encoder", "pool=avg:2x1", "pool_at=layer:0", "finetune=true", "backbone_lr=1e-3"],
            "encoder-ft-avg:2x1@layer:0",
        ),
        # Two stages: the served model rebuilds both from model_config.json.
        (["features=encoder", "pool=avg:2x1", "pool_at=layer:0,layer:1"], "encoder-avg:2x1@layer:0,layer:1"),
        (
            ["features=encoder", "pool=max:2x1", "pool_at=layer:0,layer:1", "finetune=true", "backbone_lr=1e-3"],
            "encoder-ft-max:2x1@layer:0,layer:1",
        ),
    ],
)
def test_every_encoder_variant_trains_logs_its_cost_and_serves_without_pickle(store, tiny_bert, tiny_imdb, sets, name):
    args = [a for s in sets for a in ("--set", s)]
    result = train_cli("--model", str(tiny_bert), "--data", str(tiny_imdb), *args)
    assert result.exit_code == 0, result.output
    run = only_run(store)
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["mlflow.runName"].startswith(f"{name}-{tiny_bert.name}-s0-") and tags["variant"] == name
    assert set(metrics) >= COST_METRICS
    assert metrics["cost/backbone_flops_per_example"] > 0 and metrics["cost/head_flops_per_example"] > 0
    finetune = "finetune=true" in sets
    assert ("features/cache_hit" in metrics) == (not finetune)
    assert (metrics["params/backbone_trainable"] > 0) == finetune
    # On CPU: auto is bf16 for encoder work where the CPU has it natively, else fp32; no GPU-only cost metrics.
    from bertpooled.model.inference import cpu_has_bf16

    expected_precision = "bf16" if cpu_has_bf16() else "fp32"
    assert run.data.params["runtime/precision"] == expected_precision and run.data.params["config/precision"] == "auto"
    assert "runtime/gpu" not in run.data.params and not [k for k in metrics if k.endswith("_b256")]

    mlflow.set_tracking_uri(store)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
        names = {p.name for p in folder.rglob("*") if p.is_file()}
        assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin"))]
        from safetensors import safe_open

        (weights,) = folder.rglob("weights.safetensors")
        with safe_open(str(weights), "pt") as fh:
            assert "encoder.model.embeddings.word_embeddings.weight" in fh.keys()  # noqa: SIM118  (safe_open is no mapping)
        config = json.loads(next(folder.rglob("model_config.json")).read_text())
        assert config["features"] == "encoder" and config["backbone_config"]["model_type"] == "bert"
        assert config["pool_at"] == dict(s.split("=") for s in sets).get("pool_at", "input")
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        preds = model.predict(["great wonderful film", "awful boring plot"], params={"predict_method": "predict_proba"})
        assert ((preds >= 0) & (preds <= 1)).all() and preds.shape == (2, 2)
        # The served model reproduces the run's test predictions (trained on float16-rounded cached features).
        logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/predictions/test.csv").splitlines()[1:4]
        from bertpooled import data

        imdb = data.load_imdb(str(tiny_imdb))
        texts = dict(zip(imdb.test.ids, imdb.test.texts, strict=True))
        ids = [line.split(",")[0] for line in logged]
        served = model.predict([texts[i] for i in ids], params={"predict_method": "predict_proba"})[:, 1]
        expected = np.array([float(line.split(",")[2]) for line in logged])
        np.testing.assert_allclose(served, expected, atol=2e-3)
    finally:
        mlflow.set_tracking_uri(None)


def test_the_seed_modes_log_the_cost_contract_with_a_free_backbone(store, tiny_bert, tiny_imdb):
    result = train_cli("--model", str(tiny_bert), "--data", str(tiny_imdb), "--mode", "pool")
    assert result.exit_code == 0, result.output
    metrics = only_run(store).data.metrics
    assert set(metrics) >= COST_METRICS and "features/cache_hit" not in metrics
    assert metrics["cost/backbone_flops_per_example"] == 0
    assert metrics["cost/head_flops_per_example"] == 8 * (2 * 16 * 64 + 2 * 16 * 64) + 2 * 16  # 8 steps of 16 inputs


# --- every bad combination: one line, before a run exists ------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"pool_at": "middle"}, ["pool_at='middle'", "layer:K"]),
        ({"pool_at": "layer:x"}, ["pool_at='layer:x'"]),
        ({"features": "hidden"}, ["features='hidden'", "embeddings or encoder"]),
        ({"pool_at": "output"}, ["pool_at='output'", "features=encoder"]),
        ({"pool_at": "layer:2"}, ["pool_at='layer:2'", "features=encoder"]),
        ({"finetune": True}, ["finetune=True", "features=encoder"]),
        ({"features": "encoder", "padding": "read"}, ["padding='read'", "mask with features=encoder"]),
        ({"features": "encoder", "mode": "pool"}, ["pool_at='input'", "layer:0"]),
        ({"features": "encoder", "pool": "avg:2x2", "pool_at": "layer:2"}, ["pool='avg:2x2'", "avg:2x1"]),
        ({"features": "encoder", "backbone_lr": 0}, ["backbone_lr=0"]),
        ({"mode": "reference", "features": "encoder"}, ["mode='reference'"]),
        ({"latency_texts": 0}, ["latency_texts=0"]),
    ],
)
def test_bad_combinations_are_one_line_config_errors(overrides, words):
    with pytest.raises(BertpooledError) as err:
        load_config(overrides=overrides)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_layer_k_past_the_encoder_and_other_architectures_fail_in_check(tiny_bert, tmp_path):
    from transformers import DistilBertConfig

    base = {"model": str(tiny_bert), "features": "encoder", "pool": "avg:2x1"}
    with pytest.raises(BertpooledError, match=r"pool_at=layer:2 is past the 2 encoder layers .* layer:0 to layer:1"):
        prepare.check(load_config(overrides={**base, "pool_at": "layer:2", "max_len": 16}))
    folder = tmp_path / "distil"
    DistilBertConfig(
        vocab_size=40, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    ).save_pretrained(folder)
    other = {**base, "model": str(folder), "max_len": 16}
    with pytest.raises(BertpooledError, match=r"needs a BERT-family backbone .* 'distilbert'") as err:
        prepare.check(load_config(overrides={**other, "pool_at": "layer:1"}))
    assert "\n" not in str(err.value)
    prepare.check(load_config(overrides={**other, "pool_at": "output"}))  # output pooling works on any architecture


def test_a_bad_combination_on_the_command_line_exits_2_and_leaves_no_run(store, tiny_bert, tiny_imdb):
    result = train_cli(
        "--model",
        str(tiny_bert),
        "--data",
        str(tiny_imdb),
        "--features",
        "encoder",
        "--pool",
        "avg:2x2",
        "--pool-at",
        "layer:1",
        "--frozen",
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "sequence-only" in errors[0]
    client = MlflowClient(store)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("encoder*.yaml")), ids=lambda p: p.stem)
def test_the_encoder_experiments_fit_the_default_backbone(path):
    from bertpooled.model import backbone
    from bertpooled.model.encoder import check_layer_pooling

    cfg = load_config(path)
    assert cfg.features == "encoder" and cfg.model == "minilm"
    info = backbone.inspect(cfg.model)
    check_layer_pooling(info.model_type, info.num_layers, PoolPosition.parse(cfg.pool_at), cfg.model)
