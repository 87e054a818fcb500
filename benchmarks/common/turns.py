"""Inference cost measured in turns: several architectures timed round-robin in one process, so all see the same
machine (weights do not change the cost, so each is built fresh). The pooled-LM studies' pages use it."""

from __future__ import annotations

import statistics


def measure_in_turns(data: str, rounds: int, architectures: dict[str, dict], max_len: int = 128) -> dict[str, dict]:
    """Throughput (batch 32) and one-review latency of each architecture (config overrides of a fine-tuned
    MiniLM encoder, by name), round-robin, in bf16 where the CPU has it; best round and median per name."""
    import torch

    from bertpooled import data as imdb_data
    from bertpooled.config import load_config
    from bertpooled.model import backbone
    from bertpooled.model.build import build
    from bertpooled.model.inference import cpu_has_bf16
    from bertpooled.run import cost, runtime
    from bertpooled.run.network import spec_of

    precision = "bf16" if cpu_has_bf16() else "fp32"
    info = backbone.inspect("minilm")
    tokenizer = backbone.load_tokenizer(info)
    imdb = imdb_data.load_imdb(data)
    texts = [imdb.test.texts[i] for i in imdb_data.balanced_subset(imdb.test.labels, n=256, seed=0)]
    bert = backbone.load_model(info)
    models = {}
    for name, overrides in architectures.items():
        cfg = load_config(None, {"features": "encoder", "finetune": True, "max_len": max_len, **overrides})
        runtime.seed_everything(0)
        models[name] = build(spec_of(cfg), backbone=bert).eval()
    out: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    device = torch.device("cpu")
    for r in range(rounds):
        for name, model in models.items():
            with runtime.autocast(device, precision):
                out[name].append(
                    cost.measure(model, tokenizer, texts, max_len, device, latency_texts=8, throughput_batches=2)
                )
        print(f"in turns: round {r + 1}/{rounds}", flush=True)
    return {
        k: {
            "throughput": max(m["throughput/infer_examples_per_s"] for m in v),
            "throughput_median": statistics.median(m["throughput/infer_examples_per_s"] for m in v),
            "latency": min(m["latency/p50_ms"] for m in v),
            "latency_median": statistics.median(m["latency/p50_ms"] for m in v),
            "rounds": len(v),
            "threads": torch.get_num_threads(),
            "precision": precision,
        }
        for k, v in out.items()
    }
