"""A server that admits work (issue 33): request bytes in flight capped (503 with Retry-After beyond), small requests
always admitted, and threads of its own, bounded. Batches that take turns: tests/test_fault_classes.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

from bertpooled.serving.admission import SMALL_BYTES, Admission
from bertpooled.serving.server import ServeLimits

MB = 2**20


def _post(app, size: int, declare: bool = True):
    """One POST of `size` bytes (in 1 MB chunks) to /invocations; returns (status, headers, answer) once answered."""

    async def go():
        chunks = [b"x" * min(MB, size - i) for i in range(0, size, MB)] or [b""]
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        headers = [(b"content-length", str(size).encode())] if declare else []
        await app({"type": "http", "method": "POST", "path": "/invocations", "headers": headers}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return go()


class _HeldApp:
    """Stands in for MLflow's app: holds every request until released, then answers 200 with its body's size."""

    def __init__(self) -> None:
        self.release, self.entered = asyncio.Event(), 0

    async def __call__(self, scope, receive, send):
        self.entered += 1
        size, more = 0, True
        while more:
            message = await receive()
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"received": size}).encode()})


def test_requests_past_the_bytes_in_flight_get_a_503_with_retry_after_and_small_ones_still_go_through():
    async def scenario():
        inner = _HeldApp()
        app = Admission(inner, max_inflight_bytes=20 * MB, max_body_bytes=10 * MB, threads=2)
        large = [asyncio.create_task(_post(app, 10 * MB - 100)) for _ in range(2)]  # the cap's worth, held
        await asyncio.sleep(0.1)
        assert inner.entered == 2
        refused = [await _post(app, 10 * MB - 100) for _ in range(4)]  # the other four of six
        undeclared = await _post(app, 2 * MB, declare=False)  # counted as the largest body allowed
        small = asyncio.create_task(_post(app, SMALL_BYTES))  # one text: admitted whatever is in flight
        await asyncio.sleep(0.1)
        assert inner.entered == 3 and app.inflight == 20 * MB - 200 + SMALL_BYTES
        inner.release.set()
        answered = [await t for t in (*large, small)]
        again = await _post(app, 10 * MB - 100)  # room again once they are answered
        return refused, undeclared, answered, again, app.inflight

    refused, undeclared, answered, again, left = asyncio.run(scenario())
    for status, headers, answer in [*refused, undeclared]:
        assert status == 503 and headers[b"retry-after"] == b"2", answer
        assert "retry after 2 s" in answer["message"] and "MB" in answer["message"]
    assert [a[0] for a in answered] == [200, 200, 200]
    assert [a[2]["received"] for a in answered] == [10 * MB - 100, 10 * MB - 100, SMALL_BYTES]
    assert again[0] == 200 and left == 0


def test_one_request_is_always_admitted_even_past_the_cap():
    async def scenario():
        inner = _HeldApp()
        inner.release.set()
        return await _post(Admission(inner, max_inflight_bytes=MB, max_body_bytes=MB, threads=1), 3 * MB)

    assert asyncio.run(scenario())[0] == 200  # the body limit (a 413) is Limits' to say, behind this


def test_the_server_runs_its_work_on_a_bounded_executor_of_its_own():
    async def scenario():
        async def ping(scope, receive, send):
            pass

        app = Admission(ping, max_inflight_bytes=MB, max_body_bytes=MB, threads=3)
        await app({"type": "http", "method": "GET", "path": "/ping"}, None, None)  # the first request sets it up
        seen, gate = set(), threading.Barrier(3, timeout=5)

        def work():
            seen.add(threading.current_thread().name)
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()  # three at once fill the pool

        await asyncio.gather(*(asyncio.to_thread(work) for _ in range(12)))
        return seen

    seen = asyncio.run(scenario())
    assert 1 <= len(seen) <= 3 and all(name.startswith("bertpooled-serve") for name in seen), seen


def test_the_in_flight_cap_defaults_to_two_bodies_and_is_never_below_one():
    assert ServeLimits(max_body_mb=10).max_inflight_bytes == 20 * MB
    assert ServeLimits(max_body_mb=10, max_inflight_mb=4).max_inflight_bytes == 10 * MB
    assert ServeLimits(max_body_mb=10, max_inflight_mb=64).max_inflight_bytes == 64 * MB


def test_serve_takes_the_cap_and_the_threads_as_options_and_refuses_bad_numbers(monkeypatch):
    from conftest import one_error_line
    from typer.testing import CliRunner

    from bertpooled.cli import app
    from bertpooled.serving import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda uri, host, port, limits, echo: seen.update(limits=limits))
    result = CliRunner().invoke(app, ["serve", "runs:/x/model", "--max-inflight-mb", "5", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert seen["limits"].max_inflight_bytes == 10 * MB and seen["limits"].threads == 2  # never below one body
    one_error_line(CliRunner().invoke(app, ["serve", "runs:/x/model", "--max-inflight-mb", "nan"]), "max-inflight-mb")
