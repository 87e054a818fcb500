"""The report side's layering: report/ builds, renders and publishes; only tracking/ talks to MLflow."""

import ast
from pathlib import Path

import bertpooled

PACKAGE = Path(bertpooled.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level and TYPE_CHECKING imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_no_module_under_report_imports_mlflow():
    files = sorted((PACKAGE / "report").rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in imported_modules(path) if n.split(".")[0] == "mlflow")
        for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from mlflow.tracking import MlflowClient\n    import mlflow.entities\n")
    assert {"mlflow.tracking", "mlflow.entities"} <= imported_modules(sample)
