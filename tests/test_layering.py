"""The package's layering, read from its source: which module may import what (function-level, TYPE_CHECKING and
importlib imports included)."""

import ast
from pathlib import Path

import pytest

import bertpooled

PACKAGE = Path(bertpooled.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _dynamic_import(node: ast.AST) -> str | None:
    """The module an `importlib.import_module("x")` or `__import__("x")` call names, if it is a literal."""
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    return None


def _nodes(tree: ast.AST, type_checking: bool):
    """Every node, or (``type_checking=False``) every node but those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if (
                not type_checking
                and isinstance(child, ast.If)
                and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"
            ):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an import-from names, a relative one resolved against `package`."""
    base = node.module or ""
    if not node.level:
        return base
    return ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))


def imported_modules(path: Path, package: str = "", type_checking: bool = True) -> set[str]:
    """Every module a file imports, as absolute dotted names: at any depth (function-level imports), under
    `if TYPE_CHECKING:` too unless ``type_checking`` is False (an annotation import still ties two modules
    together), and through `importlib.import_module` / `__import__` with a literal name. ``package`` resolves
    relative imports."""
    found = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)), type_checking):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found.add(base)
            # `from bertpooled.run import fit` imports the module bertpooled.run.fit; `from x import name` is
            # kept as x.name too, so a scan for a module finds `from mlflow import tracking`.
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (name := _dynamic_import(node)) is not None:
            found.add(name)
    return found


def imports_of(name: str, type_checking: bool = True) -> set[str]:
    """Every module `name` imports (see `imported_modules`)."""
    path = MODULES[name]
    return imported_modules(path, name if path.name == "__init__.py" else name.rpartition(".")[0], type_checking)


def _internal(name: str) -> set[str]:
    return {m for m in imports_of(name) if m in MODULES and m != name}


def _under(name: str, *packages: str) -> bool:
    return any(name == f"bertpooled.{p}" or name.startswith(f"bertpooled.{p}.") for p in packages)


def test_run_keeps_only_one_run_modules():
    """Sweeps, tuning and their signal handling moved out of run/ (issue 22): nothing of them is left there."""
    moved = ("sweep", "parallel", "ray_executor", "grouped_sweep", "interrupts", "tuning", "trials", "search_space")
    assert sorted(m for m in MODULES if m.removeprefix("bertpooled.run.") in moved) == []


def test_every_run_module_says_its_job_and_the_architecture_page_names_it():
    """run/ is split by job (issue 30 replaced issue 22's cap on its module count): each module opens with what it
    does, and docs/architecture.md's run/ row names every one, with the count."""
    import re

    run = sorted(m.removeprefix("bertpooled.run.") for m in MODULES if m.startswith("bertpooled.run."))
    row = next(
        line for line in (PACKAGE.parent / "docs" / "architecture.md").read_text().splitlines() if "| `run/`" in line
    )
    assert f"({len(run)} modules)" in row
    assert [m for m in run if not re.search(rf"`{m}`", row)] == []
    assert [m for m in run if not ast.get_docstring(ast.parse(MODULES[f"bertpooled.run.{m}"].read_text()))] == []


def _functions_over_60_lines(files: dict[str, Path]) -> dict[str, int]:
    """`name.function` -> its length in lines, for each function of `files` (name -> path) longer than 60."""
    long = {}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long[f"{name}.{node.name}"] = length
    return long


def test_no_function_is_over_60_lines():
    """A function reads in one screen (issue 22); the long ones were split where their steps part."""
    assert _functions_over_60_lines(MODULES) == {}


BENCHMARKS = PACKAGE.parent / "benchmarks"
# benchmarks/gpu/payload is what benchmarks/gpu/pack.sh packs for the device (git-ignored), none of it ours.
BENCHMARK_SCRIPTS = {
    str(p.relative_to(PACKAGE.parent)): p
    for p in sorted(BENCHMARKS.rglob("*.py"))
    if p.relative_to(BENCHMARKS).parts[:2] != ("gpu", "payload")
}


def test_no_benchmark_function_is_over_60_lines():
    """The benchmarks' scripts are read and rerun as the package is: the same one-screen rule holds for them."""
    assert BENCHMARK_SCRIPTS, f"no benchmark scripts under {BENCHMARKS}"
    assert _functions_over_60_lines(BENCHMARK_SCRIPTS) == {}


def test_only_tracking_and_the_served_model_code_import_mlflow():
    """At run time: an MLflow type named under `if TYPE_CHECKING:` (sweep/resume.py's Run) loads no MLflow."""
    offenders = {
        name: sorted(m for m in imports_of(name, type_checking=False) if m.split(".")[0] == "mlflow")
        for name in MODULES
        if not _under(name, "tracking", "serving")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "lower, forbidden",
    [
        ("data", ("model", "run", "sweep", "tune", "tracking", "report", "serving", "cli")),
        ("model", ("run", "sweep", "tune", "tracking", "report", "serving", "cli")),
        ("tracking", ("run", "sweep", "tune", "report", "serving", "cli")),
        # One run's modules stand below the sweeps and the tuning that drive many runs.
        ("run", ("sweep", "tune")),
        # Sweeps (above run/, below the CLI) know nothing of tuning; tuning may use sweep's executors.
        ("sweep", ("tune", "cli")),
        ("tune", ("cli",)),
    ],
)
def test_lower_layers_do_not_import_upper_ones(lower, forbidden):
    offenders = {
        name: sorted(m for m in _internal(name) if _under(m, *forbidden)) for name in MODULES if _under(name, lower)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_report_builder_is_pure():
    """Everything in report/ but the publishing step (compare.py) works on plain data: no store, no runs."""
    offenders = {
        name: sorted(m for m in _internal(name) if _under(m, "run", "tracking", "serving", "cli"))
        for name in MODULES
        if _under(name, "report") and name != "bertpooled.report.compare"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_nothing_outside_the_cli_imports_it():
    importers = {n for n in MODULES if not _under(n, "cli") and any(_under(m, "cli") for m in _internal(n))}
    assert sorted(importers - {"bertpooled.__main__"}) == []


def private_imports(path: Path, package: str = "") -> list[str]:
    """Each `_`-prefixed name `path` takes from another module of the package: `from bertpooled.x import _name`
    (relative too), or `module._name` on a module it imported (`from bertpooled import x`, `import ... as x`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            if base.split(".")[0] != "bertpooled":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    modules.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} from {base} import {alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.asname and a.name.split(".")[0] == "bertpooled")
    for node in ast.walk(tree):
        private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        if private and isinstance(node.value, ast.Name) and node.value.id in modules:
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_imported_from_another_module():
    """A name another module needs is public (issue 30: 27 cross-module uses of 12 `_` names in the CLI alone)."""
    offenders = {
        name: found
        for name, path in MODULES.items()
        if (found := private_imports(path, name if path.name == "__init__.py" else name.rpartition(".")[0]))
    }
    assert offenders == {}


def test_the_private_import_scan_sees_each_spelling(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from bertpooled.cli.shared import _hidden, shown\n"
        "from bertpooled.config import rules\n"
        "import bertpooled.tracking.runs as runs\n"
        "from .shared import _relative\n"
        "rules._bad, runs._end, rules.reject, shown.__doc__\n"
    )
    assert private_imports(sample, "bertpooled.cli") == [
        "sample.py:1 from bertpooled.cli.shared import _hidden",
        "sample.py:4 from bertpooled.cli.shared import _relative",
        "sample.py:5 rules._bad",
        "sample.py:5 runs._end",
    ]


def test_the_scanner_sees_function_level_type_checking_and_importlib_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bertpooled.report.records import Report\n"
        "def f():\n    from mlflow.tracking import MlflowClient\n    import mlflow.entities\n"
        "    importlib.import_module('mlflow.pyfunc')\n"
    )
    found = imported_modules(sample)
    assert {"bertpooled.report.records", "mlflow.tracking", "mlflow.entities", "mlflow.pyfunc"} <= found


def test_no_import_cycles():
    """No module reaches itself through imports, counting those under `if TYPE_CHECKING:`: a type-only import
    back still means the lower module knows the upper one."""
    graph = {name: _internal(name) for name in MODULES}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            # A package's __init__ is imported with any of its modules; it re-exports, it is no layer of its own.
            packages = ("data", "model", "run", "sweep", "tune", "tracking", "report", "serving")
            if nxt.endswith(tuple(f".{p}" for p in packages)):
                continue
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_module_size_is_a_guide_not_a_target():
    """Ownership rules shape the house (below); size is a guide: a module over 400 lines is reported as a warning
    (split it where its jobs part), only one over 500 fails."""
    import warnings

    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    over_guide = {name: n for name, n in sizes.items() if n > 400}
    if over_guide:
        warnings.warn(f"modules over 400 lines: {over_guide}", stacklevel=1)
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def trains(path: Path) -> bool:
    """Whether a file trains: imports torch.optim or calls `.backward()` (read from its code, not its comments)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.optim") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.optim"):
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "backward":
            return True
    return False


def test_only_run_trains():
    assert sorted(name for name, path in MODULES.items() if not _under(name, "run") and trains(path)) == []


# Today's exceptions to "sweep/ and tune/ plan and schedule" (issue 30): each goes when its feature moves.
PLANNERS_REACHING_DOWN = {
    # which children form a seed group (`grouped.can_group`); the group's training is run.grouped's (issue 30)
    "bertpooled.sweep.groups": {"bertpooled.run.grouped"},
    # a backbone's shape, read to plan children
    "bertpooled.sweep.runner": {"bertpooled.model.backbone"},
    # a trial's pipeline (`TrialPipeline`: build and fit, no test set) runs through run.experiment.run_scope; it
    # lives in tune/ while run/ is capped at 13 modules
    "bertpooled.tune.trials": {"bertpooled.run.fit"},
}


def test_sweep_and_tune_reach_the_model_and_the_loop_only_through_a_run():
    """sweep/ and tune/ plan and schedule: they run runs (run.experiment), not the model or the training loop."""
    loop = ("bertpooled.run.fit", "bertpooled.run.grouped")
    reach = {
        name: {m for m in _internal(name) if _under(m, "model") or m in loop}
        for name in MODULES
        if _under(name, "sweep", "tune")
    }
    assert {k: v for k, v in reach.items() if v} == PLANNERS_REACHING_DOWN


def test_the_contract_spells_mlflows_own_names_without_importing_mlflow():
    from mlflow.entities import RunStatus
    from mlflow.utils import mlflow_tags

    from bertpooled import contract

    assert (contract.RUN_NAME_TAG, contract.PARENT_RUN_TAG, contract.NOTE_TAG) == (
        mlflow_tags.MLFLOW_RUN_NAME,
        mlflow_tags.MLFLOW_PARENT_RUN_ID,
        mlflow_tags.MLFLOW_RUN_NOTE,
    )
    assert tuple(RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)) == (
        contract.FINISHED,
        contract.FAILED,
        contract.KILLED,
    )
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    assert contract.MAX_TAG_VALUE == MAX_TAG_VAL_LENGTH


def test_every_name_a_benchmark_takes_from_the_package_exists():
    """Benchmarks are the package's clients and no test runs them: a name moved in the package (a function that
    changed modules) must not leave a benchmark script failing at its first use. Checked: every name imported
    from bertpooled, and every `module.name` used on a bertpooled module the script imported."""
    import importlib
    import importlib.util
    import types

    missing = []
    for where, script in BENCHMARK_SCRIPTS.items():
        tree = ast.parse(script.read_text(), str(script))
        modules = {}  # the names the script binds to bertpooled modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bertpooled"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    name, value = f"{node.module}.{alias.name}", getattr(module, alias.name, None)
                    if value is None and getattr(module, "__path__", None) and importlib.util.find_spec(name):
                        value = importlib.import_module(name)  # a submodule nothing imported yet
                    if value is None:
                        missing.append(f"{where}: {name}")
                    elif isinstance(value, types.ModuleType):
                        modules[alias.asname or alias.name] = value
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("bertpooled") and alias.asname:
                        modules[alias.asname] = importlib.import_module(alias.name)
        for node in ast.walk(tree):
            used = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
            if used and not hasattr(modules[node.value.id], node.attr):
                missing.append(f"{where}:{node.lineno}: {modules[node.value.id].__name__}.{node.attr}")
    assert missing == []
