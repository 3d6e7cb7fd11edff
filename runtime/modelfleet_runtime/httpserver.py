"""asyncio HTTP/1.1 server: keep-alive, pipelined responses in order, flow control, graceful
drain, and limits that no client can outlast.

Handlers get the request and a ``respond`` callback that they call exactly once, now or
later (after the batcher answers): no task per request, which keeps the per-request cost low.

What a connection may hold is bounded: at most ``max_pipeline`` answers owed, and while the
transport's write buffer is above its high-water mark (the client reads slower than we
answer) nothing more is read *or parsed*. Every state a connection can sit in has a clock
(``verdict``): idle keep-alive, a request arriving (the whole request, not the gap between
bytes: slowloris), answers the client does not read (``abort()``: ``close()`` would wait for
a buffer that never drains). Connections beyond ``max_connections`` push out an idle connection
(one that never sent a request first), or are answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import resource
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from .httpparse import HttpError, Request, RequestParser

log = logging.getLogger(__name__)

JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SWEEP_S = 1.0
_FD_RESERVE = 64  # descriptors kept for everything but client connections (logs, torch, ...)
_LOG_EVERY_S = 10.0  # one line per kind of event-loop error per this many seconds
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_S = 2.0  # how long input is drained after an error answer before the close
_EVICT_IDLE_S = 1.0  # a used keep-alive connection idle this long may make room for a new one


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits; the serve command's flags of the same names."""

    max_connections: int = 1000
    keepalive_timeout_s: float = 75.0  # idle keep-alive (longer than common LB idle timeouts)
    request_timeout_s: float = 30.0  # a whole request, head and body, from its first byte
    write_timeout_s: float = 30.0  # answers waiting while the client accepts no byte of them
    max_pipeline: int = 64  # answers owed on one connection before it is read no further


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Respond = Callable[[Response], None]
Handler = Callable[[Request, Respond], None]


# status line and Content-Type per (status, content type): the handlers use a few of each
_HEAD_STARTS: dict[tuple[int, str], bytes] = {}


def _serialize(resp: Response, close: bool, head_only: bool = False) -> bytes:
    key = (resp.status, resp.content_type)
    start = _HEAD_STARTS.get(key)
    if start is None:
        start = _HEAD_STARTS[key] = (
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
            f"Content-Type: {resp.content_type}\r\nContent-Length: "
        ).encode("latin-1")
    rest = "".join([f"{name}: {value}\r\n" for name, value in resp.headers])
    if close:
        rest += "Connection: close\r\n"
    head = b"%b%d\r\n%b\r\n" % (start, len(resp.body), rest.encode("latin-1"))
    return head if head_only else head + resp.body


# -- the clocks ------------------------------------------------------------------------------


class Verdict(enum.Enum):
    KEEP = "keep"
    CLOSE = "close"  # idle past the keep-alive timeout: close quietly
    TIMEOUT = "timeout"  # a request that did not arrive in time: 408, then close
    ABORT = "abort"  # the client accepts none of what we send: drop it now


def verdict(
    *,
    now: float,
    limits: Limits,
    owed: int,
    partial: bool,
    unsent: bool,
    idle_since: float,
    request_since: float,
    write_progress_at: float,
) -> Verdict:
    """What the sweeper does with one connection (pure, table-tested).

    ``owed``: answers not written yet (the client waits on us: no client clock runs);
    ``partial``: part of a request is buffered; ``unsent``: written answers still in the
    transport's buffer; the times: when the connection last became idle, when the request
    being read started (or when we last let the client go on), when the client last took
    bytes.
    """
    if unsent and now - write_progress_at > limits.write_timeout_s:
        return Verdict.ABORT
    if owed or unsent:
        return Verdict.KEEP
    if partial:
        return Verdict.TIMEOUT if now - request_since > limits.request_timeout_s else Verdict.KEEP
    return Verdict.CLOSE if now - idle_since > limits.keepalive_timeout_s else Verdict.KEEP


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the process's descriptor limit leaves for connections:
    past it accept() fails with EMFILE and nobody, real clients included, gets in."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    return max(1, min(wanted, soft - in_use - _FD_RESERVE))


class LoopErrorLog:
    """The event loop's exception handler, rate limited: at a descriptor limit accept() fails
    over and over, and one traceback each would bury the log (and cost the CPU)."""

    def __init__(self, every_s: float = _LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        exc = context.get("exception")
        key = f"{message}|{type(exc).__name__}"
        now = loop.time()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more like it in the last {self.every_s:.0f}s)" if more else ""
        if isinstance(exc, OSError):  # resource errors: the message says it all
            log.error("%s: %s%s", message, exc, suffix)
        else:
            log.error("%s%s", message, suffix, exc_info=exc)


# -- the server ------------------------------------------------------------------------------


class HttpServer:
    """Owns the connections; counts requests in flight for the drain."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        error_body: Callable[[str], bytes],
        limits: Limits | None = None,
        sweep_s: float = _SWEEP_S,
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.max_connections = self.limits.max_connections
        self.sweep_s = sweep_s
        self.max_body_bytes = max_body_bytes
        self.error_body = error_body
        self.connections: set[Connection] = set()
        self.inflight = 0
        self.draining = False
        self.refused_connections = 0
        # Told the status of every request refused before it reached a handler (e.g. 413).
        self.on_refused: Callable[[int], None] | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.refusal = _serialize(
            Response(503, error_body("too many connections"), headers=(("Retry-After", "1"),)),
            close=True,
        )
        self._last_full_log = float("-inf")

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.max_connections = connection_cap(self.limits.max_connections)
        if self.max_connections < self.limits.max_connections:
            log.warning("at most %d connections: the descriptor limit leaves no room for %d",
                        self.max_connections, self.limits.max_connections)  # fmt: skip
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, backlog=2048
        )
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)
        return self._server

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            conn.check(now)
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    def admit(self, conn: Connection) -> bool:
        """Room for one more connection: push out the longest-idle keep-alive one if full."""
        if len(self.connections) < self.max_connections:
            return True
        # Connections that never sent a request go first (a flood of idle connections looks
        # like that), oldest first; then keep-alive ones idle for a while. A keep-alive
        # connection idle for a moment belongs to a client about to send its next request:
        # closing it would fail that request, so the newcomer is refused instead.
        now = asyncio.get_running_loop().time()
        idle = [c for c in self.connections if c.evictable()]
        unused = [c for c in idle if not c.requests]
        stale = [c for c in idle if now - c.idle_since >= _EVICT_IDLE_S]
        victims = unused or stale
        if victims:
            min(victims, key=lambda c: c.idle_since).abort()
            return True
        self.refused_connections += 1
        if now - self._last_full_log >= _LOG_EVERY_S:
            self._last_full_log = now
            log.warning("connection refused: %d connections, all busy (%d refused so far)",
                        len(self.connections), self.refused_connections)  # fmt: skip
        return False

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
        self.write_paused = False  # the transport's buffer is above its high-water mark
        self.reading_paused = False
        self._parsing = False  # inside _process (a handler may answer synchronously)
        self.eof = False  # the client half-closed: it sends nothing more
        self.requests = 0  # read on this connection so far
        self.linger = False  # close with FIN-and-drain, not at once (after an error)
        self.lingering_since: float | None = None
        now = asyncio.get_running_loop().time()
        self.idle_since = now
        self.request_since = now
        self.bytes_written = 0
        self._bytes_taken = 0
        self.write_progress_at = now

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if server.draining:
            self.closing = True
            transport.close()
            return
        if not server.admit(self):
            self.closing = True
            transport.write(server.refusal)
            transport.close()  # a few hundred bytes: the socket buffer takes them at once
            return
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.parser.close()  # a body cut off mid-way is not kept for the cyclic GC

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.parser.idle:
            self.request_since = asyncio.get_running_loop().time()  # a new request's first byte
        self.parser.feed(data)
        self._process()

    def eof_received(self) -> bool:
        """The client sent all it will send: answer that, then close (a half-closing
        client still reads)."""
        if self.lingering_since is not None:
            return False  # the client's half of a lingering close: done
        self.eof = True
        self._process()
        if not self.pending and not self.closing and self.transport is not None:
            self._close(self.transport, asyncio.get_running_loop().time())
        return True

    def pause_writing(self) -> None:  # the client reads slower than we answer
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._process()

    # -- reading -----------------------------------------------------------------------------

    def _blocked(self) -> bool:
        return self.write_paused or len(self.pending) >= self.server.limits.max_pipeline

    def _process(self) -> None:
        """Parse and dispatch buffered requests while the connection may take more."""
        if self._parsing:
            return  # an answer given synchronously from inside the loop below
        self._parsing = True
        try:
            parser = self.parser
            while not self.closing and not self._blocked():
                try:
                    req = parser.next()
                except HttpError as exc:
                    self._fail(exc)
                    break
                if req is None:
                    break
                self._dispatch(req)
        finally:
            self._parsing = False
        self._update_reading()
        self._maybe_continue()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        blocked = self._blocked()
        if blocked and not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()
        elif not blocked and self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def _maybe_continue(self) -> None:
        """'100 Continue' for the request being read, once every answer before it is out: a
        pipelining client would take an earlier one for it."""
        if self.parser.expects_continue and not self.pending and not self.closing:
            self.parser.expects_continue = False
            self._write(_CONTINUE)

    # -- answering ---------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        self.requests += 1
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
            self._flush()

        try:
            server.handler(req, respond)
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.target)
            respond(Response(500, server.error_body("internal server error")))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.bytes_written += len(data)
            transport.write(data)  # may call pause_writing() before it returns

    def _flush(self) -> None:
        pending = self.pending
        n = 0
        while n < len(pending) and pending[n][0] is not None:
            n += 1
        if not n:
            return
        chunks = [slot[0] for slot in pending[:n]]
        del pending[:n]
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._write(chunks[0] if n == 1 else b"".join(chunks))  # type: ignore[arg-type]
        if pending:
            return
        now = asyncio.get_running_loop().time()
        self.idle_since = now
        self.request_since = now  # the client's clock restarts when it stops waiting on us
        if self.closing or self.server.draining:
            if self.server.draining and not self.parser.idle and not self.closing:
                return  # a request is arriving: let it finish, its answer will close
            self._close(transport, now)
            return
        self._process()  # requests parsed or buffered while we were busy
        if self.eof and not self.pending and self.transport is not None:
            self._close(self.transport, now)  # the client half-closed: all it sent is answered

    def _close(self, transport: asyncio.Transport, now: float) -> None:
        self.closing = True
        if not self.linger:
            transport.close()
            return
        # After an error the client may still be sending (a body we refused): closing with
        # unread input would send a reset that can destroy our answer before it is read.
        # Send FIN instead, drain what comes, close on its EOF or after a moment.
        self.lingering_since = now
        transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def _fail(self, exc: HttpError) -> None:
        """Unreadable request: answer it after the ones before it, then close."""
        self.closing = True
        self.linger = True
        if self.server.on_refused is not None:
            self.server.on_refused(exc.status)
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        slot[0] = _serialize(Response(exc.status, self.server.error_body(exc.message)), True)
        self._flush()

    # -- the clocks --------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """The sweeper's visit: apply ``verdict``."""
        transport = self.transport
        if transport is None:
            return
        buffered = transport.get_write_buffer_size()
        taken = self.bytes_written - buffered
        if taken > self._bytes_taken or not buffered:
            self._bytes_taken = taken
            self.write_progress_at = now
        if self.lingering_since is not None:
            if buffered:  # the linger clock starts once our answer (and FIN) is out
                self.lingering_since = now
            else:
                if now - self.lingering_since > _LINGER_S:
                    self.abort()
                return
        action = verdict(
            now=now,
            limits=self.server.limits,
            owed=len(self.pending),
            partial=not self.parser.idle,
            unsent=buffered > 0,
            idle_since=self.idle_since,
            request_since=self.request_since,
            write_progress_at=self.write_progress_at,
        )
        if action is Verdict.ABORT:
            log.info("aborting a connection that accepted none of %d bytes in %.0fs",
                     buffered, self.server.limits.write_timeout_s)  # fmt: skip
            self.abort()
        elif action is Verdict.TIMEOUT:
            self._fail(HttpError(408, "request not received in time"))
        elif action is Verdict.CLOSE:
            self.closing = True
            transport.close()

    def evictable(self) -> bool:
        """Idle keep-alive: nothing owed, nothing arriving, nothing unsent."""
        transport = self.transport
        return (
            transport is not None
            and not self.closing
            and not self.pending
            and self.parser.idle
            and not transport.get_write_buffer_size()
        )

    def close_if_idle(self) -> None:
        if not self.pending and self.parser.idle and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        self.closing = True
        transport = self.transport
        if transport is not None:
            transport.abort()
            self.server.connections.discard(self)
