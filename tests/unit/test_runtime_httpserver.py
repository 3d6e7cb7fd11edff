"""The asyncio HTTP server on its own (no torch): deferred answers, ordering, timeouts, drain."""

from __future__ import annotations

import asyncio
import json

from modelfleet_runtime.httpparse import Request
from modelfleet_runtime.httpserver import HttpServer, Respond, Response


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


async def start(**kwargs: float) -> tuple[HttpServer, int]:
    server = HttpServer(handler, max_body_bytes=1024, error_body=error_body, **kwargs)
    listener = await server.listen("127.0.0.1", 0)
    return server, listener.sockets[0].getsockname()[1]


def test_deferred_answers_keep_pipeline_order() -> None:
    async def main() -> bytes:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"/fast"):
            data += await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
        server.start_drain()
        server.close_all()
        return data

    data = asyncio.run(main())
    assert data.index(b"/slow") < data.index(b"/fast")


def test_idle_and_stalled_connections_are_closed() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await start(keepalive_timeout_s=0.3, request_timeout_s=0.3, sweep_s=0.05)
        r1, _w1 = await asyncio.open_connection("127.0.0.1", port)  # idle keep-alive
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)  # stalls mid-request
        w2.write(b"GET /fast HTTP/1.1\r\nHost:")
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)  # stays busy
        for _ in range(8):
            w3.write(b"GET /fast HTTP/1.1\r\n\r\n")
            await asyncio.wait_for(r3.readuntil(b"/fast"), 5)
            await asyncio.sleep(0.1)
        closed1 = await asyncio.wait_for(r1.read(), 5)
        closed2 = await asyncio.wait_for(r2.read(), 5)
        w3.write(b"GET /fast HTTP/1.1\r\n\r\n")
        alive = await asyncio.wait_for(r3.readuntil(b"/fast"), 5)
        server.close_all()
        return closed1, closed2, alive

    closed1, closed2, alive = asyncio.run(main())
    assert closed1 == b"" and closed2 == b""
    assert alive.startswith(b"HTTP/1.1 200")


def test_drain_answers_in_flight_with_connection_close() -> None:
    async def main() -> tuple[bytes, int]:
        server, port = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
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
        writer.write(b"GET /slow?1 HTTP/1.1\r\n\r\nGET /slow?2 HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.02)
        server.start_drain()  # both are still being worked on
        data = await asyncio.wait_for(reader.read(), 5)  # both answers, then EOF
        server.close_all()
        return data

    data = asyncio.run(main())
    first, _, second = data.partition(b"/slow?1")
    assert b"Connection: close" not in first and b"Connection: close" in second
    assert second.endswith(b"/slow?2")
