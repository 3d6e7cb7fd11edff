"""The process's servers: one listener per activator-slice port (opened and closed as slices
come and go, every one served by the same ``Proxy``), its own /metrics /healthz /readyz,
and the SIGTERM drain.

Limits of the proxy listeners (aiohttp's server): request line and each header at most
8190 bytes, at most 128 headers (aiohttp's defaults; more is a 400); a connection with no
request in progress (idle keep-alive, or a client that never finishes its headers:
slowloris) is closed ``idle_timeout_s`` after it opened or after its last answer; at most
``max_connections`` connections at once (more are closed at once); request bodies are
passed on undecoded (no decompression), bounded by ``Limits``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .metrics import ActivatorMetrics
from .proxy import Limits, Proxy
from .routes import Key, build_table

log = logging.getLogger("modelfleet.activator")
BIND_RETRY_S = 5.0  # a port that could not be bound is tried again this often


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    metrics_port: int = 9090
    max_held_total: int = 10000
    max_connections: int = 20000
    drain_s: float = 30.0
    # On SIGTERM, keep listening at least this long (within drain_s): the endpoint change
    # takes a few seconds to reach every node's kube-proxy.
    quiet_s: float = 5.0
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    backend_read_timeout_s: float = 600.0
    simulate: bool = False
    limits: Limits = field(default_factory=Limits)


class _Server(web.Server):
    """aiohttp's low-level server with a cap on open connections."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self.connections) > self.max_connections:
            log.warning("over --max-connections %d: closing a new connection", self.max_connections)
            transport.close()


class Activator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ActivatorMetrics()
        self._session: aiohttp.ClientSession | None = None
        self.proxy = Proxy(
            self.metrics,
            self._client,
            max_held_total=settings.max_held_total,
            limits=settings.limits,
        )
        self.draining = False
        self.loaded = False
        self.source_problem: str | None = None
        self.sites: dict[int, web.TCPSite] = {}
        self.bind_errors: dict[int, str] = {}
        self._listed: dict[int, Key] = {}  # port -> key of its listener_up series
        self._latest: list[Mapping[str, Any]] | None = None
        self._pending = False
        self._logged_problems: frozenset[str] = frozenset()
        self._wanted: asyncio.Event | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._runner: web.ServerRunner | None = None
        self._own: web.AppRunner | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Serve /metrics /healthz /readyz; an OSError if its port cannot be bound."""
        s = self.settings
        server = _Server(
            self.proxy.handle,
            handler_cancellation=True,  # a client that goes away cancels its request
            max_connections=s.max_connections,
            keepalive_timeout=s.idle_timeout_s,
            auto_decompress=False,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._own = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._own.setup()
        await web.TCPSite(self._own, s.host, s.metrics_port, reuse_address=True).start()
        self._wanted = asyncio.Event()
        self._wanted.set()  # a table offered before start is listened for at once
        self._sync_task = asyncio.create_task(self._sync_listeners(), name="activator-listeners")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=s.connect_timeout_s,
                    sock_read=s.backend_read_timeout_s,
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _busy(self) -> bool:
        return bool(self.proxy.admission.total or self.proxy.inflight)

    async def drain(self) -> None:
        """SIGTERM: /readyz turns 503 at once, so this pod leaves the activator Service's
        endpoints and the operator's slices; the listeners keep serving (callers whose
        kube-proxy still sends here are held or proxied as before) until nothing is held or
        proxied and ``quiet_s`` has passed, or ``drain_s`` is over. Then the listeners close
        and requests still held are answered 503 (the caller's retry goes elsewhere)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.settings.drain_s
        quiet_until = began + min(self.settings.quiet_s, self.settings.drain_s)
        log.info(
            "draining: %d held, %d proxied; serving for up to %g s",
            self.proxy.admission.total,
            self.proxy.inflight,
            self.settings.drain_s,
        )
        while loop.time() < deadline and (self._busy() or loop.time() < quiet_until):
            await asyncio.sleep(0.05)
        for port in list(self.sites):
            await self._close_listener(port)
        if self.proxy.admission.total:
            log.info("drain over: answering %d held requests 503", self.proxy.admission.total)
        self.proxy.stop_holding(
            "the activator is shutting down and no replica became ready in its drain time; "
            "retry (the Service sends new requests to another activator or to a replica)"
        )
        end = loop.time() + 2.0
        while self._busy() and loop.time() < end:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        for port in list(self.sites):
            await self._close_listener(port)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._own is not None:
            await self._own.cleanup()

    # --- slices --------------------------------------------------------------------------

    def offer(self, slices: Iterable[Mapping[str, Any]]) -> None:
        """The source's whole current set of slices. The first is the table at once (it
        makes the process ready); later ones are coalesced: a burst of watch events is one
        table, built once the burst has been read."""
        first = self._latest is None
        self._latest = list(slices)
        if first:
            self._apply()
        elif not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._apply)

    def trouble(self, problem: str | None) -> None:
        """What keeps the source from being current (shown on /readyz); None: nothing."""
        if problem != self.source_problem and problem is not None:
            log.warning("%s", problem)
        self.source_problem = problem

    def _apply(self) -> None:
        self._pending = False
        if self._latest is None:
            return
        table = build_table(
            self._latest,
            simulate=self.settings.simulate,
            reserved_ports=(self.settings.metrics_port,),
        )
        if table == self.proxy.table and self.loaded:
            return
        self.proxy.update(table)
        self.metrics.slice_problems.set(len(table.problems))
        problems = frozenset(table.problems)
        for problem in sorted(problems - self._logged_problems):
            log.warning("%s", problem)
        self._logged_problems = problems
        if not self.loaded:
            log.info("initial list loaded: %d ModelDeployments routed", len(table.routes))
        self.loaded = True
        if self._wanted is not None:
            self._wanted.set()

    async def _sync_listeners(self) -> None:
        assert self._wanted is not None
        while True:
            try:
                async with asyncio.timeout(BIND_RETRY_S if self.bind_errors else None):
                    await self._wanted.wait()
            except TimeoutError:
                pass
            self._wanted.clear()
            if self.draining:
                continue  # drain() closes the listeners itself
            try:
                await self._sync_once()
            except Exception:  # never let the listeners' task die
                log.exception("updating the listeners failed; trying again")
                self._wanted.set()
                await asyncio.sleep(1.0)

    async def _sync_once(self) -> None:
        want = dict(self.proxy.table.by_port)
        for port in [p for p in self.sites if p not in want]:
            await self._close_listener(port)
        for port in [p for p in self.bind_errors if p not in want]:
            del self.bind_errors[port]
        for port, key in want.items():
            if port in self.sites:
                continue
            assert self._runner is not None
            site = web.TCPSite(self._runner, self.settings.host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                if port not in self.bind_errors:
                    log.error("%s/%s: cannot listen on port %d: %s", *key, port, exc)
                self.bind_errors[port] = f"{key[0]}/{key[1]}: cannot listen on port {port}: {exc}"
                self._label(port, key, up=False)
                continue
            self.sites[port] = site
            self.bind_errors.pop(port, None)
            self._label(port, key, up=True)
            log.info("%s/%s: listening on port %d", *key, port)
        for port in [p for p in self._listed if p not in want]:
            self.metrics.drop_listener(self._listed.pop(port), port)

    def _label(self, port: int, key: Key, *, up: bool) -> None:
        old = self._listed.get(port)
        if old is not None and old != key:
            self.metrics.drop_listener(old, port)
        self._listed[port] = key
        self.metrics.listener(key, port, up)

    async def _close_listener(self, port: int) -> None:
        site = self.sites.pop(port, None)
        if site is not None:
            await site.stop()
            log.info("closed the listener on port %d", port)
        key = self._listed.pop(port, None)
        if key is not None:
            self.metrics.drop_listener(key, port)

    # --- own endpoints -------------------------------------------------------------------

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, _: web.Request) -> web.Response:
        table = self.proxy.table
        detail = {
            "ready": self.loaded and not self.draining,
            "loaded": self.loaded,
            "draining": self.draining,
            "routes": {f"{k[0]}/{k[1]}": r.port for k, r in sorted(table.routes.items())},
            "held": self.proxy.admission.total,
            "inflight": self.proxy.inflight,
            "problems": list(table.problems),
            "listen_errors": [self.bind_errors[p] for p in sorted(self.bind_errors)],
            "source_problem": self.source_problem,
        }
        return web.json_response(detail, status=200 if detail["ready"] else 503)
