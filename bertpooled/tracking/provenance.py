"""Which code trains a run: the git commit of the package's own repository, its uncommitted difference and the
installed version, as a run logs them (params) and as a resume compares them with the code now."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

CODE_KEYS = ("git/commit", "git/dirty", "git/diff_sha256", "code/version")


def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the project's own code (the package's folder), or ("unknown", False) outside git."""
    code = code_provenance()
    return code["git/commit"], code["git/dirty"] == "true"


def code_provenance() -> dict[str, str]:
    """Which code trains: the git commit of the repository holding this package (not of the current folder),
    whether the package's files differ from it (and a sha256 of that difference), and the installed version.

    A package installed outside any repository (a wheel in site-packages) has commit "unknown"; a repository
    that merely contains the install (a venv inside some project) does not count, since it does not track it.
    """
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    import bertpooled

    package = Path(bertpooled.__file__).resolve().parent
    try:
        installed = version("bertpooled")
    except PackageNotFoundError:
        installed = "unknown"
    out = {"git/commit": "unknown", "git/dirty": "false", "git/diff_sha256": "", "code/version": installed}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, timeout=10)

    try:
        tracked = git("ls-files", "--error-unmatch", "__init__.py")
        commit = git("rev-parse", "HEAD")
        if tracked.returncode or commit.returncode:
            return out
        diff = git("diff", "HEAD", "--", ".").stdout
    except (OSError, subprocess.SubprocessError):
        return out
    out["git/commit"] = commit.stdout.decode().strip()
    out["git/dirty"] = "true" if diff else "false"
    out["git/diff_sha256"] = hashlib.sha256(diff).hexdigest() if diff else ""
    return out


def code_of(params: Mapping[str, str]) -> dict[str, str]:
    """The code provenance among a run's logged params; keys missing in older runs are absent."""
    return {k: params[k] for k in CODE_KEYS if k in params}


def logged_code(run_id: str) -> dict[str, str]:
    """The code provenance a run logged, for comparing on resume."""
    from mlflow.tracking import MlflowClient

    return code_of(MlflowClient().get_run(run_id).data.params)
