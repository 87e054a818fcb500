"""How far one piece of work travels through the package (issue 30's route lengths), for any checkout.

A route is followed while it runs, with `sys.setprofile` on the main thread: from the call of its entry function to
that call's return, every call into a package file is seen. Counted, as distinct call edges (so epochs, batches
and children do not multiply them):

- files: the package files the route enters;
- hops: calls from one package file into another (each also returns across that boundary);
- bounces: hops into a file that is already on the stack further down, below another file (A -> B -> A: the work
  climbs back into a module it had left, as fit <-> prepare did).

Routes, each on a tiny BERT and a tiny IMDB this script writes (so nothing is downloaded or cached between codes):

- `train_and_evaluate`: `bertpooled train` of a tiny pool run, from `run.fit.train_and_evaluate`;
- `sweep child`: `bertpooled sweep --modes basic,pool` (two children, one process), from
  `sweep.local.LocalExecutor.run`.

Usage (run from the repository root; CODE: the checkout whose package is measured, default this one):

    PYTHONPATH=CODE python benchmarks/redesign/routes.py
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/, the helpers studies share
from common.tiny import tiny_bert

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "waste", "hated"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and", "of", "this"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, ".", ","]
ROUTES = {  # name -> (entry file under the package, entry function's qualified name)
    "train_and_evaluate": ("run/fit.py", "train_and_evaluate"),
    "sweep child": ("sweep/local.py", "LocalExecutor.run"),
}


@dataclass
class Route:
    """What one route touched: files, cross-file call edges and bounce edges (see the module doc)."""

    files: set[str] = field(default_factory=set)
    hops: set[tuple[str, str]] = field(default_factory=set)
    bounces: set[tuple[str, str]] = field(default_factory=set)


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """A 2-layer BERT (`common.tiny`) on a 29-word vocabulary and an aclImdb_v1.tar.gz of 24 reviews per split and
    label."""
    bert = tiny_bert(folder / "tiny-bert", VOCAB)
    rng = random.Random(0)
    for split in ("train", "test"):
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            out = folder / "aclImdb" / split / label
            out.mkdir(parents=True)
            for i in range(24):
                picks = [rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(20)]
                (out / f"{i}_{9 if label == 'pos' else 2}.txt").write_text(" ".join(picks) + " .")
    archive = folder / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "aclImdb", arcname="aclImdb")
    return bert, archive


def follow(package: Path, entry: tuple[str, str], route: Route):
    """A profile function recording `route` while the entry function runs (see the module doc)."""
    entry_file, entry_name = str(package / entry[0]), entry[1]
    stack: list[tuple[str, str] | None] = []  # per frame of the route: (file, function) in the package, else None
    depth = [0]  # frames since the entry (0: outside the route)

    def name_of(code) -> tuple[str, str] | None:
        path = code.co_filename
        if not path.startswith(str(package) + os.sep):
            return None
        return str(Path(path).relative_to(package)), code.co_qualname

    def profile(frame, event, arg) -> None:
        if event == "call":
            code = frame.f_code
            if not depth[0] and (code.co_filename != entry_file or code.co_qualname != entry_name):
                return
            depth[0] += 1
            here = name_of(frame.f_code)
            caller = next((f for f in reversed(stack) if f is not None), None)
            stack.append(here)
            if here is None:
                return
            route.files.add(here[0])
            if caller is not None and caller[0] != here[0]:
                edge = (f"{caller[0]}:{caller[1]}", f"{here[0]}:{here[1]}")
                route.hops.add(edge)
                below = [f[0] for f in stack[:-1] if f is not None]
                if here[0] in below[:-1]:
                    route.bounces.add(edge)
        elif event == "return" and depth[0]:
            depth[0] -= 1
            stack.pop()

    return profile


def run_routes(folder: Path) -> dict[str, Route]:
    """Each route's record, from `bertpooled train` and `bertpooled sweep` run in this process."""
    from typer.testing import CliRunner

    import bertpooled
    from bertpooled.cli import app

    package = Path(bertpooled.__file__).resolve().parent
    smoke = str(package.parent / "experiments" / "smoke.yaml")
    bert, archive = tiny_inputs(folder)
    common = ["--config", smoke, "--model", str(bert), "--data", str(archive), "--max-len", "16", "--no-progress"]
    commands = {
        "train_and_evaluate": ["train", *common, "--mode", "pool"],
        "sweep child": ["sweep", *common, "--modes", "basic,pool", "--seeds", "1"],
    }
    routes = {}
    for name, command in commands.items():
        routes[name] = Route()
        sys.setprofile(follow(package, ROUTES[name], routes[name]))
        try:
            result = CliRunner().invoke(app, command)
        finally:
            sys.setprofile(None)
        if result.exit_code != 0:
            raise SystemExit(f"{name}: `bertpooled {command[0]}` failed:\n{result.output[-2000:]}")
    return routes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="also list each route's files and bounces")
    args = parser.parse_args()
    import bertpooled

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", BERTPOOLED_CACHE=f"{tmp}/cache")
        os.environ.pop("BERTPOOLED_IMDB", None)
        routes = run_routes(Path(tmp))
    print(f"code: {Path(bertpooled.__file__).resolve().parent}")
    print("| route | files | hops | bounces |\n|---|---:|---:|---:|")
    for name, route in routes.items():
        print(f"| {name} | {len(route.files)} | {len(route.hops)} | {len(route.bounces)} |")
    if args.list:
        for name, route in routes.items():
            print(f"\n{name}: files {sorted(route.files)}")
            for caller, callee in sorted(route.bounces):
                print(f"  bounce {caller} -> {callee}")


if __name__ == "__main__":
    main()
