"""The GPU device script rehearsed on CPU: pack.sh's data and model steps, then every stage of run_on_device.sh
(setup, check, `mlflow run` for both original modes, the fine-tuned `bertpooled sweep` per pooling group, the
grouped-seeds sweep of issue 13, compare-runs) with SMOKE=1 on a tiny 5-layer BERT and a tiny IMDB archive."""

from __future__ import annotations

import lzma
import os
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import ROOT, VOCAB, tiny

GPU = ROOT / "benchmarks" / "gpu"


def tiny_bert_5_layers(folder: Path) -> Path:
    """Five layers, so layer:3 and the two-stage layer:2,layer:4 of the study run as they will on MiniLM."""
    return tiny.tiny_bert(folder, VOCAB, layers=5)


@pytest.mark.slow
def test_the_device_script_runs_every_stage_on_cpu_and_brings_back_store_and_reports_without_weights(
    tiny_imdb, tmp_path
):
    payload, work, out = tmp_path / "payload", tmp_path / "work", tmp_path / "out"
    env = {
        **os.environ,
        "PAYLOAD": str(payload),
        "WORK": str(work),
        "OUT": str(out),
        "SMOKE": "1",
        "PYTHON": "python",
        "STEP_TIMEOUT": "300",
        # Three of the study's six groups (each a sweep process, ~25 s here): the baseline, a two-stage pooling and
        # pooling at the output. The other three differ from these only in the layer number, which config rules'
        # own tests check; every group runs on the device.
        "STUDY_GROUPS": "unpooled|--pool none\nlayer2+4|--pool avg:2x1 --pool-at layer:2,layer:4\n"
        "output|--pool avg:2x1 --pool-at output",
    }
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    bert = tiny_bert_5_layers(tmp_path / "tiny-bert")
    for args in (["data", str(tiny_imdb)], ["model", str(bert)]):
        subprocess.run(["bash", str(GPU / "pack.sh"), *args], env=env, check=True, cwd=ROOT, capture_output=True)
    with tarfile.open(payload / "data" / "aclImdb.tar.xz") as tar:
        assert {Path(n).parts[1] for n in tar.getnames() if len(Path(n).parts) > 1} == {"train", "test"}
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(payload / "minilm" / "model.safetensors")).values()} == {
        __import__("torch").float16
    }

    result = subprocess.run(
        ["bash", str(GPU / "run_on_device.sh"), "setup", "check", "originals", "study", "seeds", "report"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    log = (out / "device.log").read_text()
    assert result.returncode == 0, log[-4000:]
    assert {p.name for p in out.iterdir()} == {
        "device.log",
        "mlflow.db.xz",
        "artifacts.tar.xz",
        "report-study.md",
        "report-original.md",
        "seeds.md",
    }
    # The float16 payload was upcast: training starts from float32 weights.
    assert {t.dtype for t in load_file(str(work / "minilm" / "model.safetensors")).values()} == {
        __import__("torch").float32
    }

    db = tmp_path / "back.db"
    db.write_bytes(lzma.decompress((out / "mlflow.db.xz").read_bytes()))
    rows = (
        sqlite3.connect(db)
        .execute(
            "select e.name, r.status, t.value from runs r join experiments e on r.experiment_id = e.experiment_id "
            "left join tags t on t.run_uuid = r.run_uuid and t.key = 'variant' "
            "where r.run_uuid not in (select run_uuid from tags where key = 'bertpooled.kind' and value in "
            "('sweep', 'comparison'))"
        )
        .fetchall()
    )
    finished = {(name, variant) for name, status, variant in rows if status == "FINISHED"}
    assert rows and all(status == "FINISHED" for _, status, _ in rows), rows
    assert {("gpu-original", None)} <= finished and ("gpu-check", "encoder-ft-avg:2x1@layer:2") in finished
    # `seeds`: both original modes, 2 seeds each in SMOKE, every mode's seeds trained in one loop.
    assert [name for name, _, _ in rows].count("gpu-seeds") == 4
    seeds = (out / "seeds.md").read_text()
    assert "| basic | 2 | cpu |" in seeds and "| pool | 2 | cpu |" in seeds and "Both modes' group training" in seeds
    assert {v for name, v in finished if name == "gpu-study"} == {
        "encoder-ft",
        "encoder-ft-avg:2x1@layer:2,layer:4",
        "encoder-ft-avg:2x1@output",
    }
    with tarfile.open(out / "artifacts.tar.xz") as tar:
        names = tar.getnames()
    assert any(n.endswith("predictions/test.csv") for n in names)
    assert not [n for n in names if n.endswith(".safetensors") or "/checkpoint/" in n]

    study = (out / "report-study.md").read_text()
    assert "encoder-ft-avg:2x1@layer:2,layer:4" in study and "throughput/infer_examples_per_s" in study
    assert "basic" in (out / "report-original.md").read_text()

    # A second call skips what is done and still brings everything back (the device is called in several steps).
    again = subprocess.run(
        ["bash", str(GPU / "run_on_device.sh"), "originals", "study", "seeds"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and (out / "device.log").read_text().count("done earlier") == 6


def test_every_study_group_of_the_device_script_is_a_config_the_project_accepts():
    """The rehearsal above trains three of the study's groups; every group's options are checked here, as a config
    (field names and values), without a training."""
    from conftest import SMOKE

    from bertpooled.config import load_config

    script = (GPU / "run_on_device.sh").read_text()
    groups = script.split('STUDY_GROUPS="${STUDY_GROUPS:-', 1)[1].split('}"', 1)[0].splitlines()
    assert len(groups) == 6
    for group in groups:
        _name, options = group.split("|")
        words = options.split()
        pairs = zip(words[::2], words[1::2], strict=True)
        fields = {flag.removeprefix("--").replace("-", "_"): value for flag, value in pairs}
        config = load_config(SMOKE, {**fields, "features": "encoder", "finetune": True})
        assert (config.pool, config.pool_at or "") == (fields["pool"], fields.get("pool_at", config.pool_at or ""))


def test_a_model_logged_where_only_mlflow_skinny_is_installed_pins_mlflow_skinny(monkeypatch):
    import importlib.metadata as metadata

    from bertpooled.tracking import models

    real = metadata.version

    def version(name):
        if name == "mlflow":
            raise metadata.PackageNotFoundError(name)
        return "3.17.2" if name == "mlflow-skinny" else real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert models.pinned_requirements("numpy", "mlflow") == [f"numpy=={real('numpy')}", "mlflow-skinny==3.17.2"]
    monkeypatch.setattr(metadata, "version", lambda name: (_ for _ in ()).throw(metadata.PackageNotFoundError(name)))
    with pytest.raises(metadata.PackageNotFoundError):
        models.pinned_requirements("torch")
