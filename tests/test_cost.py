"""Cost figures a run logs about itself (issue 24): each sweep child's memory peak is its own, and the
reference mode logs the inference costs that apply to it."""

from __future__ import annotations

import os

import pytest
import torch

from bertpooled.run import cost

CPU = torch.device("cpu")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_a_later_run_in_the_same_process_reports_its_own_peak_not_the_processs():
    cost.reset_peak_memory(CPU)
    big = bytearray(400 * 2**20)
    big[::4096] = b"\1" * len(big[::4096])  # touch every page: 400 MiB resident
    first = cost.peak_memory_metrics(CPU)["memory/peak_mb"]
    del big
    cost.reset_peak_memory(CPU)  # the next child starts here
    second = cost.peak_memory_metrics(CPU)
    assert set(second) == {"memory/peak_mb"}
    assert second["memory/peak_mb"] < first - 300


def test_without_a_resettable_peak_only_the_first_run_of_a_process_claims_it(monkeypatch):
    monkeypatch.setattr(cost, "_PEAK_RESET", False)
    monkeypatch.setattr(cost, "_RUNS_MEASURED", 0)
    assert set(cost.peak_memory_metrics(CPU)) == {"memory/peak_mb"}
    assert set(cost.peak_memory_metrics(CPU)) == {"process/peak_mb"}  # the shared process's, not this run's


def test_the_reference_mode_logs_latency_throughput_and_memory(tiny_bert, tiny_imdb, tmp_path, monkeypatch):
    from test_reference import _inputs

    from bertpooled.run import reference

    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "cache"))
    result = reference.fit_and_evaluate(*_inputs(tiny_bert, tiny_imdb))
    metrics = result.metrics
    assert {"latency/p50_ms", "latency/p95_ms", "throughput/infer_examples_per_s", "memory/peak_mb"} <= set(metrics)
    assert 0 < metrics["latency/p50_ms"] <= metrics["latency/p95_ms"] and metrics["throughput/infer_examples_per_s"] > 0
    assert not [m for m in metrics if m.startswith("cost/")]  # FLOPs do not apply to sparse TF-IDF arithmetic
