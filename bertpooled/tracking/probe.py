"""Is the tracking store there? One probe, seconds not minutes, before any work; and store failures told apart
from bugs, each as one line that names the store and what to do."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit

import mlflow
from mlflow.tracking import MlflowClient

from bertpooled.errors import BertpooledError, redact_uri
from bertpooled.tracking.deadlines import bound_store_waits

PROBE_TIMEOUT_S = 5.0
# How long a process waits for another one's first contact with a new SQLite store (creating and migrating its
# tables takes seconds; a minute means that process is stuck).
FIRST_CONTACT_WAIT_S = 120.0


def check_tracking_reachable(uri: str | None = None, *, read_only: bool = False) -> None:
    """Fail within seconds, in one line, when the tracking store (`uri`, default MLflow's) cannot be used.

    A server must answer `/health` *and* its REST API (a server whose API hangs would otherwise block the
    first MLflow call for minutes of retries); a database server must accept a connection; a local store
    must open (a damaged `mlflow.db` otherwise fails with pages of SQLAlchemy traceback), and a file that is
    there but is not an MLflow store is never taken for a new one. `read_only` (a command that only reads,
    such as `compare-runs --no-log`): a local store must exist already; none is created, no lock file made.
    """
    bound_store_waits()  # before the first contact: every later wait on the store has a deadline
    uri = uri or mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _probe_server(uri)
    elif parts.scheme.split("+")[0] in ("postgresql", "mysql", "mssql") and parts.hostname:
        _probe_database(uri)
    else:
        check_store_opens(uri, read_only=read_only)


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
    for path, what in (
        ("/health", f"cannot reach the MLflow tracking server at {base}"),
        (
            "/api/2.0/mlflow/experiments/search?max_results=1",
            f"the MLflow tracking server at {base} answers /health but its API does not answer",
        ),
    ):
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
    kind = parts.scheme.split("+")[0]
    default_port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[kind]
    # libpq's own deadlines for every later connection are deadlines.DEFAULTS' (PGCONNECT_TIMEOUT, PGOPTIONS).
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=PROBE_TIMEOUT_S) as conn:
            if kind == "postgresql":
                # An SSLRequest (8 bytes, no credentials): a PostgreSQL server answers it with one byte, S or N.
                conn.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
            if kind in ("postgresql", "mysql"):  # a MySQL server greets first
                try:
                    answered = conn.recv(1)
                except TimeoutError:
                    answered = b""
                if not answered:
                    raise BertpooledError(
                        f"tracking database {redact_uri(uri)} accepts connections but does not answer (waited "
                        f"{PROBE_TIMEOUT_S:.0f} s): check that a database server listens there, or fix "
                        "MLFLOW_TRACKING_URI"
                    )
    except OSError as exc:
        raise BertpooledError(
            f"tracking database {redact_uri(uri)} is unreachable ({exc.strerror or exc}, waited "
            f"{PROBE_TIMEOUT_S:.0f} s): start it, or fix MLFLOW_TRACKING_URI"
        ) from None


def check_store_opens(uri: str, read_only: bool = False) -> None:
    """Open a local store and read from it; a damaged or unreadable one is a one-line error.

    The first contact with a SQLite file creates and migrates its tables: done by several processes at once
    (six `train` on a fresh mlflow.db), the migrations collide and most of them fail, sometimes leaving the file
    broken for good. So every process opens the store under one lock, a file beside the database: the first
    creates the tables, the others then find them made. Under that lock the file is looked at first
    (`check_sqlite_file`): MLflow takes any file without its tables for a new store and writes them over it.
    """
    path = sqlite_file(uri)
    try:
        if read_only:
            if path:
                check_sqlite_file(path, read_only=True)
        else:
            with first_contact(uri):
                if path:
                    check_sqlite_file(path)
                MlflowClient(uri).search_experiments(max_results=1)
            return
        MlflowClient(uri).search_experiments(max_results=1)
    except BertpooledError:
        raise
    except Exception as exc:
        raise store_error(uri, exc) from None


SQLITE_HEADER = b"SQLite format 3\x00"
# Tables every MLflow SQL store has, whatever its schema version.
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def check_sqlite_file(path: str, read_only: bool = False) -> None:
    """An existing SQLite store file is an MLflow store, read without writing a byte; a one-line error naming
    the file and how to recover when it is empty (a crash, a bad copy), not SQLite at all, SQLite without
    MLflow's tables, or damaged. A missing file is fine (it is created), unless `read_only`."""
    import sqlite3
    from pathlib import Path

    file = Path(path)
    aside = "move it aside (a new store is made where none is)"
    if not file.exists():
        _check_new_store(path, read_only)
        return
    if not file.is_file():
        raise BertpooledError(f"tracking store {path} is not a file: point MLFLOW_TRACKING_URI at an mlflow.db")
    try:
        with open(file, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BertpooledError(
            f"tracking store {path} cannot be read ({exc.strerror or exc}): check the file and its permissions"
        ) from None
    if not head:
        raise BertpooledError(
            f"tracking store {path} is an empty file (0 bytes), not an MLflow store (a crash or a bad copy leaves "
            f"one), and it is not written over: restore it from a backup, or {aside}"
        )
    if head != SQLITE_HEADER:
        raise BertpooledError(
            f"tracking store {path} is not a SQLite database (so not an MLflow store), and it is not written over: "
            f"restore it from a backup, or {aside}"
        )
    try:
        with closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise BertpooledError(
            f"tracking store {path} is damaged ({type(exc).__name__}: {str(exc)[:120]}): restore it from a "
            f"backup, or {aside}"
        ) from None
    if not MLFLOW_TABLES.issubset(tables):
        held = (
            f"holds the tables {', '.join(sorted(tables)[:3])}{', ...' if len(tables) > 3 else ''}"
            if tables
            else "holds no tables"
        )
        raise BertpooledError(
            f"tracking store {path} is a SQLite database that {held}, not MLflow's, and it is not written over: "
            f"restore it from a backup, or {aside}"
        )


def _check_new_store(path: str, read_only: bool) -> None:
    """Where no store file is: refused for a command that only reads; else its folder must take a new one."""
    from pathlib import Path

    file = Path(path)
    if read_only:
        raise BertpooledError(
            f"no tracking store at {path}: this command only reads and creates none; point "
            "MLFLOW_TRACKING_URI at the store that holds your runs (e.g. sqlite:///path/to/mlflow.db)"
        )
    # Said now: MLflow retries a store it cannot create for about 100 s before its own 10-line error.
    folder = file.parent
    if not folder.is_dir():
        raise BertpooledError(
            f"tracking store {path} cannot be made: its folder {folder} does not exist; create it, or fix "
            "MLFLOW_TRACKING_URI"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BertpooledError(
            f"tracking store {path} cannot be made: its folder {folder} is not writable; make it writable, or "
            "fix MLFLOW_TRACKING_URI"
        )


def sqlite_file(uri: str) -> str | None:
    """The database file of a `sqlite:///` URI (None for any other store, or an in-memory database)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return database if database and database != ":memory:" else None


@contextmanager
def first_contact(uri: str) -> Iterator[None]:
    """Hold the lock that serialises opening the SQLite store at `uri` across processes (nothing for other stores).

    An exclusive `flock` on `<database>-init.lock` beside the file; the OS drops it when its holder dies, however
    it dies. A folder where no lock file can be made is used without one (opening the store then says what is
    wrong with the folder). Several machines sharing one SQLite file over a network file system are not covered:
    flock is not reliable there, and neither is SQLite itself; use a tracking server.
    """
    import fcntl

    path = sqlite_file(uri)
    try:
        # Entered by the `with handle:` below; opened here so that only the open's OSError is caught.
        handle = open(f"{path}-init.lock", "a+") if path else None  # noqa: SIM115
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        deadline = time.monotonic() + FIRST_CONTACT_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BertpooledError(
                        f"another process has been opening the tracking store {redact_uri(uri)} for over "
                        f"{FIRST_CONTACT_WAIT_S:.0f} s (it holds {path}-init.lock): stop it, then run again"
                    ) from None
                time.sleep(0.05)
        yield


def store_error(uri: str | None, exc: BaseException) -> BertpooledError:
    """The one line for a tracking store that failed under us, naming the cause and the fix that fits it."""
    uri = redact_uri(uri or mlflow.get_tracking_uri())
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split()).split(" [SQL:")[0][:200] or type(cause).__name__
    return BertpooledError(f"tracking store {uri} failed ({type(cause).__name__}: {text}): {_store_fix(cause, text)}")


def _store_fix(cause: BaseException, text: str) -> str:
    """What to do about a store failure, by what it says: only the fix that fits, not every fix there is."""
    import errno

    low = text.lower()
    if "_alembic_tmp_" in low or "already exists" in low or "duplicate column" in low or "migration" in low:
        return (
            "its tables were being created or migrated by another process at the same time (or such a migration "
            "was cut short): run again; if it keeps failing, restore mlflow.db from a backup, or start a new store"
        )
    if "readonly" in low or "read-only" in low or getattr(cause, "errno", None) == errno.EROFS:
        return "the database or its folder is read-only: make both writable, or point MLFLOW_TRACKING_URI elsewhere"
    if "disk is full" in low or "no space" in low or getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free space, then resume any run it left RUNNING with --resume"
    if "locked" in low:
        return "the database is locked by a process writing to it: wait for it to finish, or stop it"
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return "the file is damaged: restore mlflow.db from a backup, or point MLFLOW_TRACKING_URI at another store"
    if "unable to open" in low or getattr(cause, "errno", None) in (errno.ENOENT, errno.EACCES, errno.EPERM):
        return "the database file or its folder cannot be opened: check the path and its permissions"
    if "out-of-date database schema" in low or "mlflow db upgrade" in low:
        return "its schema is older than this MLflow: back it up, then run `mlflow db upgrade <uri>`"
    return (
        "check that the store is reachable and writable (or point MLFLOW_TRACKING_URI at another store); a run "
        "it left RUNNING resumes with --resume"
    )


class _FirstLineOnly:
    """A logging filter: a record keeps the first line of its message and loses its traceback."""

    def filter(self, record) -> bool:
        if record.exc_info or record.exc_text or "\n" in str(record.msg):
            lines = record.getMessage().splitlines()
            record.msg, record.args = (lines[0] if lines else "")[:300], ()
            record.exc_info = record.exc_text = None
        return True


def keep_tracebacks_out() -> None:
    """MLflow's, SQLAlchemy's and Alembic's log lines keep one line each, without tracebacks.

    A store that fails (read-only, full, damaged) makes MLflow log every failed statement with its whole
    traceback before raising: a thousand lines ahead of the one line this project prints for the same failure.
    The failure itself still propagates, and a bug in this project keeps its traceback.
    """
    import logging

    for name in ("mlflow", "sqlalchemy.engine", "alembic"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _FirstLineOnly) for f in handler.filters):
                handler.addFilter(_FirstLineOnly())


def is_store_failure(exc: BaseException) -> bool:
    """Whether `exc` came from the tracking store itself (database, disk), not from this project's code."""
    import errno
    import sqlite3

    store_errors: tuple[type[BaseException], ...]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        store_errors = (sqlite3.Error, SQLAlchemyError)
    except ImportError:  # pragma: no cover - MLflow depends on SQLAlchemy
        store_errors = (sqlite3.Error,)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, store_errors):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
