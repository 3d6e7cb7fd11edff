"""The asyncio HTTP server on its own (no torch): deferred answers, ordering, timeouts, drain,
flow control. tests/runtime/test_hostile_*.py try the same against the real runtime process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from modelfleet_runtime.httpparse import Request
from modelfleet_runtime.httpserver import (
    HttpServer,
    Limits,
    LoopErrorLog,
    Respond,
    Response,
    Verdict,
    verdict,
)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def handler(req: Request, respond: Respond) -> None:
    """/slow answers later than /fast: pipelined answers must still come back in order."""
    delay = 0.1 if req.path == "/slow" else 0.0
    body = req.target.encode()
    if delay:
        asyncio.get_running_loop().call_later(delay, respond, Response(200, body, "text/plain"))
    else:
        respond(Response(200, body, "text/plain"))


async def start(sweep_s: float = 1.0, **limits: Any) -> tuple[HttpServer, int]:
    server = HttpServer(
        handler,
        max_body_bytes=1024,
        error_body=error_body,
        limits=Limits(**limits),
        sweep_s=sweep_s,
    )
    listener = await server.listen("127.0.0.1", 0)
    return server, listener.sockets[0].getsockname()[1]


def test_deferred_answers_keep_pipeline_order() -> None:
    async def main() -> bytes:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"/fast"):
            data += await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
        server.start_drain()
        server.close_all()
        return data

    data = asyncio.run(main())
    assert data.index(b"/slow") < data.index(b"/fast")


def test_idle_and_stalled_connections_are_closed_busy_ones_kept() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await start(keepalive_timeout_s=0.3, request_timeout_s=0.3, sweep_s=0.05)
        r1, _w1 = await asyncio.open_connection("127.0.0.1", port)  # idle keep-alive
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)  # stalls mid-request
        w2.write(b"GET /fast HTTP/1.1\r\nHost:")
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)  # stays busy
        for _ in range(8):
            w3.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(r3.readuntil(b"/fast"), 5)
            await asyncio.sleep(0.1)
        closed1 = await asyncio.wait_for(r1.read(), 5)
        closed2 = await asyncio.wait_for(r2.read(), 5)
        w3.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        alive = await asyncio.wait_for(r3.readuntil(b"/fast"), 5)
        server.close_all()
        return closed1, closed2, alive

    closed1, closed2, alive = asyncio.run(main())
    assert closed1 == b""  # idle: closed quietly
    assert closed2.startswith(b"HTTP/1.1 408") and b"Connection: close" in closed2
    assert alive.startswith(b"HTTP/1.1 200")


def test_drain_answers_in_flight_with_connection_close() -> None:
    async def main() -> tuple[bytes, int]:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.02)
        server.start_drain()
        server.close_idle()  # the busy connection is not idle: it stays
        data = await asyncio.wait_for(reader.read(), 5)  # answer, then EOF
        refused = 0
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused = 1
        server.close_all()
        return data, refused

    data, refused = asyncio.run(main())
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data
    assert data.endswith(b"/slow") and refused == 1


def test_drain_says_close_only_on_the_last_pipelined_answer() -> None:
    async def main() -> bytes:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /slow?1 HTTP/1.1\r\nHost: t\r\n\r\nGET /slow?2 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        await asyncio.sleep(0.02)
        server.start_drain()  # both are still being worked on
        data = await asyncio.wait_for(reader.read(), 5)  # both answers, then EOF
        server.close_all()
        return data

    data = asyncio.run(main())
    first, _, second = data.partition(b"/slow?1")
    assert b"Connection: close" not in first and b"Connection: close" in second
    assert second.endswith(b"/slow?2")


NOW = 1000.0
LIMITS = Limits(keepalive_timeout_s=75, request_timeout_s=30, write_timeout_s=20)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({}, Verdict.KEEP),
        ({"idle_since": NOW - 76}, Verdict.CLOSE),
        ({"partial": True, "request_since": NOW - 29, "idle_since": NOW - 500}, Verdict.KEEP),
        ({"partial": True, "request_since": NOW - 31}, Verdict.TIMEOUT),
        # answers owed: the client waits on us, its clocks stop
        ({"owed": 3, "partial": True, "request_since": NOW - 99, "idle_since": 0}, Verdict.KEEP),
        ({"unsent": True, "write_progress_at": NOW - 19, "idle_since": 0}, Verdict.KEEP),
        ({"unsent": True, "write_progress_at": NOW - 21}, Verdict.ABORT),
        ({"unsent": True, "owed": 5, "write_progress_at": NOW - 21}, Verdict.ABORT),
    ],
    ids=["fresh", "idle-too-long", "slow-request", "request-too-slow", "owed", "reading-slowly",
         "not-reading", "not-reading-pipelined"],
)  # fmt: skip
def test_verdict(state: dict[str, float], expected: Verdict) -> None:
    base: dict[str, Any] = {"owed": 0, "partial": False, "unsent": False, "idle_since": NOW,
                            "request_since": NOW, "write_progress_at": NOW}  # fmt: skip
    assert verdict(now=NOW, limits=LIMITS, **{**base, **state}) is expected


def big_handler(req: Request, respond: Respond) -> None:
    respond(Response(200, b"x" * 65536, "text/plain"))


def test_a_client_that_pipelines_without_reading_is_paused_then_aborted() -> None:
    """Reading and parsing stop while the answers pile up; then the write timeout drops it."""

    async def main() -> tuple[int, int, bool, int]:
        server = HttpServer(big_handler, max_body_bytes=1024, error_body=error_body,
                            limits=Limits(write_timeout_s=0.5), sweep_s=0.05)  # fmt: skip
        listener = await server.listen("127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 1000
        sent = 0
        for _ in range(200):  # until the server stops reading and our send buffer fills
            try:
                sent += sock.send(request)
            except BlockingIOError:
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(0)
        (conn,) = server.connections
        assert conn.transport is not None
        paused, buffered = conn.reading_paused, conn.transport.get_write_buffer_size()
        for _ in range(200):
            if not server.connections:
                break
            await asyncio.sleep(0.05)
        left = len(server.connections)
        sock.close()
        server.close_all()
        return sent, buffered, paused, left

    sent, buffered, paused, left = asyncio.run(main())
    assert paused
    # 64 answers owed at most, each 64 KiB, plus the high-water mark: not the ~2000 asked for
    assert buffered <= 70 * 65536 < sent // 30 * 65536
    assert left == 0  # aborted: close() would have waited for the client forever


def test_100_continue_waits_for_the_answers_before_it() -> None:
    async def main() -> bytes:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        first = await asyncio.wait_for(reader.readuntil(b"/slow"), 5)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"ok")
        last = await asyncio.wait_for(reader.readuntil(b"/fast"), 5)
        writer.close()
        server.close_all()
        return first + interim + last

    data = asyncio.run(main())
    assert data.index(b"200 OK") < data.index(b"100 Continue") < data.rindex(b"200 OK")


def test_connections_past_the_cap_push_out_idle_ones_or_get_503() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await start(max_connections=2)
        r1, _w1 = await asyncio.open_connection("127.0.0.1", port)  # idle
        _r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"GET /fast HTTP/1.1\r\n")  # busy: a request arriving
        await asyncio.sleep(0.05)
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)  # pushes out the idle one
        w3.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        served = await asyncio.wait_for(r3.readuntil(b"/fast"), 5)
        evicted = await asyncio.wait_for(r1.read(), 5)
        w3.write(b"GET /fast HTTP/1.1\r\n")  # now both are busy
        await asyncio.sleep(0.05)
        r4, _w4 = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(r4.read(), 5)
        server.close_all()
        return served, evicted, refused

    served, evicted, refused = asyncio.run(main())
    assert served.startswith(b"HTTP/1.1 200") and evicted == b""
    assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused


def test_loop_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        handler = LoopErrorLog(every_s=3600)
        loop = asyncio.get_running_loop()
        for _ in range(1000):
            handler(loop, {"message": "socket.accept() out of system resource",
                           "exception": OSError(24, "Too many open files")})  # fmt: skip
        handler(loop, {"message": "something else", "exception": ValueError("boom")})

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "Too many open files" in lines[0], lines
