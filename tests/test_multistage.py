"""Multi-stage pooling inside the encoder (`layer:2,layer:4`), fine-tuning at every position, precision, GPU cost
guards."""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE, tiny_bert_model
from conftest import id_batch as batch

from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model.encoder import PoolingEncoder
from bertpooled.model.heads import EncoderLSTMClassifier
from bertpooled.model.pooling import PoolPosition, PoolSpec, lengths_mask, pooled_length, pooled_lengths
from bertpooled.run import cost, fit, frozen, measure, network, prepare, runtime


def layer_flops(tokens: int, hidden: int = 32, intermediate: int = 64) -> int:
    """One BERT layer on `tokens` positions: Q, K, V, output and the two FFN matmuls, plus QK^T and AV."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * tokens * tokens * hidden


# --- parsing and validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, layers, canonical",
    [
        ("layer:2", (2,), "layer:2"),
        ("layer:2,layer:4", (2, 4), "layer:2,layer:4"),
        (" Layer:0 , layer:1,layer:5 ", (0, 1, 5), "layer:0,layer:1,layer:5"),
    ],
)
def test_pool_at_parses_one_or_several_stages_once_into_a_typed_position(text, layers, canonical):
    position = PoolPosition.parse(text)
    assert position.where == "layer" and position.layers == layers and position.stages == len(layers)
    assert str(position) == canonical and PoolPosition.parse(str(position)) == position
    cfg = load_config(overrides={"features": "encoder", "pool": "avg:2x1", "pool_at": text})
    assert cfg.pool_at == canonical and cfg.position == position


@pytest.mark.parametrize(
    "pool_at, pool, words",
    [
        ("layer:4,layer:2", "avg:2x1", ["layer:4,layer:2", "increasing layer order"]),
        ("layer:2,layer:2", "avg:2x1", ["layer:2,layer:2", "once"]),
        ("layer:2,output", "avg:2x1", ["layer:2,output", "layer:K1,layer:K2"]),
        ("layer:1,", "avg:2x1", ["layer:1,"]),
        ("layer:1,layer:3", "avg:2x2", ["pool='avg:2x2'", "sequence-only", "avg:2x1"]),
    ],
)
def test_bad_multi_stage_positions_are_one_line_config_errors(pool_at, pool, words):
    with pytest.raises(BertpooledError) as err:
        load_config(overrides={"features": "encoder", "pool": pool, "pool_at": pool_at})
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_stages_past_the_encoder_or_pooling_the_sequence_away_fail_in_check(tiny_bert):
    base = {"model": str(tiny_bert), "features": "encoder", "pool": "avg:3x1"}
    with pytest.raises(BertpooledError, match=r"pool_at=layer:0,layer:2 is past the 2 encoder layers"):
        prepare.check(load_config(overrides={**base, "pool_at": "layer:0,layer:2", "max_len": 16}))
    # 8 -> 2 -> 0 positions: one stage would leave 2, the second pools them away.
    prepare.check(load_config(overrides={**base, "pool_at": "layer:1", "max_len": 8}))
    with pytest.raises(
        BertpooledError, match=r"max_len=8 is shorter than .* pooled 2 times \(pool_at=layer:0,layer:1\)"
    ) as err:
        prepare.check(load_config(overrides={**base, "pool_at": "layer:0,layer:1", "max_len": 8}))
    assert "\n" not in str(err.value)


# --- the encoder: shapes, masks, equality with BertModel ------------------------------------------------------


def test_each_stage_halves_the_sequence_again_and_pools_the_mask_with_it():
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch(length=16)
    spec = PoolSpec.parse("avg:2x1")
    encoders = {
        at: PoolingEncoder(bert, PoolPosition.parse(at), spec)
        for at in ("layer:1", "layer:1,layer:2", "layer:0,layer:1,layer:2")
    }
    with torch.no_grad():
        out = {at: enc(ids, lengths_mask(lengths, 16)) for at, enc in encoders.items()}
    assert [h.shape[1] for h, _ in out.values()] == [8, 4, 2] == [pooled_length(16, spec, n) for n in (1, 2, 3)]
    expected = lengths
    for stage, (hidden, mask) in enumerate(out.values(), 1):
        expected = pooled_lengths(expected, spec, pooled_length(16, spec, stage - 1))
        assert hidden.shape == (4, pooled_length(16, spec, stage), 32)
        assert mask.sum(1).tolist() == expected.tolist()
    # [16, 11, 3, 1] real tokens: a 1-token review keeps one real position however many stages pool it.
    assert out["layer:0,layer:1,layer:2"][1].sum(1).tolist() == [2, 2, 1, 1]


@pytest.mark.parametrize("at", ["layer:0,layer:2", "layer:0,layer:1,layer:2"])
def test_several_stages_with_window_1_equal_the_plain_bert_model_exactly(at):
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch()
    mask = lengths_mask(lengths, ids.shape[1])
    with torch.no_grad():
        plain = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden, out_mask = PoolingEncoder(bert, PoolPosition.parse(at), PoolSpec.parse("avg:1x1"))(ids, mask)
    assert torch.equal(hidden, plain) and torch.equal(out_mask, mask)


def test_padding_never_reaches_a_two_stage_encoders_output():
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch()
    other = ids.clone()
    other[lengths_mask(lengths, 16).logical_not()] = 7
    enc = PoolingEncoder(bert, PoolPosition.parse("layer:1,layer:2"), PoolSpec.parse("max:2x1"))
    with torch.no_grad():
        a, mask = enc(ids, lengths_mask(lengths, 16))
        b, _ = enc(other, lengths_mask(lengths, 16))
    torch.testing.assert_close(a[mask], b[mask])


def test_counted_backbone_flops_fall_with_every_further_stage_as_the_layer_formula_says():
    bert = tiny_bert_model(layers=3)
    ids, lengths = batch(length=32)
    spec = PoolSpec.parse("avg:2x1")

    def flops(at: str) -> float:
        model = EncoderLSTMClassifier(PoolingEncoder(bert, PoolPosition.parse(at), spec), 32, PoolSpec(), units=4)
        return cost.flops_per_example(model, ids, lengths)[0]

    counted = [flops(at) for at in ("output", "layer:1", "layer:1,layer:2")]
    assert counted == [
        3 * layer_flops(32),
        layer_flops(32) + 2 * layer_flops(16),
        layer_flops(32) + layer_flops(16) + layer_flops(8),
    ]
    assert counted[0] > counted[1] > counted[2]


def test_the_feature_cache_key_names_every_stage_and_one_stage_keeps_its_old_key():
    one = load_config(overrides={"features": "encoder", "pool": "avg:2x1", "pool_at": "layer:2"})
    two = load_config(overrides={"features": "encoder", "pool": "avg:2x1", "pool_at": "layer:2,layer:4"})
    assert frozen.inside_spec(one) == "avg:2x1@layer:2"  # what single-stage entries were stored under
    assert frozen.inside_spec(two) == "avg:2x1@layer:2,layer:4"


# --- fine-tuning at every position ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool, pool_at", [("none", "input"), ("avg:2x2", "output"), ("avg:2x1", "layer:1"), ("max:2x1", "layer:0,layer:1")]
)
def test_fine_tuning_with_pooling_trains_the_backbone_and_the_head(store, tiny_bert, tiny_imdb, pool, pool_at):
    cfg = load_config(
        SMOKE,
        {
            "model": str(tiny_bert),
            "data": str(tiny_imdb),
            "max_len": 16,
            "features": "encoder",
            "finetune": True,
            "pool": pool,
            "pool_at": pool_at,
            "epochs": 2,
            "backbone_lr": 1e-3,
        },
    )
    info = prepare.check(cfg)
    phases = measure.Phases()
    imdb, tr, te = prepare.read_data(cfg, phases, progress=False)
    prepared = prepare.prepare(cfg, info, imdb, tr, te, phases, rt=runtime.Runtime.resolve(cfg), progress=False)
    assert not prepared.cached  # fine-tuning reads token ids, never frozen features
    model = network.build_model(prepared)
    before = {k: v.clone() for k, v in model.encoder.model.state_dict().items()}
    history = fit.fit(model, prepared, progress=False).history
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h.loss)) for h in history)
    after = model.encoder.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "embeddings.word_embeddings.weight" in changed and any("encoder.layer.1." in k for k in changed)
    # The loaded backbone the run started from is untouched: fine-tuning trains a copy.
    assert torch.equal(
        prepared.backbone_model.embeddings.word_embeddings.weight, before["embeddings.word_embeddings.weight"]
    )


# --- precision ------------------------------------------------------------------------------------------------


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu_for_the_head_alone():
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert runtime.resolve_precision("bf16", torch.device("cuda:1")) == "bf16"
    # bf16 on CPU: tests/test_bf16_cpu.py


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bf16_with_device_auto_fails_in_check_before_any_run_on_a_machine_without_cuda_or_bf16(tiny_bert, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with pytest.raises(BertpooledError, match="precision=bf16 needs a CUDA GPU or a CPU with AVX512-BF16"):
        prepare.check(load_config(overrides={"model": str(tiny_bert), "precision": "bf16", "max_len": 16}))


def test_autocast_is_bf16_for_a_resolved_bf16_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: calls.append(kwargs))
    runtime.autocast(torch.device("cuda"), "bf16")
    runtime.autocast(torch.device("cpu"), "fp32")
    assert calls == [
        {"device_type": "cuda", "dtype": torch.bfloat16, "enabled": True},
        {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": False},
    ]


@pytest.mark.parametrize("amp, precision", [("true", "auto"), ("false", "fp32"), (True, "auto")])
def test_old_configs_with_amp_still_load_as_the_precision_they_meant(tmp_path, amp, precision):
    old = tmp_path / "old.yaml"
    old.write_text(f"mode: pool\namp: {str(amp).lower()}\n")
    assert load_config(old).precision == precision
    assert load_config(None, {"amp": amp}).precision == precision  # a logged run's params, as resume reads them
    assert load_config(old, {"precision": "fp32"}).precision == "fp32"
    assert "amp" not in load_config(old).to_dict()


# --- cost on a GPU: guarded so the CPU path is what it was ----------------------------------------------------


def test_gpu_only_cost_extras_are_off_on_cpu_and_on_for_cuda(monkeypatch):
    assert cost.extra_batch_sizes(torch.device("cpu")) == () and cost.runtime_params(torch.device("cpu")) == {}
    assert cost.extra_batch_sizes(torch.device("cuda")) == (256,)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert cost.runtime_params(torch.device("cuda"))["runtime/gpu"] == "NVIDIA H100 80GB HBM3"

    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: resets.append(device))
    cost.reset_peak_memory(torch.device("cpu"))
    assert resets == []
    cost.reset_peak_memory(torch.device("cuda"))
    assert resets == [torch.device("cuda")]
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    assert cost.peak_memory_mb(torch.device("cuda")) == 3.0


def test_extra_batch_sizes_are_timed_and_named_by_size_and_cpu_keeps_its_metrics(tiny_bert):
    from transformers import AutoTokenizer

    bert = tiny_bert_model()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = EncoderLSTMClassifier(
        PoolingEncoder(bert, PoolPosition.parse("layer:0,layer:1"), PoolSpec.parse("avg:2x1")), 32, PoolSpec(), units=4
    )
    texts = ["great film", "awful plot", "the movie was dull"]
    plain = cost.measure(model, tokenizer, texts, 16, torch.device("cpu"), latency_texts=2, throughput_batches=1)
    assert not [k for k in plain if "_b" in k or "batch" in k]
    extra = cost.measure(
        model, tokenizer, texts, 16, torch.device("cpu"), latency_texts=2, throughput_batches=2, batch_sizes=(5,)
    )
    assert extra["throughput/infer_examples_per_s_b5"] > 0 and extra["latency/batch5_p50_ms"] > 0
    assert set(plain) <= set(extra)
