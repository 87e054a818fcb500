"""Ctrl-C and SIGTERM that never land inside a tracking-store call.

Python raises KeyboardInterrupt at whatever bytecode the main thread is running. Inside MLflow's SQLAlchemy
store that can be between a write and its commit: the interrupted connection keeps its SQLite write lock
while the exception (whose traceback holds the connection) unwinds, and the write that should end the run
KILLED then waits on this very process's lock until SQLite gives up ("database is locked"), leaving the run
RUNNING. So a signal that arrives during a store call is handed back to this process a moment later, until
it arrives between store calls; there it raises KeyboardInterrupt as usual.

Against a database server, deferred for DEFER_AT_MOST_S at most: a store call that does not return (a server
that accepts connections and never answers) would otherwise hold the signal for as long as the call's own
deadline, or forever. Past that the signal is taken inside the call; ending the run KILLED then may fail
against that store, and the run's dead owner tells a later `--resume` that nobody drives it. A SQLite store
(MLflow's default) keeps the plain rule: its calls return within its 20 s busy timeout, and a signal taken
inside one would leave this process waiting on its own lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

# Modules whose frames mean "a database transaction of the tracking store may be open": MLflow's SQL stores
# and the drivers under them. Not MLflow's REST client: a request cut short holds no lock here, and its
# retries against an unreachable server may last minutes, which Ctrl-C must not wait for.
DATABASE_MODULES = ("sqlalchemy", "sqlite3", "alembic", "psycopg", "psycopg2", "mlflow.store.db")
REDELIVER_AFTER_S = 0.05
DEFER_AT_MOST_S = 3.0


def in_store_call(frame: FrameType | None) -> bool:
    """Whether `frame` or any frame below it runs a tracking-store database call."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        sql_store = name.startswith("mlflow.store.") and "sqlalchemy" in name  # sqlalchemy_store, ..._workspace_store
        if sql_store or any(name == m or name.startswith(m + ".") for m in DATABASE_MODULES):
            return True
        frame = frame.f_back
    return False


def deferred_interrupt(on_interrupt: Callable[[int], bool] = lambda signum: True) -> Callable:
    """A signal handler raising KeyboardInterrupt, once, outside store calls.

    `on_interrupt(signum)` runs when the interrupt is taken (not while it is deferred); it returns whether
    to raise here (a sweep worker with no child running only notes the stop). After the first interrupt,
    further SIGINT/SIGTERM are ignored, so that a second signal cannot cut short the cleanup that ends the
    run KILLED.
    """
    deferred_since: list[float] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not deferred_since:
            deferred_since.append(time.monotonic())
        if in_store_call(frame) and (_local_store() or time.monotonic() - deferred_since[0] < DEFER_AT_MOST_S):
            timer = threading.Timer(REDELIVER_AFTER_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        deferred_since.clear()
        if not on_interrupt(signum):
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    return handler


def _local_store() -> bool:
    """Whether the tracking store is a SQLite file (MLflow's default when MLFLOW_TRACKING_URI is unset)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return not uri or uri.startswith("sqlite:")


def install(on_interrupt: Callable[[int], bool] = lambda signum: True) -> None:
    """Ctrl-C and SIGTERM (a scheduler, `kill`) both unwind as KeyboardInterrupt, outside store calls."""
    handler = deferred_interrupt(on_interrupt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
