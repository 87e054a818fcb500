"""bf16 on CPUs that have it natively (AVX512-BF16 or AMX): resolution, refusal, and a tiny BERT end to end."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import SMOKE, invoke_tiny
from mlflow import MlflowClient
from typer.testing import CliRunner

from bertpooled.cli import app
from bertpooled.config import load_config
from bertpooled.errors import BertpooledError
from bertpooled.model import inference
from bertpooled.run import frozen, runtime

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not inference.cpu_has_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX")


@pytest.fixture()
def bf16_cpu(monkeypatch):
    """Simulate the CPU's answer: runtime reads `cpu_has_bf16` through its own name, serving through inference's."""

    def simulate(native: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
        monkeypatch.setattr(inference, "cpu_has_bf16", lambda: native)

    return simulate


def test_cpu_has_bf16_follows_torchs_own_capability_checks(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not inference.cpu_has_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert inference.cpu_has_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not inference.cpu_has_bf16()  # a torch without the checks counts as a CPU without bf16


def test_auto_is_bf16_for_backbone_work_on_a_bf16_cpu_and_fp32_for_the_original_modes(bf16_cpu):
    bf16_cpu(True)
    assert runtime.resolve_precision("auto", CPU, backbone_work=True) == "bf16"
    assert runtime.resolve_precision("auto", CPU, backbone_work=False) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"
    assert runtime.resolve_precision("fp32", CPU, backbone_work=True) == "fp32"
    for mode in ("basic", "pool"):  # the original's two modes: their numbers stay fp32, bitwise
        assert runtime.precision_for(load_config(overrides={"mode": mode}), CPU) == "fp32"
    encoder = {"features": "encoder", "pool": "none"}
    assert runtime.precision_for(load_config(overrides=encoder), CPU) == "bf16"
    assert runtime.precision_for(load_config(overrides={**encoder, "finetune": True}), CPU) == "bf16"


def test_a_cpu_without_bf16_keeps_fp32_for_auto_and_refuses_bf16_in_one_line(bf16_cpu):
    bf16_cpu(False)
    assert runtime.resolve_precision("auto", CPU, backbone_work=True) == "fp32"
    with pytest.raises(
        BertpooledError,
        match=r"precision=bf16 needs a CUDA GPU or a CPU with AVX512-BF16 or AMX.*"
        r"use precision=fp32 or auto",
    ) as err:
        runtime.resolve_precision("bf16", CPU)
    assert "\n" not in str(err.value)


def test_bf16_on_a_cpu_without_it_exits_2_before_any_run_exists(store, tiny_bert, tiny_imdb, bf16_cpu):
    bf16_cpu(False)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            SMOKE,
            "--model",
            str(tiny_bert),
            "--data",
            str(tiny_imdb),
            "--device",
            "cpu",
            "--set",
            "features=encoder",
            "--set",
            "precision=bf16",
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "AVX512-BF16 or AMX" in result.output.strip().splitlines()[-1]
    assert MlflowClient(store).search_runs([e.experiment_id for e in MlflowClient(store).search_experiments()]) == []


def test_bf16_with_device_cpu_is_a_valid_config_now_and_mps_is_still_refused():
    assert load_config(overrides={"precision": "bf16", "device": "cpu"}).precision == "bf16"
    with pytest.raises(BertpooledError, match=r"precision='bf16' is not valid.*device=mps"):
        load_config(overrides={"precision": "bf16", "device": "mps"})


def test_serving_resolves_the_runs_precision_on_its_own_machine_and_falls_back_instead_of_refusing(bf16_cpu):
    bf16_cpu(True)
    assert inference.serving_precision("auto", backbone_work=True) == "bf16"
    assert inference.serving_precision("auto", backbone_work=False) == "fp32"
    assert inference.serving_precision("fp32", backbone_work=True) == "fp32"
    assert inference.serving_precision(None, backbone_work=True) == "fp32"  # logged before precision was stored
    bf16_cpu(False)
    assert inference.serving_precision("bf16", backbone_work=True) == "fp32"


def test_frozen_features_computed_in_bf16_are_their_own_cache_entry_and_fp32_keeps_its_key():
    cfg = load_config(overrides={"features": "encoder", "pool": "avg:2x1", "pool_at": "layer:2"})
    assert frozen.features_key_part(cfg, "fp32") == frozen.inside_spec(cfg) == "avg:2x1@layer:2"
    assert frozen.features_key_part(cfg, "bf16") == "avg:2x1@layer:2|bf16"


@needs_bf16
@pytest.mark.parametrize(
    "sets", [["finetune=true", "backbone_lr=1e-3", "pool=avg:2x1", "pool_at=layer:0"], []], ids=["finetuned", "frozen"]
)
def test_a_tiny_bert_trains_evaluates_measures_and_serves_in_bf16_on_this_cpu(store, tiny_bert, tiny_imdb, sets):
    args = [a for s in ["features=encoder", "latency_texts=3", "throughput_batches=1", *sets] for a in ("--set", s)]
    result = invoke_tiny("train", tiny_bert, tiny_imdb, "--epochs", "2", *args)
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params, metrics = run.data.params, run.data.metrics
    assert params["config/precision"] == "auto" and params["runtime/precision"] == "bf16"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert 0 <= metrics["test/accuracy"] <= 1 and metrics["cost/backbone_flops_per_example"] > 0
    assert metrics["throughput/infer_examples_per_s"] > 0 and metrics["latency/p50_ms"] > 0
    mlflow.set_tracking_uri(store)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
        assert json.loads(next(folder.rglob("model_config.json")).read_text())["precision"] == "auto"
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        assert model.unwrap_python_model().precision == "bf16"
        probs = model.predict(["great wonderful film", "awful boring plot"], params={"predict_method": "predict_proba"})
        assert probs.shape == (2, 2) and ((probs >= 0) & (probs <= 1)).all()
    finally:
        mlflow.set_tracking_uri(None)
