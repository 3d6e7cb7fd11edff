"""One request on a ModelDeployment's port: proxy it to a ready replica, else hold it until
one is ready (bounded by the slice's cap and deadline), else answer why not.

The body is not read while a request is held: it waits in the socket (aiohttp stops reading
past its buffer's high-water mark), so a held request costs a few KiB whatever its size,
and it is streamed to the backend once one is chosen, counted against ``max_body_bytes``.

Every proxied request gets a fresh connection to its backend (no pool): a connect failure
then means exactly "nothing was sent", the one case tried again on another replica (or held
again); a pooled connection that a backend closed while idle could otherwise fail a request
that was already on its way, which is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .admission import Admission, Balancer
from .headers import to_backend, to_client
from .metrics import ActivatorMetrics
from .routes import Backend, Key, Route, Table

log = logging.getLogger("modelfleet.activator")
CHUNK = 1 << 16
CLIENT_CHECK_S = 1.0  # how often a held request looks whether its client is still there
# the peer shut down its sending side (Linux), or the connection is reset or gone
_CLOSED_EVENTS = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20
    body_timeout_s: float = 60.0  # longest pause of a client while sending its body
    retry_after_s: int = 5  # the Retry-After of a 503 over a cap
    retry_refused_s: float = 1.0  # a held request tries replicas that refused it again after


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An Open Inference Protocol style error: ``{"error": "..."}``."""
    return web.json_response({"error": message}, status=status, headers=headers)


class BodyFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Body:
    """The client's body as the backend reads it: bounded in size and in stalls."""

    def __init__(self, request: web.BaseRequest, limits: Limits) -> None:
        self.content = request.content
        self.limits = limits
        self.started = False
        self.failure: BodyFailed | None = None
        self.size = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        while True:
            try:
                async with asyncio.timeout(self.limits.body_timeout_s):
                    chunk = await self.content.readany()
            except TimeoutError:
                self.failure = BodyFailed(
                    408,
                    f"the request body stalled for {self.limits.body_timeout_s:g} s "
                    f"after {self.size} bytes (--body-timeout-seconds)",
                )
                raise self.failure from None
            except aiohttp.ClientPayloadError as exc:  # a malformed chunked body
                self.failure = BodyFailed(400, f"the request body is malformed: {exc}")
                raise self.failure from None
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > self.limits.max_body_bytes:
                self.failure = BodyFailed(
                    413,
                    f"the request body is over {self.limits.max_body_bytes} bytes "
                    "(--max-body-bytes)",
                )
                raise self.failure
            yield chunk


def _peer_closed(transport: asyncio.BaseTransport) -> bool:
    """Whether the client closed (or reset) its connection, without reading from it: its
    unread body may still wait in the kernel's buffer."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return transport.is_closing()
    poller = select.poll()
    try:
        poller.register(sock.fileno(), _CLOSED_EVENTS)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # already closed
        return True


class _Answer:
    """Counts one request's outcome exactly once."""

    def __init__(self, metrics: ActivatorMetrics, key: Key) -> None:
        self.metrics, self.key, self.outcome = metrics, key, ""

    def settle(self, outcome: str) -> None:
        if not self.outcome:
            self.outcome = outcome
            self.metrics.count(self.key, outcome)


class Proxy:
    """The request handler of every ModelDeployment port, and the state it shares."""

    def __init__(
        self,
        metrics: ActivatorMetrics,
        session: Callable[[], aiohttp.ClientSession],
        *,
        max_held_total: int,
        limits: Limits,
    ) -> None:
        self.metrics = metrics
        self.session = session
        self.limits = limits
        self.table = Table()
        self.admission = Admission(max_total=max_held_total)
        self.balancer = Balancer()
        self.inflight = 0
        self.active: dict[Key, int] = {}  # requests of a key being handled (held or not)
        self.stopping: str | None = None  # set: held requests stop waiting, with this why
        self._changed: dict[Key, asyncio.Event] = {}

    # --- state ---------------------------------------------------------------------------

    def update(self, table: Table) -> None:
        old, self.table = self.table, table
        for key in table.routes.keys() - old.routes.keys():
            self.metrics.touch(key)
        for key in old.routes.keys() | table.routes.keys():
            if old.routes.get(key) != table.routes.get(key):
                self._fire(key)
        for key in old.routes.keys() - table.routes.keys():
            if not self.active.get(key):
                self.metrics.forget(key)

    def stop_holding(self, why: str) -> None:
        self.stopping = why
        for key in list(self._changed):
            self._fire(key)

    def _fire(self, key: Key) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    def _event(self, key: Key) -> asyncio.Event:
        event = self._changed.get(key)
        if event is None:
            event = self._changed[key] = asyncio.Event()
        return event

    # --- one request ---------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        key = self.table.by_port.get(port) if isinstance(port, int) else None
        if key is None:
            return error(
                503,
                f"no ModelDeployment is routed through port {port} of this activator "
                "(its activator EndpointSlice is gone)",
            )
        self.active[key] = self.active.get(key, 0) + 1
        answer = _Answer(self.metrics, key)
        try:
            return await self._handle(request, key, answer)
        finally:
            answer.settle("client_gone")  # cancelled: the client went away
            self.active[key] -= 1
            if not self.active[key]:
                del self.active[key]
                if key not in self.table.routes:
                    self.metrics.forget(key)

    async def _handle(
        self, request: web.BaseRequest, key: Key, answer: _Answer
    ) -> web.StreamResponse:
        name = f"{key[0]}/{key[1]}"
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            answer.settle("too_large")
            resp = error(
                413,
                f"the request body ({length} bytes) is over {self.limits.max_body_bytes} "
                "bytes (--max-body-bytes)",
            )
            resp.force_close()
            return resp
        body = Body(request, self.limits) if request.body_exists else None
        loop = asyncio.get_running_loop()
        start = loop.time()
        route: Route | None = self.table.routes[key]
        assert route is not None
        deadline = start + route.hold_timeout_s
        held = False
        refused: set[str] = set()
        try:
            while True:
                route = self.table.routes.get(key)
                if route is None or self.stopping:
                    answer.settle("no_route")
                    return error(
                        503,
                        self.stopping
                        or f"ModelDeployment {name} is no longer routed by this activator: its "
                        "activator EndpointSlice was deleted while the request waited",
                    )
                backend = self.balancer.pick(route.backends, refused)
                if backend is not None:
                    if held:
                        held = False
                        self._unhold(key)
                    forwarded = await self._forward(
                        request, key, backend, body=body, answer=answer, start=start
                    )
                    if forwarded is not None:
                        return forwarded
                    refused.add(str(backend.address))
                    continue
                if not held:
                    why = self.admission.admit(key, route.max_held)
                    if why is not None:
                        answer.settle("rejected_cap")
                        return error(
                            503, why, headers={"Retry-After": str(self.limits.retry_after_s)}
                        )
                    held = True
                    self.metrics.held.labels(*key).inc()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    answer.settle("timed_out")
                    return error(
                        504,
                        f"no replica of ModelDeployment {name} became ready within its hold "
                        f"timeout of {route.hold_timeout_s:g} s "
                        "(modelfleet.io/hold-timeout-seconds)",
                    )
                wait = min(remaining, self.limits.retry_refused_s) if refused else remaining
                if not await self._wait_change(request, key, wait):
                    refused.clear()
        finally:
            if held:
                self._unhold(key)

    async def _wait_change(self, request: web.BaseRequest, key: Key, wait: float) -> bool:
        """Wait up to ``wait`` s for ``key``'s route to change (True) or not (False), looking
        at the client's connection every CLIENT_CHECK_S: a held request whose body filled
        aiohttp's buffer has its socket's reading paused, so the client's leaving is not
        seen by aiohttp and would keep its place in the cap until the hold timeout."""
        until = asyncio.get_running_loop().time() + wait
        while (left := until - asyncio.get_running_loop().time()) > 0:
            try:
                async with asyncio.timeout(min(left, CLIENT_CHECK_S)):
                    await self._event(key).wait()
                return True
            except TimeoutError:
                if request.transport is not None and _peer_closed(request.transport):
                    # aiohttp's connection_lost then cancels this handler (client_gone)
                    request.transport.abort()
        return False

    def _unhold(self, key: Key) -> None:
        self.admission.release(key)
        self.metrics.held.labels(*key).dec()

    async def _forward(
        self,
        request: web.BaseRequest,
        key: Key,
        backend: Backend,
        *,
        body: Body | None,
        answer: _Answer,
        start: float,
    ) -> web.StreamResponse | None:
        """The backend's answer, streamed; None: it could not be connected to and nothing
        was sent (the caller may try another)."""
        address = str(backend.address)
        url = URL(f"http://{address}{request.rel_url.raw_path_qs}", encoded=True)
        headers = CIMultiDict(to_backend(request.headers.items(), request.remote))
        waited = asyncio.get_running_loop().time() - start
        response: web.StreamResponse | None = None
        self.balancer.start(address)
        self.inflight += 1
        self.metrics.inflight.labels(*key).inc()
        try:
            async with self.session().request(
                request.method,
                url,
                headers=headers,
                data=body.chunks() if body is not None else None,
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in to_client(upstream.headers.items()):
                    response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
            answer.settle("proxied")
            self.metrics.hold_seconds.labels(*key).observe(waited)
            return response
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if body is None or not body.started:
                log.info("%s/%s: cannot connect to %s (%s): %s", *key, backend.pod, address, exc)
                return None
            return self._failed(
                request, response, answer=answer, backend=backend, exc=exc, body=body
            )
        except (aiohttp.ClientError, TimeoutError, OSError, BodyFailed) as exc:
            return self._failed(
                request, response, answer=answer, backend=backend, exc=exc, body=body
            )
        finally:
            self.balancer.done(address)
            self.inflight -= 1
            self.metrics.inflight.labels(*key).dec()

    def _failed(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse | None,
        *,
        answer: _Answer,
        backend: Backend,
        exc: BaseException,
        body: Body | None,
    ) -> web.StreamResponse:
        if body is not None and body.failure is not None and response is None:
            answer.settle("too_large")
            resp = error(body.failure.status, body.failure.message)
            resp.force_close()
            return resp
        answer.settle("backend_error")
        log.warning(
            "%s/%s: backend %s (%s) failed: %r", *answer.key, backend.pod, backend.address, exc
        )
        if response is None:
            timed_out = isinstance(exc, TimeoutError)
            return error(
                504 if timed_out else 502,
                f"replica {backend.pod} of ModelDeployment {answer.key[0]}/{answer.key[1]} "
                f"{'did not answer in time' if timed_out else 'failed'}: "
                f"{type(exc).__name__}: {exc}",
            )
        # The answer has begun: the client can only learn of the failure from the
        # connection closing before the answer's end.
        if request.transport is not None:
            request.transport.abort()
        return response
