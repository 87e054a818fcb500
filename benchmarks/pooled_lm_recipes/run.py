"""The recipes study of issue 29: the runs (hours on a 2-core CPU), seed-major and resumable.

    BERTPOOLED_IMDB=/path/to/aclImdb_v1.tar.gz \
        python benchmarks/pooled_lm_recipes/run.py --store STORE [--seeds 0 1 2 3 4]

Per seed, the protocol of benchmarks/pooled_lm_cpu/README.md (MiniLM fine-tuned with its LSTM(16) head, max_len 128,
label-balanced 4,000 / 5,000 reviews, data_seed 0, bf16 autocast where the CPU has it), then each recipe from
that seed's teacher for the same one extra epoch:

    teacher   the unpooled model fine-tuned for 1 epoch (the stage every recipe starts from)
    a         avg:2x1 at layer:2, started from the teacher, logit distillation from it
    b         topk:0.5 at layer:2 (tokens kept by the attention they receive), from the teacher, distilled
    c         unpooled, from the teacher, trained on for the same epoch (control: extra training is not pooling's)
    d         the first 4 layers only, from the teacher, distilled (control at pooling's FLOPs: 4 of 6 layers)
    e2        (a)'s pooling on the adapted backbone (`bertpooled adapt`: MiniLM adapted once to avg:2x1 at layer:2
              on 8,000 unlabelled reviews), distilled from the teacher for 2 epochs (the teacher's 1 + (a)'s 1)
    e1        (a) with 2,000 unlabelled reviews the teacher labels (`unlabelled`: training reviews outside the
              4,000, labels dropped; the shared archive has no train/unsup)

The adapted backbone is made once (seed 0 of `bertpooled adapt`, kind `adapt` in the same experiment) before
the first (e2) run and reused by every seed.

Every run is a `bertpooled train` process logging into the study's store (experiment `pooled-lm-recipes`); a run
is known by its description (`pooled-lm-recipes: <recipe>, seed <s>`), so a study cut short continues where it
stopped: finished runs are kept, the rest run again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "pooled-lm-recipes"
COMMON = [
    "--config", str(ROOT / "experiments" / "encoder_finetune.yaml"),
    "--epochs", "1", "--max-train-examples", "4000", "--max-test-examples", "5000", "--max-len", "128",
    "--no-progress",
]  # fmt: skip
RECIPES: dict[str, list[str]] = {
    "teacher": [],
    "a": ["--pool", "avg:2x1", "--pool-at", "layer:2", "--init-from", "{teacher}", "--distill-from", "{teacher}"],
    "b": ["--pool", "topk:0.5", "--pool-at", "layer:2", "--init-from", "{teacher}", "--distill-from", "{teacher}"],
    "c": ["--init-from", "{teacher}"],
    "d": ["--keep-layers", "4", "--init-from", "{teacher}", "--distill-from", "{teacher}"],
    "e2": ["--model", "{adapted}", "--pool", "avg:2x1", "--pool-at", "layer:2", "--distill-from", "{teacher}"],
    "e1": [*("--pool", "avg:2x1", "--pool-at", "layer:2", "--init-from", "{teacher}", "--distill-from", "{teacher}"),
           "--unlabelled", "2000"],
}  # fmt: skip
#: Epochs of each recipe (COMMON's 1 otherwise): (e2) starts from the adapted backbone, not from the teacher, so it
#: gets the teacher's epoch and the recipe's, as the control (c) had.
EPOCHS = {"e2": "2"}
ADAPT = [
    *("adapt", "--pool", "avg:2x1", "--pool-at", "layer:2", "--reviews", "8000", "--held-out", "256"),
    *("--max-len", "128", "--lr", "1e-4", "--epochs", "1", "--no-progress"),
]  # fmt: skip


def adapted_backbone(client, experiment_id: str, env: dict) -> str:
    """The adapted backbone's model URI: the study's finished adapt run, made first when there is none."""

    def finished() -> str | None:
        runs = client.search_runs(
            [experiment_id], "tags.`bertpooled.kind` = 'adapt' and attributes.status = 'FINISHED'"
        )
        return f"runs:/{runs[0].info.run_id}/backbone" if runs else None

    if finished() is None:
        print(f"== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} adapt", flush=True)
        done = subprocess.run([sys.executable, "-m", "bertpooled", *ADAPT], env=env, cwd=ROOT)
        if done.returncode:
            sys.exit(f"adapt failed (exit {done.returncode}); run this script again to continue")
    found = finished()
    assert found is not None
    return found


def description(recipe: str, seed: int) -> str:
    return f"{EXPERIMENT}: {recipe}, seed {seed}"


def finished_run(client, experiment_id: str, recipe: str, seed: int) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.note.content` = '{description(recipe, seed)}' and attributes.status = 'FINISHED'",
    )
    return runs[0].info.run_id if runs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="folder of the study's tracking store (mlflow.db)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    if not os.environ.get("BERTPOOLED_IMDB"):
        sys.exit("set BERTPOOLED_IMDB to the IMDB archive")
    store = Path(args.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    # The experiment by name through MLflow's own variable, which `bertpooled train` follows.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update(env)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(store / "mlruns").as_uri())
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for seed in args.seeds:
        for recipe in ["teacher", *[r for r in args.recipes if r != "teacher"]]:
            if finished_run(client, experiment_id, recipe, seed):
                continue
            teacher = finished_run(client, experiment_id, "teacher", seed)
            adapted = adapted_backbone(client, experiment_id, env) if "{adapted}" in RECIPES[recipe] else ""
            extra = [part.format(teacher=teacher, adapted=adapted) for part in RECIPES[recipe]]
            common = [
                *COMMON[: COMMON.index("--epochs") + 1],
                EPOCHS.get(recipe, "1"),
                *COMMON[COMMON.index("--epochs") + 2 :],
            ]
            cmd = [sys.executable, "-m", "bertpooled", "train", *common, *extra, "--seed", str(seed)]
            cmd += ["--description", description(recipe, seed)]
            print(f"== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} seed {seed} {recipe}", flush=True)
            done = subprocess.run(cmd, env=env, cwd=ROOT)
            if done.returncode:
                sys.exit(f"seed {seed} {recipe} failed (exit {done.returncode}); run this script again to continue")
    print(f"== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} done", flush=True)


if __name__ == "__main__":
    main()
