"""Which code trains a run: the git commit of the package's own repository, its uncommitted difference and the
installed version, as a run logs them (params) and as a resume compares them with the code now."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from bertpooled.contract import CODE_PARAMS, CODE_VERSION_PARAM, GIT_COMMIT_PARAM, GIT_DIFF_PARAM, GIT_DIRTY_PARAM


def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the project's own code (the package's folder), or ("unknown", False) outside git."""
    code = code_provenance()
    return code[GIT_COMMIT_PARAM], code[GIT_DIRTY_PARAM] == "true"


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
    out = {GIT_COMMIT_PARAM: "unknown", GIT_DIRTY_PARAM: "false", GIT_DIFF_PARAM: "", CODE_VERSION_PARAM: installed}

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
    out[GIT_COMMIT_PARAM] = commit.stdout.decode().strip()
    out[GIT_DIRTY_PARAM] = "true" if diff else "false"
    out[GIT_DIFF_PARAM] = hashlib.sha256(diff).hexdigest() if diff else ""
    return out


def code_of(params: Mapping[str, str]) -> dict[str, str]:
    """The code provenance among a run's logged params; keys missing in older runs are absent."""
    return {k: params[k] for k in CODE_PARAMS if k in params}


def logged_code(run_id: str) -> dict[str, str]:
    """The code provenance a run logged, for comparing on resume."""
    from mlflow.tracking import MlflowClient

    return code_of(MlflowClient().get_run(run_id).data.params)
