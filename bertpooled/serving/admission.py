"""What `bertpooled serve` takes on at once: a cap on the request bytes in flight, and threads of its own.

Six concurrent 9.8 MB requests made a one-text request wait 55-62 s and took the server from 0.5 to 2.3 GB
(issue 33): every request was parsed and predicted at once, on the event loop's shared default thread pool.
`Admission`, in front of everything else:

- counts the bytes of the requests being answered (a request's Content-Length, or the body limit when it
  declares none) and answers a request that would take them past the cap with a 503 and `Retry-After`, its
  body read and dropped, never kept; a small request (SMALL_BYTES or less) is always admitted, since it costs
  little and waiting behind large ones is what it must not do;
- gives the event loop a bounded executor of its own (`threads`), which MLflow's handler and the server's own
  checks run their work on, so that no number of requests makes more threads than that.

Large requests are cut into batches that take turns with small ones (`server.InBatches`).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

INVOCATIONS = "/invocations"
SMALL_BYTES = 64 * 1024
RETRY_AFTER_S = 2


class Admission:
    """ASGI middleware: a POST to /invocations that would take the bytes in flight past `max_inflight_bytes` gets a
    503 with Retry-After (one request, and any small one, always admitted); the loop runs on `threads` threads."""

    def __init__(self, app, max_inflight_bytes: int, max_body_bytes: int, threads: int) -> None:
        self.app, self.cap, self.max_body, self.threads = app, max_inflight_bytes, max_body_bytes, threads
        self.inflight = 0
        self._loops: set[int] = set()

    async def __call__(self, scope, receive, send) -> None:
        self._own_executor()
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else self.max_body  # undeclared: counted as the largest allowed
        if size > SMALL_BYTES and self.inflight > 0 and self.inflight + size > self.cap:
            await _drain(receive, limit=8 * self.max_body)
            await _send_busy(send, self.inflight, self.cap)
            return
        self.inflight += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= size

    def _own_executor(self) -> None:
        loop = asyncio.get_running_loop()
        if id(loop) not in self._loops:
            self._loops.add(id(loop))
            loop.set_default_executor(ThreadPoolExecutor(self.threads, thread_name_prefix="bertpooled-serve"))


async def _drain(receive, limit: int) -> None:
    """Read the body on and drop it (so that the client reads the answer, not a broken pipe), up to `limit`."""
    size, more = 0, True
    while more and size <= limit:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)


async def _send_busy(send, inflight: int, cap: int) -> None:
    data = json.dumps(
        {
            "error_code": "TEMPORARILY_UNAVAILABLE",
            "message": f"the server is answering {inflight / 2**20:.1f} MB of requests, its limit is "
            f"{cap / 2**20:.1f} MB: retry after {RETRY_AFTER_S} s, or send the texts in smaller requests",
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": data})
