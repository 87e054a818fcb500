"""How far one piece of work travels through the package (issue 30's route lengths), for any checkout.

A route is followed while it runs, with `sys.setprofile` on the main thread: from the call of its entry function to
that call's return, every call into a package file is seen. Counted, as distinct call edges (so epochs, batches
and children do not multiply them):

- files: the package files the route enters;
- hops: calls from one package file into another (each also returns across that boundary);
- bounces: hops into a file that is already on the stack further down, below another file (A -> B -> A: the work
  climbs back into a module it had left, as fit <-> prepare did);
- climbs: hops from a lower floor of the package into a higher one (`FLOORS`: data < model < tracking, serving,
  report < run < sweep < tune < cli), callbacks included (a log line the CLI passed down is one).

Routes, each on a tiny BERT and a tiny IMDB this script writes (so nothing is downloaded or cached between codes):

- `train_and_evaluate`: `bertpooled train` of a tiny pool run, from `run.fit.train_and_evaluate`;
- `prepared`: the same run, only the calls that receive `train_and_evaluate`'s `prepared` (as an argument or as
  `self`), the issue's "`train_and_evaluate`'s `prepared`, followed through the calls";
- `sweep child`: `bertpooled sweep --modes basic,pool` (two children, one process), from
  `sweep.local.LocalExecutor.run`.
- `seed-group child`: `bertpooled sweep --modes pool --seeds 2 --group-seeds` (a seed group of two children
  trained in one loop, then each its own run), from `sweep.local.LocalExecutor.run`: the route of the issue's item 2.

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
    "seed-group child": ("sweep/local.py", "LocalExecutor.run"),
}
FOLLOWED = {"prepared": "train_and_evaluate"}  # a route of the object its entry's first argument is, on that run
# The package's floors, lowest first (tests/test_layering.py's order); config/ and top-level modules have none.
FLOORS = {"data": 0, "model": 1, "tracking": 2, "serving": 2, "report": 2, "run": 3, "sweep": 4, "tune": 5, "cli": 6}


@dataclass
class Route:
    """What one route touched: files, cross-file call edges and bounce edges (see the module doc)."""

    files: set[str] = field(default_factory=set)
    hops: set[tuple[str, str]] = field(default_factory=set)
    bounces: set[tuple[str, str]] = field(default_factory=set)
    climbs: set[tuple[str, str]] = field(default_factory=set)
    stack: list[tuple[str, str] | None] = field(default_factory=list)
    """While it runs: per frame since the entry, (file, function) when the frame is on the route, else None."""

    def enter(self, here: tuple[str, str] | None) -> None:
        """A frame starts: counted when `here` is on the route (see the module doc)."""
        caller = next((f for f in reversed(self.stack) if f is not None), None)
        self.stack.append(here)
        if here is None:
            return
        self.files.add(here[0])
        if caller is None or caller[0] == here[0]:
            return
        edge = (f"{caller[0]}:{caller[1]}", f"{here[0]}:{here[1]}")
        self.hops.add(edge)
        below = [f[0] for f in self.stack[:-1] if f is not None]
        if here[0] in below[:-1]:
            self.bounces.add(edge)
        floors = [floor_of(caller[0]), floor_of(here[0])]
        if None not in floors and floors[1] > floors[0]:
            self.climbs.add(edge)


def floor_of(file: str) -> int | None:
    """The floor of a package file (`FLOORS`): its folder's, or a top-level `cli*.py`'s (the layout before cli/)."""
    parts = Path(file).parts
    return FLOORS.get(parts[0]) if len(parts) > 1 else (FLOORS["cli"] if parts[0].startswith("cli") else None)


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


def follow(package: Path, entry: tuple[str, str], route: Route, followed: Route | None = None):
    """A profile function recording `route` while the entry function runs (see the module doc), and in `followed`
    the calls that receive the entry's first argument."""
    entry_file, entry_name = str(package / entry[0]), entry[1]
    depth = [0]  # frames since the entry (0: outside the route)
    carried: list[object] = []  # the entry's first argument, once it is called

    def name_of(code) -> tuple[str, str] | None:
        path = code.co_filename
        if not path.startswith(str(package) + os.sep):
            return None
        return str(Path(path).relative_to(package)), code.co_qualname

    def receives(frame) -> bool:
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        return any(frame.f_locals.get(name) is carried[0] for name in names)

    def profile(frame, event, arg) -> None:
        if event == "call":
            code = frame.f_code
            if not depth[0] and (code.co_filename != entry_file or code.co_qualname != entry_name):
                return
            if not depth[0]:
                carried[:] = [frame.f_locals[code.co_varnames[0]]]
            depth[0] += 1
            here = name_of(code)
            route.enter(here)
            if followed is not None:
                followed.enter(here if here is not None and receives(frame) else None)
        elif event == "return" and depth[0]:
            depth[0] -= 1
            route.stack.pop()
            if followed is not None:
                followed.stack.pop()

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
        "seed-group child": ["sweep", *common, "--modes", "pool", "--seeds", "2", "--group-seeds"],
    }
    routes: dict[str, Route] = {}
    for name, command in commands.items():
        routes[name] = Route()
        followed = {key: Route() for key, entry in FOLLOWED.items() if entry == name}
        routes.update(followed)
        sys.setprofile(follow(package, ROUTES[name], routes[name], *followed.values()))
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
    print("| route | files | hops | bounces | climbs |\n|---|---:|---:|---:|---:|")
    for name, route in routes.items():
        print(f"| {name} | {len(route.files)} | {len(route.hops)} | {len(route.bounces)} | {len(route.climbs)} |")
    if args.list:
        for name, route in routes.items():
            print(f"\n{name}: files {sorted(route.files)}")
            for kind, edges in (("bounce", route.bounces), ("climb", route.climbs)):
                for caller, callee in sorted(edges):
                    print(f"  {kind} {caller} -> {callee}")
            if name in FOLLOWED:
                for caller, callee in sorted(route.hops):
                    print(f"  hop {caller} -> {callee}")


if __name__ == "__main__":
    main()
