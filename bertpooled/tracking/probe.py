"""Is the tracking store there? One probe, seconds not minutes, before any work; and store failures told apart
from bugs, each as one line that names the store and what to do."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import mlflow
from mlflow.tracking import MlflowClient

from bertpooled.errors import BertpooledError, redact_uri


PROBE_TIMEOUT_S = 5.0


def check_tracking_reachable(uri: str | None = None) -> None:
    """Fail within seconds, in one line, when the tracking store (`uri`, default MLflow's) cannot be used.

    A server must answer `/health` *and* its REST API (a server whose API hangs would otherwise block the
    first MLflow call for minutes of retries); a database server must accept a connection; a local store
    must open (a damaged `mlflow.db` otherwise fails with pages of SQLAlchemy traceback).
    """
    uri = uri or mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _probe_server(uri)
    elif parts.scheme.split("+")[0] in ("postgresql", "mysql", "mssql") and parts.hostname:
        _probe_database(uri)
    else:
        check_store_opens(uri)


def _probe_server(uri: str) -> None:
    import base64
    import urllib.error
    import urllib.request

    base = redact_uri(uri).rstrip("/")
    headers = {}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    for path, what in (("/health", f"cannot reach the MLflow tracking server at {base}"),
                       ("/api/2.0/mlflow/experiments/search?max_results=1",
                        f"the MLflow tracking server at {base} answers /health but its API does not answer")):
        try:
            request = urllib.request.Request(base + path, headers=headers)
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # something answers: MLflow's own calls will report what is wrong
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BertpooledError(
                f"{what} (unreachable: {reason}, waited {PROBE_TIMEOUT_S:.0f} s): start or restart it (mlflow server), "
                "or fix MLFLOW_TRACKING_URI"
            ) from None


def _probe_database(uri: str) -> None:
    """A TCP connection to the database server, with a short timeout (its driver would retry for minutes)."""
    import socket

    parts = urlsplit(uri)
    default_port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[parts.scheme.split("+")[0]]
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise BertpooledError(
            f"tracking database {redact_uri(uri)} is unreachable ({exc.strerror or exc}, waited "
            f"{PROBE_TIMEOUT_S:.0f} s): start it, or fix MLFLOW_TRACKING_URI"
        ) from None


def check_store_opens(uri: str) -> None:
    """Open a local store and read from it; a damaged or unreadable one is a one-line error."""
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, sqlite3 and MLflow errors alike: the store is unusable
        raise store_error(uri, exc) from None


def store_error(uri: str | None, exc: BaseException) -> BertpooledError:
    """The one line for a tracking store that failed under us (damaged, read-only, full disk)."""
    uri = redact_uri(uri or mlflow.get_tracking_uri())
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split()).split(" [SQL:")[0][:200] or type(cause).__name__
    return BertpooledError(
        f"tracking store {uri} failed ({type(cause).__name__}: {text}): free disk space, make it writable, or "
        "restore mlflow.db from a backup (or point MLFLOW_TRACKING_URI at another store); a run it left RUNNING "
        "resumes with --resume"
    )


def is_store_failure(exc: BaseException) -> bool:
    """Whether `exc` came from the tracking store itself (database, disk), not from this project's code."""
    import errno
    import sqlite3

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - MLflow depends on SQLAlchemy
        SQLAlchemyError = ()  # noqa: N806
    seen = exc
    while seen is not None:
        if isinstance(seen, (sqlite3.Error, SQLAlchemyError)):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
