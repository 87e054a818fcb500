"""`bertpooled serve`: MLflow's own scoring server for a logged model, with bounds and one guard in front of it.

The app is MLflow's (`mlflow.pyfunc.scoring_server.init`: the same /invocations, /ping, /health and /version as
`mlflow models serve`); what this adds:

- bounds (`Limits`): a body over `max_body_mb` is answered 413 without being kept (MLflow reads any body whole:
  one 50 MB request took a server to 15 GB), and so is a body holding one text over `max_text_chars`, JSON or
  CSV alike; a text that is not a string is a 400 naming its position (serving/classifier.py);
- batches (`InBatches`): a request's texts are predicted `batch_size` at a time, one batch of one request at
  a time, so memory follows the batch, not the request, and small requests are answered between the batches
  of a large one; a request past MLflow's timeout (answered 504) stops at its next batch instead of running on;
- a request body that is JSON nested too deeply to parse answered with a 400 instead of MLflow's 500. MLflow's
  parser catches malformed JSON but not the RecursionError that very deep nesting raises, so such a body
  reaches its error handler as a server fault;
- an empty batch (`{"inputs": []}`) answered with no predictions, which MLflow refuses as a missing input for a
  model whose signature is one unnamed column (serving/classifier.py).

Binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from bertpooled.serving.admission import Admission

INVOCATIONS = "/invocations"


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold and how it is predicted (`bertpooled serve`'s options)."""

    max_body_mb: float = 10.0
    """Largest request body; larger ones get a 413 (10 MB is about 100,000 reviews of average length)."""
    max_text_chars: int = 100_000
    """Longest single text; longer ones get a 413 (IMDB's longest review has about 14,000 characters, and the
    model reads only its first max_len tokens)."""
    batch_size: int = 256
    """Texts predicted at once: memory follows this, not the request's size."""
    max_inflight_mb: float = 0.0
    """Request bytes answered at once; a request past it gets a 503 with Retry-After (0: twice max_body_mb)."""
    threads: int = 4
    """The server's own threads, which parse and predict requests (serving/admission.py)."""

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return max(int((self.max_inflight_mb or 2 * self.max_body_mb) * 1024 * 1024), self.max_body_bytes)


class Limits:
    """ASGI middleware: a POST to /invocations over the body limit, or holding a text over the text limit, gets
    a 413; the body is counted as it arrives and never kept past the limit."""

    def __init__(self, app, limits: ServeLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > limit
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            too_large = too_large or size > limit
            if too_large:
                if size > 8 * limit:
                    break  # a client that keeps sending: answer now, and let the connection close
                continue  # read on without keeping, so that the client gets the answer, not a broken pipe
            chunks.append(message.get("body", b""))
        if too_large:
            await _send_json(
                send,
                413,
                {
                    "error_code": "REQUEST_LIMIT_EXCEEDED",
                    "message": f"the request body is over {self.limits.max_body_mb:g} MB: send the texts in several "
                    "requests (or start the server with a larger --max-body-mb)",
                },
            )
            return
        body = b"".join(chunks)
        csv = b"csv" in dict(scope.get("headers") or []).get(b"content-type", b"").lower()
        # In a thread: parsing a 50 MB body takes seconds, which would stall every other request's answer.
        longest = (
            await asyncio.to_thread(_longest_csv_field if csv else _longest_text, body)
            if len(body) > self.limits.max_text_chars
            else 0
        )
        if longest > self.limits.max_text_chars:
            await _send_json(
                send,
                413,
                {
                    "error_code": "REQUEST_LIMIT_EXCEEDED",
                    "message": f"a text has {longest:,} characters, over the limit of {self.limits.max_text_chars:,}: "
                    "the model reads only its first tokens; send it shortened",
                },
            )
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, once, then whatever the client sends next."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _longest_text(body: bytes) -> int:
    """The longest string anywhere in a JSON body (0 when it is no JSON: the next check or MLflow answers it)."""
    try:
        stack = [json.loads(body)]
    except (RecursionError, ValueError):
        return 0
    longest = 0
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            longest = max(longest, len(value))
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return longest


def _longest_csv_field(body: bytes) -> int:
    """The longest field of a CSV body (text/csv: the same text limit as a JSON body's), read row by row."""
    import csv
    import io
    import sys

    csv.field_size_limit(sys.maxsize)  # the limit is checked here, on the field's length, not by the reader
    try:
        rows = csv.reader(io.StringIO(body.decode("utf-8", errors="replace"), newline=""))
        return max((len(field) for row in rows for field in row), default=0)
    except csv.Error:
        return 0  # not CSV after all: MLflow's own parser answers it


class RequestTimedOut(Exception):
    """Raised between batches once a request has run past the server's timeout: its client has had a 504."""


class TakeTurns:
    """A first-come, first-served lock (a ticket lock): `threading.Lock` lets the thread that just released it take
    it straight back, so a large request would keep the model from every small one until its last batch."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._next_ticket = self._serving = 0

    def __enter__(self) -> None:
        with self._turn:
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            self._turn.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()

    @property
    def waiting(self) -> int:
        """How many callers wait for their turn (the one holding it not counted)."""
        return max(0, self._next_ticket - self._serving - 1)


class InBatches:
    """A pyfunc model whose `predict` runs `batch_size` rows at a time, holding the model for one batch at a time.

    MLflow's server predicts each request in a thread of its own; the requests take turns by batch, first come
    first served, so a small request waits for the batches queued before it, not for a whole large request.
    Everything else (metadata, signature) is the wrapped model's.
    """

    def __init__(self, model, batch_size: int, timeout_s: float | None = None) -> None:
        self._model, self._batch_size, self._timeout_s = model, batch_size, timeout_s
        self._lock = TakeTurns()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, data, params=None):
        started = time.monotonic()
        n = len(data) if hasattr(data, "__len__") else 0
        if n <= self._batch_size:
            with self._lock:
                return self._model.predict(data, params=params)
        parts = []
        for start in range(0, n, self._batch_size):
            if self._timeout_s and time.monotonic() - started > self._timeout_s:
                raise RequestTimedOut(f"stopped after {start} of {n} rows: past the {self._timeout_s:g} s timeout")
            rows = (
                data.iloc[start : start + self._batch_size]
                if hasattr(data, "iloc")
                else data[start : start + self._batch_size]
            )
            with self._lock:
                parts.append(self._model.predict(rows, params=params))
        return _concat(parts)


def _concat(parts: list):
    """The batches' predictions as one, in the type the model returns (frame, series, array or list)."""
    import numpy as np
    import pandas as pd

    first = parts[0]
    if isinstance(first, (pd.DataFrame, pd.Series)):
        return pd.concat(parts, ignore_index=True)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [row for part in parts for row in part]
    raise TypeError(f"cannot join predictions of type {type(first).__name__} from batches")


class RejectTooDeepJson:
    """ASGI middleware: a POST to /invocations whose JSON body nests too deeply for the parser, or holds a text
    that is not a string, gets a 400 (`_json_problem`)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = await asyncio.to_thread(_json_problem, body)  # in a thread: a large body takes seconds to parse
        if problem:
            await _send_json(send, 400, {"error_code": "BAD_REQUEST", "message": problem})
            return
        if len(body) <= EMPTY_BATCH_MAX_BYTES and _empty_batch(body):
            await _send_json(send, 200, {"predictions": []})
            return
        await self.app(scope, _replay(body, receive), send)


def _json_problem(body: bytes) -> str:
    """Why a JSON body cannot be predicted, in one line ("" when it can, or is no JSON: MLflow answers that):
    nested too deeply to parse, or a text that is not a string (MLflow turned `null` and numbers into the texts
    "None" and "3.5" and predicted them). The model checks its texts too, for `mlflow models serve`."""
    try:
        payload = json.loads(body)
    except RecursionError:
        return 'the JSON body is nested too deeply to parse: send {"inputs": ["text", ...]}'
    except ValueError:
        return ""  # malformed JSON: MLflow's own parser answers it with a 400
    for position, text in enumerate(_texts_in(payload)):
        if not isinstance(text, str):
            return (
                f"text {position} is {type(text).__name__} {json.dumps(text)[:40]}, not a string: send every text "
                "as a JSON string"
            )
    return ""


def _texts_in(payload) -> list:
    """The texts of a scoring payload, as the model reads them (the first column): `inputs`/`instances` (a list,
    of texts or of records, or a mapping of columns), `dataframe_split` or `dataframe_records`."""
    if not isinstance(payload, dict):
        return []
    data = payload.get("inputs", payload.get("instances"))
    if isinstance(data, dict):
        first: Any = next(iter(data.values()), [])
        return first if isinstance(first, list) else [first]
    if isinstance(data, list):
        return [_first_column(row) for row in data]
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return [row[0] if isinstance(row, list) and row else row for row in split["data"]]
    records = payload.get("dataframe_records")
    if isinstance(records, list):
        return [_first_column(row) for row in records]
    return []


def _first_column(row):
    """A row's text: itself, or the first value of a record or of a row of columns."""
    if isinstance(row, dict) and row:
        return next(iter(row.values()))
    if isinstance(row, list) and row:
        return row[0]
    return row


# `{"inputs": [], "params": {"predict_method": "predict_proba"}}` and the like are short; longer bodies are not
# parsed twice.
EMPTY_BATCH_MAX_BYTES = 256


def _empty_batch(body: bytes) -> bool:
    """A JSON body whose only data is an empty list: `inputs`, `instances` or `dataframe_records` (with or
    without `params`)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    data = {key: value for key, value in payload.items() if key != "params"}
    return (
        len(data) == 1
        and next(iter(data)) in ("inputs", "instances", "dataframe_records")
        and data[next(iter(data))] == []
    )


async def _send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def app_for(model_uri: str, limits: ServeLimits | None = None):
    """MLflow's scoring app for the pyfunc model at `model_uri`, bounded by `limits` and behind the nesting guard;
    a model that cannot be loaded is a one-line error."""
    import mlflow.pyfunc
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from bertpooled.errors import BertpooledError
    from bertpooled.tracking.probe import check_tracking_reachable

    limits = limits or ServeLimits()
    if not (
        limits.max_body_mb > 0
        and limits.max_inflight_mb >= 0
        and min(limits.max_text_chars, limits.threads, limits.batch_size) >= 1
    ):
        raise BertpooledError(
            f"serve limits must be positive, got {limits}: pass --max-body-mb, --max-text-chars "
            "and --batch-size above 0"
        )
    if model_uri.startswith(("runs:/", "models:/")):
        check_tracking_reachable(read_only=True)  # such a URI is resolved through the store, which serving only reads
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise BertpooledError(
            f"cannot load model {model_uri} ({str(exc).splitlines()[0][:200]}): pass a logged model's URI, "
            "e.g. runs:/<run id>/model, with MLFLOW_TRACKING_URI pointing at its store"
        ) from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise BertpooledError(
            f"model {model_uri} is damaged ({type(exc).__name__}: {first}): its files do not load; log it again "
            "(train a new run) or serve another version"
        ) from None
    batched = InBatches(model, limits.batch_size, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    # InBatches is a PyFuncModel in all the scoring server uses (predict, metadata), not by class.
    bounded = Limits(RejectTooDeepJson(scoring_server.init(batched)), limits)  # type: ignore[arg-type]
    return Admission(bounded, limits.max_inflight_bytes, limits.max_body_bytes, limits.threads)


def serve(model_uri: str, host: str, port: int, limits: ServeLimits, echo=print) -> None:
    """Load the model, then answer on http://host:port/invocations until stopped."""
    import uvicorn

    application = app_for(model_uri, limits)
    echo(
        f"serving {model_uri} on http://{host}:{port}/invocations (bodies up to {limits.max_body_mb:g} MB, "
        f"{limits.batch_size} texts per batch)"
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")
