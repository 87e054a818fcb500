"""Every wait on the tracking store has a deadline, set once per process before the first store contact.

MLflow's own defaults wait minutes: an HTTP request waits 120 s and is retried 7 times with a doubling backoff
(about four minutes against a server that accepts and never answers), and libpq waits without end for a
PostgreSQL server that accepts a connection and never answers. What is bounded here, each only when the user
has not set it already (their value always wins):

- HTTP (a tracking server): `MLFLOW_HTTP_REQUEST_TIMEOUT` 20 s a request (MLflow: 120 s) and
  `MLFLOW_HTTP_REQUEST_MAX_RETRIES` 5 (MLflow: 7), with MLflow's doubling backoff from 2 s: a server that
  refuses connections is retried for about a minute (a restart in that window loses nothing), one that
  accepts and never answers fails a call after about 3 minutes instead of about 20;
- PostgreSQL (libpq, psycopg 2 and 3): `PGCONNECT_TIMEOUT` 10 s for every connection and, through `PGOPTIONS`,
  a statement timeout of 120 s and a lock timeout of 60 s for every statement;
- SQLite: MLflow sets a 20 s busy timeout on every connection itself (`PRAGMA busy_timeout`), so a store
  locked by another process fails a write after 20 s, not never.

Not bounded here: MySQL (its driver takes its timeouts from the URI only: add `?connect_timeout=10&
read_timeout=120` to `MLFLOW_TRACKING_URI`) and MSSQL.

`hurried` shortens the HTTP deadlines for the writes that end an interrupted run, so that Ctrl-C or SIGTERM is
answered within seconds even when the server stopped answering: one try of 5 s, no retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: The deadlines this module sets, by variable: each applies only where the variable is unset.
DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "PGCONNECT_TIMEOUT": "10",
    "PGOPTIONS": "-c statement_timeout=120000 -c lock_timeout=60000",
}
#: The HTTP deadlines while an interrupted run is being ended.
HURRIED = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def bound_store_waits() -> dict[str, str]:
    """Set each of DEFAULTS the user has not set (set empty, it stays empty: `PGOPTIONS=` for a PgBouncer that
    refuses startup options); returns those set here. Child processes inherit them."""
    added = {name: value for name, value in DEFAULTS.items() if name not in os.environ}
    os.environ.update(added)
    return added


@contextmanager
def hurried() -> Iterator[None]:
    """HURRIED's deadlines for the block (MLflow reads them at each request), then the ones before."""
    before = {name: os.environ.get(name) for name in HURRIED}
    os.environ.update(HURRIED)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
