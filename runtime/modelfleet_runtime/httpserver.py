"""asyncio HTTP/1.1 server: keep-alive, pipelined responses in order, graceful drain.

Handlers get the request and a ``respond`` callback that they call exactly once, now or
later (after the batcher answers): no task per request, which keeps the per-request cost low.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from http import HTTPStatus

from .httpparse import HttpError, Request, RequestParser

log = logging.getLogger(__name__)

JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_MAX_PIPELINE = 64  # stop reading from a client that has this many answers outstanding
KEEPALIVE_TIMEOUT_S = 75.0  # idle keep-alive connections (longer than common LB idle timeouts)
REQUEST_TIMEOUT_S = 30.0  # a request whose bytes stop arriving (slowloris)
_SWEEP_S = 1.0


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Respond = Callable[[Response], None]
Handler = Callable[[Request, Respond], None]


def _serialize(resp: Response, close: bool, head_only: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
        f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\n"
    ]
    for name, value in resp.headers:
        head.append(f"{name}: {value}\r\n")
    if close:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    encoded = "".join(head).encode("latin-1")
    return encoded if head_only else encoded + resp.body


class HttpServer:
    """Owns the connections; counts requests in flight for the drain."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        error_body: Callable[[str], bytes],
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        sweep_s: float = _SWEEP_S,
    ) -> None:
        self.handler = handler
        self.keepalive_timeout_s = keepalive_timeout_s
        self.request_timeout_s = request_timeout_s
        self.sweep_s = sweep_s
        self.max_body_bytes = max_body_bytes
        self.error_body = error_body
        self.connections: set[Connection] = set()
        self.inflight = 0
        self.draining = False
        # Told the status of every request refused before it reached a handler (e.g. 413).
        self.on_refused: Callable[[int], None] | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, backlog=2048
        )
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)
        return self._server

    def _sweep(self) -> None:
        """Close connections idle past the keep-alive timeout or stuck mid-request."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            if conn.pending:
                continue  # waiting on us, not on the client
            limit = self.keepalive_timeout_s if conn.parser.idle else self.request_timeout_s
            if now - conn.last_activity > limit:
                conn.abort()
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    def start_drain(self) -> None:
        """Stop accepting connections; answer what is in flight, then let connections close."""
        self.draining = True
        if self._server is not None:
            self._server.close()

    def close_idle(self) -> None:
        for conn in list(self.connections):
            conn.close_if_idle()

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.abort()


class Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = RequestParser(max_body_bytes=server.max_body_bytes)
        self.transport: asyncio.Transport | None = None
        # One slot per request in arrival order; answers are written strictly in that order.
        self.pending: list[list[bytes | None]] = []
        self.closing = False
        self.paused = False
        self.continue_sent = False
        self.last_activity = asyncio.get_running_loop().time()

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        if self.server.draining:
            self.closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = asyncio.get_running_loop().time()
        parser = self.parser
        parser.feed(data)
        while not self.closing:
            try:
                req = parser.next()
            except HttpError as exc:
                self._fail(exc)
                return
            if req is None:
                if parser.expects_continue and not self.continue_sent and self.transport:
                    self.continue_sent = True
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.continue_sent = False
            self._dispatch(req)
            if len(self.pending) >= _MAX_PIPELINE and self.transport and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def pause_writing(self) -> None:  # the client reads slower than we answer
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._maybe_resume()

    # -- requests ----------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        server = self.server
        server.inflight += 1
        keep_alive = req.keep_alive
        head_only = req.method == "HEAD"
        if not keep_alive:
            self.closing = True  # read no further requests from this connection
        answered = False

        def respond(resp: Response) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            server.inflight -= 1
            # While draining, only the connection's last outstanding answer says "close"
            # (a pipelining client must still read the answers queued behind it); saying it
            # means reading no further requests here.
            close = not keep_alive or (
                server.draining and slot is self.pending[-1] and self.parser.idle
            )
            if close:
                self.closing = True
            slot[0] = _serialize(resp, close, head_only)
            self.last_activity = asyncio.get_running_loop().time()
            self._flush()

        try:
            server.handler(req, respond)
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.target)
            respond(Response(500, server.error_body("internal server error")))

    def _flush(self) -> None:
        pending = self.pending
        transport = self.transport
        n = 0
        while n < len(pending) and pending[n][0] is not None:
            n += 1
        if not n:
            return
        chunks = [slot[0] for slot in pending[:n]]
        del pending[:n]
        if transport is None or transport.is_closing():
            return
        transport.write(chunks[0] if n == 1 else b"".join(chunks))  # type: ignore[arg-type]
        if not pending and (self.closing or self.server.draining):
            if self.server.draining and not self.parser.idle and not self.closing:
                return  # a request is arriving: let it finish, its answer will close
            self.closing = True
            transport.close()
            return
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self.paused and self.transport is not None and len(self.pending) < _MAX_PIPELINE // 2:
            self.paused = False
            self.transport.resume_reading()

    def _fail(self, exc: HttpError) -> None:
        """Unreadable request: answer it after the ones before it, then close."""
        self.closing = True
        if self.server.on_refused is not None:
            self.server.on_refused(exc.status)
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        slot[0] = _serialize(Response(exc.status, self.server.error_body(exc.message)), True)
        self._flush()

    def close_if_idle(self) -> None:
        if not self.pending and self.parser.idle and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()
