"""Train and eval phases of the seed protocol on a GPU, for a machine that has torch but not MLflow or the data.

    python benchmarks/seed_protocol/gpu_phases.py pack --out .gpu    # here: token ids, labels, MiniLM's embeddings
    python benchmarks/seed_protocol/gpu_phases.py run --bundle .gpu  # there: both modes, fp32 and bf16, 3 repeats

The bundle holds exactly what the training loop consumes (the default protocol's cached token ids and the
frozen embedding table), so the GPU runs the same `fit.fit` and `measure.predict_proba` as the CPU runs.
Reading, tokenizing and MLflow logging are CPU work and are timed by benchmarks/seed_protocol/seed_protocol.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bertpooled, installed or not


def pack(out: Path, config_path: str) -> None:
    from bertpooled.config import load_config
    from bertpooled.model import backbone
    from bertpooled.run import measure, prepare, runtime

    cfg = load_config(config_path)
    info = prepare.check(cfg)
    phases = measure.Phases()
    imdb, tr, te = prepare.read_data(cfg, phases, progress=False)
    prep = prepare.prepare(cfg, info, imdb, tr, te, phases, rt=runtime.Runtime.resolve(cfg), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "tokens.npz",
        train_ids=prep.train_tokens.ids.astype(np.int16 if info.vocab_size < 2**15 else np.int32),
        train_lengths=prep.train_tokens.lengths,
        train_labels=tr.labels,
        test_ids=prep.test_tokens.ids.astype(np.int16 if info.vocab_size < 2**15 else np.int32),
        test_lengths=prep.test_tokens.lengths,
        test_labels=te.labels,
    )
    from safetensors.torch import save_file

    save_file({"embeddings": prep.embeddings.table}, str(out / "embeddings.safetensors"))
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("mode", "pool", "data")}  # set per run there
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    print(f"packed {len(tr)} train / {len(te)} test into {out}; backbone {info.name}")
    del backbone


def load_bundle(bundle: Path):
    """The packed subsets, their token ids and the frozen word-embedding table."""
    from safetensors.torch import load_file

    from bertpooled import data
    from bertpooled.data import tokens

    arrays = np.load(bundle / "tokens.npz")
    table = load_file(str(bundle / "embeddings.safetensors"))["embeddings"]

    def split(name):
        labels = arrays[f"{name}_labels"]
        ids = [f"{name}/{i}" for i in range(len(labels))]
        return data.Split(ids, [""] * len(labels), labels), tokens.Tokens(
            arrays[f"{name}_ids"].astype(np.int32), arrays[f"{name}_lengths"]
        )

    return split("train"), split("test"), table


def time_setting(bundle: Path, loaded, mode: str, amp: bool, repeats: int, device_name: str, extra: dict):
    """One (mode, autocast) setting: an untimed 1-epoch warm-up fit, then `repeats` timed fits and evaluations
    of fresh models; the medians of (train s, eval s, test accuracy), and the run's config."""
    import torch

    from bertpooled.config import load_config
    from bertpooled.model import backbone
    from bertpooled.run import fit, measure, network, prepare, runtime

    (tr, tr_tok), (te, te_tok), table = loaded
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = load_config(
        bundle / "config.yaml",
        {"mode": mode, "device": device_name, "precision": "bf16" if amp else "fp32", **extra},
    )
    emb = backbone.WordEmbeddings(table, 0)
    prep = prepare.Prepared(cfg, None, None, tr, te, tr_tok, te_tok, runtime.Runtime.resolve(cfg), embeddings=emb)
    warm_cfg = load_config(
        bundle / "config.yaml", {"mode": mode, "epochs": 1, "device": device_name, "precision": "fp32"}
    )
    warm = prepare.Prepared(
        warm_cfg, None, None, tr, te, tr_tok, te_tok, runtime.Runtime.resolve(warm_cfg), embeddings=emb
    )
    fit.fit(network.build_model(warm).to(device), warm, progress=False)
    rows = []
    for _ in range(repeats):
        model = network.build_model(prep).to(device)
        sync()
        t0 = time.perf_counter()
        fit.fit(model, prep, progress=False)
        sync()
        t1 = time.perf_counter()
        probs = measure.predict_proba(model, te_tok, cfg.eval_batch_size, device, cfg.precision)
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, measure.evaluate(te.labels, probs)["test/accuracy"]))
    return [statistics.median(r[i] for r in rows) for i in range(3)], cfg


def run(bundle: Path, repeats: int, out: Path | None, device_name: str = "cuda", epochs: int | None = None) -> None:
    import torch

    if device_name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible")
    loaded = load_bundle(bundle)
    (tr, _), (te, _), _ = loaded
    device = torch.device(device_name)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (CPU smoke run)"
    extra = {"epochs": epochs} if epochs else {}
    lines = [
        f"- GPU: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        f"- data: {len(tr):,} train / {len(te):,} test reviews, the default protocol's token ids (max_len 128), "
        "10 epochs, batch 32",
        f"- medians of {repeats} repeats, each a fresh model; warm-up: one untimed 1-epoch fit per setting",
        "",
        "| mode | autocast | time/train_s | time/eval_s | s per epoch | test accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    results = {}
    for mode in ("basic", "pool"):
        for amp in (False, True):
            med, cfg = time_setting(bundle, loaded, mode, amp, repeats, device_name, extra)
            results[(mode, amp)] = med
            lines.append(
                f"| {mode} | {'bf16' if amp else 'off (fp32)'} | {med[0]:.2f} | {med[1]:.2f} | "
                f"{med[0] / cfg.epochs:.2f} | {med[2]:.4f} |"
            )
            print(lines[-1], flush=True)
    for amp in (False, True):
        b, p = results[("basic", amp)], results[("pool", amp)]
        lines.append(f"\npool/basic train time ({'bf16' if amp else 'fp32'}): {p[0] / b[0]:.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--config", default="experiments/default.yaml")
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path, default=Path(".gpu"))
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--output", type=Path)
    r.add_argument("--device", default="cuda")
    r.add_argument("--epochs", type=int, help="override for a quick check")
    args = parser.parse_args()
    if args.cmd == "pack":
        pack(args.out, args.config)
    else:
        run(args.bundle, args.repeats, args.output, args.device, args.epochs)


if __name__ == "__main__":
    main()
