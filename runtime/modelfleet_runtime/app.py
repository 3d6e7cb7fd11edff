"""The serving application: OIP v2 routes, the infer path, loading and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .auth import KeyLimits, KeyRing, Limiter, load_key_dir, presented_key
from .batching import Batcher
from .config import ServeConfig, write_termination_log
from .cpus import default_threads
from .energy import SAMPLE_EVERY_S, CostCollector, IdleClock, Nvml
from .errors import (
    BadRequest,
    LoadError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ServingError,
    Unauthorized,
    Unavailable,
)
from .httpparse import Request
from .httpserver import HttpServer, Limits, LoopErrorLog, Respond, Response
from .malloc import tune_for_batches
from .manifest import Manifest, load_manifest
from .metrics import Metrics
from .model import PLATFORMS, LoadOptions, Model, load
from .protocol import (
    TORCH_DTYPES,
    HeaderCache,
    InferRequest,
    decode_infer,
    decompress,
    dumps,
    encode_response,
)

log = logging.getLogger("modelfleet_runtime")

TIMEOUT_HEADER = "modelfleet-timeout-ms"
# JSON documents larger than this are decoded on a worker thread, so one big body (or a small
# gzip bomb) does not hold up every other connection; smaller ones cost less than the hop.
INLINE_DECODE_BYTES = 64 * 1024
# (body, Inference-Header-Content-Length): an answer, encoded on the batcher thread
Answer = tuple[bytes, int | None]
IDLE_GRACE_S = 0.2
# Request data (bodies, inflated bodies, decoded tensors) held from admission to the answer is
# bounded by this many --max-body-bytes: past it a request is refused with 503 + Retry-After,
# so N connections each sending a big body (or a small gzip bomb) queue at most this much
# instead of N bodies (256 queued 64 MiB bodies would be 16 GiB). One request is always
# admitted when nothing is held, so any body within --max-body-bytes can be served.
HELD_BODIES = 8
_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BF16": "TYPE_BF16",
}  # fmt: skip


_READ = ("GET", "HEAD")
# With --api-keys, the only paths answered without a key: the kubelet's probes.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
# How often the key directory is read again: a rotated Secret counts within about this long
# after the kubelet has written it.
KEY_RELOAD_S = 1.0


@dataclasses.dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]  # also the 405 answer's Allow header
    handler: Callable[[Request, Respond], None]


def error_body(message: str) -> bytes:
    return dumps({"error": message})


def _json(status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, dumps(doc), headers=headers)


def _error(exc: BaseException) -> Response:
    if isinstance(exc, ServingError):
        return Response(exc.status, error_body(exc.message), headers=tuple(exc.headers.items()))
    log.error("unexpected error: %r", exc)
    return Response(500, error_body(f"internal error: {type(exc).__name__}: {exc}"))


def _answer(answer: Answer) -> Response:
    body, header_len = answer
    if header_len is None:
        return Response(200, body)
    return Response(200, body, "application/octet-stream", (
        ("Inference-Header-Content-Length", str(header_len)),
    ))  # fmt: skip


def _header_timeout(raw: str | None) -> float | None:
    """The modelfleet-timeout-ms header in seconds (None: absent or 0)."""
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 <= ms < math.inf:  # NaN fails too
        raise BadRequest(f"{TIMEOUT_HEADER} must be a finite number of milliseconds >= 0")
    return ms / 1000.0 if ms > 0 else None


def _empty_outputs(manifest: Manifest) -> list[torch.Tensor]:
    """The outputs of a zero-row request, when the manifest fixes every other dimension."""
    out = []
    for spec in manifest.outputs:
        if any(d < 0 for d in spec.shape[1:]):
            raise BadRequest(
                f"a request with zero rows has no answer: output {spec.signature()} has a "
                "dynamic dimension besides the batch axis"
            )
        out.append(torch.empty((0, *spec.shape[1:]), dtype=TORCH_DTYPES[spec.datatype]))
    return out


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    version: str
    manifest: Manifest


def resolve_identity(cfg: ServeConfig) -> Identity:
    manifest = load_manifest(cfg.model_dir)
    if cfg.format:
        manifest = dataclasses.replace(manifest, format=cfg.format)
    if cfg.entrypoint:
        manifest = dataclasses.replace(manifest, entrypoint=cfg.entrypoint)
    name = cfg.name or manifest.name or cfg.model_dir.resolve().name
    version = cfg.version or manifest.version or "1"
    return Identity(name, version, manifest)


class _Held:
    """One request's share of the held-data budget, given back when it is answered (a
    Respond that releases, then forwards)."""

    __slots__ = ("_app", "_respond", "size")

    def __init__(self, app: App, size: int, respond: Respond) -> None:
        self._app, self.size, self._respond = app, size, respond

    def __call__(self, resp: Response) -> None:
        self._app._held -= self.size
        self.size = 0
        self._respond(resp)

    def grow(self, more: int) -> bool:
        """Take ``more`` (an inflated body's tensors); False, taking nothing, past the limit
        while other requests hold data."""
        app = self._app
        if app._held > self.size and app._held + more > app._held_limit:
            return False
        app._held += more
        self.size += more
        return True


class App:
    def __init__(
        self, cfg: ServeConfig, ident: Identity, metrics: Metrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.cfg = cfg
        self.name = ident.name
        self.version = ident.version
        self.manifest = ident.manifest
        self.metrics = metrics
        self.loop = loop
        self.model: Model | None = None
        self.batcher: Batcher[InferRequest, Answer] | None = None
        self._decoder = concurrent.futures.ThreadPoolExecutor(1, "modelfleet-decode")
        self._decoding = 0  # requests on or waiting for the decode thread
        self._held = 0  # bytes of request data admitted and not yet answered
        self._held_limit = HELD_BODIES * cfg.max_body_bytes
        self._headers = HeaderCache()  # binary requests' decoded JSON headers
        self.ready = False
        self.idle = IdleClock()  # begin/end around every request in flight or queued
        self.inferences = 0  # rows answered with 200 (energy per 1000 inferences)
        # --api-keys: None serves everyone (the default, as before)
        self.keys: KeyRing | None = KeyRing() if cfg.api_keys else None
        self.limiter = Limiter(KeyLimits(cfg.key_rate, cfg.key_burst, cfg.key_concurrency))

        def document(make: Callable[[], Response]) -> Route:
            return Route(_READ, lambda _req, respond: respond(make()))

        self._routes: dict[str, Route] = {
            "/v2/health/live": document(lambda: _json(200, {"live": True})),
            "/v2/health/ready": document(self._health_ready),
            "/v2": document(self._server_metadata),
            # Triton's model repository extension
            "/v2/repository/index": Route(("POST",), self._repository_index),
        }
        # With API keys, /metrics is served only on --metrics-port: never to a caller's key.
        self._metrics_routes: dict[str, Route] = {
            METRICS_PATH: document(self._metrics),
            **{p: r for p, r in self._routes.items() if p in OPEN_PATHS},
        }
        if self.keys is None and not cfg.metrics_port:
            self._routes[METRICS_PATH] = self._metrics_routes[METRICS_PATH]
        self._model_routes: dict[str, Route] = {
            "": document(lambda: _json(200, self._model_metadata())),
            "ready": document(self._model_ready),
            "config": document(lambda: _json(200, self._config())),
            "infer": Route(("POST",), self._infer),
        }

    # -- routing -----------------------------------------------------------------------------

    def handle(self, req: Request, respond: Respond) -> None:
        try:
            if self.keys is not None and req.path.rstrip("/") not in OPEN_PATHS:
                respond = self._authorize(req, respond)
            route = self._route(req.path)
            if req.method not in route.methods:
                allow = ", ".join(route.methods)
                raise MethodNotAllowed(
                    f"{req.method} not allowed on {req.path}; allowed: {allow}",
                    headers={"Allow": allow},
                )
            route.handler(req, respond)
        except ServingError as exc:
            respond(_error(exc))

    def handle_metrics_port(self, req: Request, respond: Respond) -> None:
        """--metrics-port: /metrics and the probes, nothing else."""
        path = req.path.rstrip("/") or "/"
        route = self._metrics_routes.get(path)
        if route is None:
            respond(_error(NotFound(f"no route for {req.path} on the metrics port")))
        elif req.method not in route.methods:
            allow = ", ".join(route.methods)
            respond(_error(MethodNotAllowed(f"{req.method} not allowed on {req.path}",
                                            headers={"Allow": allow})))  # fmt: skip
        else:
            route.handler(req, respond)

    # -- API keys ----------------------------------------------------------------------------

    def _authorize(self, req: Request, respond: Respond) -> Respond:
        """The request's key checked and admitted by its limits, or a 401/429 raised. The
        Respond returned gives the key's concurrency back and counts the answer."""
        assert self.keys is not None
        key = presented_key(req.headers)
        if key is None:
            self.metrics.auth_failure("missing")
            raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
        key_id = self.keys.verify(key)
        if key_id is None:
            self.metrics.auth_failure("invalid")
            raise Unauthorized("the API key is not valid (unknown, revoked or mistyped)")
        wait_s = self.limiter.admit(key_id, time.monotonic())
        if wait_s is not None:
            self.metrics.key_request(key_id, "rate_limited")
            lim = self.limiter.limits
            what = (f"{lim.concurrency} requests in flight"
                    if lim.concurrency is not None and self.limiter.inflight(key_id)
                    >= lim.concurrency else f"{lim.rate:g} requests/s")  # fmt: skip
            raise Overloaded(
                f"API key {key_id!r} is over its limit of {what}; retry later",
                status=429, retry_after_s=max(1, math.ceil(wait_s)), outcome="rate_limited",
            )  # fmt: skip
        limiter, metrics = self.limiter, self.metrics

        def answered(resp: Response) -> None:
            limiter.release(key_id)
            metrics.key_request(key_id, resp.status)
            respond(resp)

        return answered

    def set_keys(self, ring: KeyRing) -> None:
        self.keys = ring
        self.limiter.retain(set(ring.digests))
        self.metrics.keys_loaded(len(ring))

    def _route(self, path: str) -> Route:
        if not path.startswith("/v2/models/"):
            route = self._routes.get(path.rstrip("/") or "/")
            if route is None and path.rstrip("/") == METRICS_PATH:
                raise NotFound("/metrics is not served on this port: with --api-keys or "
                               "--metrics-port it is served only on --metrics-port")  # fmt: skip
            if route is None:
                raise NotFound(f"no route for {path}")
            return route
        parts = path[len("/v2/models/") :].split("/")
        name, rest = parts[0], parts[1:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else ""
        route = self._model_routes.get(action)
        if len(rest) > 1 or route is None:
            raise NotFound(f"no route for {path}")
        if name != self.name:
            if action == "infer":
                self.metrics.request_done(404, 0.0)
            raise NotFound(f'unknown model "{name}"; this server serves "{self.name}"')
        if version is not None and version != self.version:
            if action == "infer":
                self.metrics.request_done(404, 0.0)
            served = self.version
            raise NotFound(f'unknown version "{version}" of model "{name}"; served version is '
                           f'"{served}"')  # fmt: skip
        return route

    def _repository_index(self, _req: Request, respond: Respond) -> None:
        respond(_json(200, [{"name": self.name, "version": self.version,
                             "state": "READY" if self.ready else "UNAVAILABLE"}]))  # fmt: skip

    def _model_ready(self) -> Response:
        return _json(200 if self.ready else 503, {
            "name": self.name, "version": self.version, "ready": self.ready,
        })  # fmt: skip

    # -- infer -------------------------------------------------------------------------------

    def _infer(self, req: Request, respond: Respond) -> None:
        started = time.perf_counter()
        try:
            batcher = self.batcher
            if batcher is None:
                raise Unavailable("model is not loaded yet")
            header_len: int | None = None
            raw_len = req.headers.get("inference-header-content-length")
            if raw_len is not None:
                # bounded before int(): past 4300 digits int() raises ValueError (a 500)
                if not (raw_len.isascii() and raw_len.isdigit()) or len(raw_len) > 20:
                    raise BadRequest("Inference-Header-Content-Length must be a byte count "
                                     "(up to 20 decimal digits)")  # fmt: skip
                header_len = int(raw_len)
            batcher.check_admission()  # before decoding: refusals must stay cheap
            if self._decoding >= self.cfg.max_queue_size:
                raise Overloaded(f"{self._decoding} request bodies waiting to be decoded; "
                                 "retry later", status=self.cfg.overload_status)  # fmt: skip
            timeout_s = _header_timeout(req.headers.get(TIMEOUT_HEADER))
            body = req.body
            respond = self._hold(len(body), respond)
            encoding = req.headers.get("content-encoding")
            json_bytes = len(body) if header_len is None else header_len
            if encoding is None and json_bytes <= INLINE_DECODE_BYTES:
                ir = self._decode(body, None, header_len)
            else:
                self._decoding += 1
                future = self.loop.run_in_executor(
                    self._decoder, self._decode, body, encoding, header_len
                )
                future.add_done_callback(lambda f: self._decoded(f, timeout_s, started, respond))
                return
        except ServingError as exc:
            self.metrics.request_done(exc.status, time.perf_counter() - started, exc.outcome)
            respond(_error(exc))  # the held bytes' release, when they were taken
            return
        self._submit(ir, timeout_s, started, respond)

    def _hold(self, size: int, respond: Respond) -> _Held:
        """Take ``size`` bytes of the held-data budget until the request is answered."""
        if self._held and self._held + size > self._held_limit:
            raise self._over_budget()
        self._held += size
        return _Held(self, size, respond)

    def _over_budget(self) -> Overloaded:
        return Overloaded(
            f"{self._held >> 20} MiB of request data already waiting (limit "
            f"{self._held_limit >> 20} MiB, {HELD_BODIES}x --max-body-bytes); retry later",
            status=self.cfg.overload_status,
        )

    def _decode(
        self, body: bytearray, encoding: str | None, header_len: int | None
    ) -> InferRequest:
        """Decompress and decode one request (on the loop, or on the decode thread)."""
        if encoding is not None:
            body = decompress(body, encoding, self.cfg.max_body_bytes)
        return decode_infer(body, header_len, self.manifest, self.cfg.max_batch_size, self._headers)

    def _decoded(
        self,
        future: asyncio.Future[InferRequest],
        timeout_s: float | None,
        started: float,
        respond: _Held,
    ) -> None:
        self._decoding -= 1
        try:
            ir = future.result()
            # a gzip body inflates on the decode thread: its tensors count from here
            if not respond.grow(max(0, sum(t.nbytes for t in ir.inputs) - respond.size)):
                raise self._over_budget()
        except ServingError as exc:
            self.metrics.request_done(exc.status, time.perf_counter() - started, exc.outcome)
            respond(_error(exc))
            return
        except Exception as exc:
            self.metrics.request_done(500, time.perf_counter() - started)
            respond(_error(exc))
            return
        self._submit(ir, timeout_s, started, respond)

    def _submit(
        self, ir: InferRequest, timeout_s: float | None, started: float, respond: Respond
    ) -> None:
        app, metrics, idle = self, self.metrics, self.idle
        batcher = self.batcher
        assert batcher is not None  # _infer checked
        timeout_s = ir.timeout_s if timeout_s is None else min(timeout_s, ir.timeout_s or timeout_s)
        if ir.rows == 0:  # nothing to compute: answered alone, never merged into a batch
            try:
                resp = _answer(self._encode(ir, _empty_outputs(self.manifest)))
            except ServingError as exc:
                resp = _error(exc)
            metrics.request_done(resp.status, time.perf_counter() - started)
            respond(resp)
            return

        timer: list[asyncio.TimerHandle] = []

        def done(
            answer: Answer | None,
            error: BaseException | None,
            queue_s: float,
            compute_s: float,
        ) -> None:
            metrics.inflight.dec()
            idle.end()
            if timer:
                timer[0].cancel()
            if error is not None or answer is None:
                resp = _error(error or RuntimeError("no result"))
            else:
                resp = _answer(answer)
            metrics.queue_seconds.observe(queue_s)
            metrics.request_done(resp.status, time.perf_counter() - started)
            if resp.status == 200:
                app.inferences += ir.rows
            respond(resp)

        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            ticket = batcher.submit(ir, ir.rows, done, deadline)
        except Overloaded as exc:
            metrics.request_done(exc.status, time.perf_counter() - started, exc.outcome)
            respond(_error(exc))
            return
        metrics.inflight.inc()
        idle.begin()
        if timeout_s:
            timer.append(self.loop.call_later(timeout_s, batcher.expire, ticket))

    def process_batch(self, requests: list[InferRequest]) -> list[Answer | BaseException]:
        """Batcher callback (its thread): forward pass, then every answer encoded there, so
        the event loop only writes bytes."""
        model = self.model
        assert model is not None  # the batcher starts after the load
        results = model.run_batch(requests)
        return [
            r if isinstance(r, BaseException) else self._encode_or_error(ir, r)
            for ir, r in zip(requests, results, strict=True)
        ]

    def _encode(self, ir: InferRequest, outputs: list[torch.Tensor]) -> Answer:
        return encode_response(
            self.name, self.version, ir, outputs, self.manifest, max_bytes=self.cfg.max_body_bytes
        )

    def _encode_or_error(
        self, ir: InferRequest, outputs: list[torch.Tensor]
    ) -> Answer | BaseException:
        try:
            return self._encode(ir, outputs)
        except Exception as exc:  # a ServingError (answer too big) or a bug: this request only
            return exc

    # -- documents ---------------------------------------------------------------------------

    def _health_ready(self) -> Response:
        return _json(200 if self.ready else 503, {"ready": self.ready})

    def _server_metadata(self) -> Response:
        return _json(200, {
            "name": "modelfleet",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_configuration"],
        })  # fmt: skip

    def _metrics(self) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _model_metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORMS[self.manifest.format],
            "inputs": [t.to_json() for t in self.manifest.inputs],
            "outputs": [t.to_json() for t in self.manifest.outputs],
        }

    def _config(self) -> dict[str, Any]:
        """Triton-style model configuration (Triton's tools read it)."""
        batched = self.manifest.batched
        max_batch = self.cfg.max_batch_size if batched else 0

        def dims(shape: tuple[int, ...]) -> list[int]:
            return list(shape[1:] if batched else shape)

        return {
            "name": self.name,
            "platform": PLATFORMS[self.manifest.format],
            "backend": "pytorch",
            "version_policy": {"specific": {"versions": [self.version]}},
            "max_batch_size": max_batch,
            "input": [
                {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": dims(t.shape)}
                for t in self.manifest.inputs
            ],
            "output": [
                {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": dims(t.shape)}
                for t in self.manifest.outputs
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(self.cfg.max_batch_delay_ms * 1000),
                "default_queue_policy": {"max_queue_size": self.cfg.max_queue_size},
            },
        }


# -- process lifecycle -----------------------------------------------------------------------


def _load_in_thread(
    loop: asyncio.AbstractEventLoop, opts: LoadOptions, digest: str | None
) -> asyncio.Future[tuple[Model, float]]:
    """A daemon thread, so a SIGTERM during a long load does not wait for it."""
    fut: asyncio.Future[tuple[Model, float]] = loop.create_future()

    def settle(result: tuple[Model, float] | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            assert result is not None
            fut.set_result(result)

    def work() -> None:
        try:
            result = load(opts, digest)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="modelfleet-load", daemon=True).start()
    return fut


async def serve(cfg: ServeConfig, ident: Identity) -> int:
    loop = asyncio.get_running_loop()
    metrics = Metrics(ident.name, ident.version)
    app = App(cfg, ident, metrics, loop)
    loop.set_exception_handler(LoopErrorLog())
    limits = Limits(
        max_connections=cfg.max_connections,
        keepalive_timeout_s=cfg.keepalive_timeout,
        request_timeout_s=cfg.request_timeout,
        write_timeout_s=cfg.write_timeout,
    )
    http = HttpServer(
        app.handle, max_body_bytes=cfg.max_body_bytes, error_body=error_body, limits=limits
    )

    def refused(status: int) -> None:
        if status == 413:  # an oversized body is an inference request we turned away
            metrics.request_done(status, 0.0)

    http.on_refused = refused
    if cfg.api_keys is not None:
        try:
            app.set_keys(_read_keys(cfg.api_keys))
        except OSError as exc:
            reason = f"--api-keys {cfg.api_keys}: cannot read the key directory: {exc}"
            log.error(reason)
            write_termination_log(reason)
            return 1
    servers = [(http, cfg.port)]
    if cfg.metrics_port:
        scrape = HttpServer(
            app.handle_metrics_port, max_body_bytes=64 * 1024, error_body=error_body, limits=limits
        )
        servers.append((scrape, cfg.metrics_port))
    for server, port in servers:
        try:
            await server.listen(cfg.host, port)
        except OSError as exc:
            reason = f"cannot listen on {cfg.host}:{port}: {exc.strerror or exc}"
            log.error(reason)
            write_termination_log(reason)
            return 1
    reloading = asyncio.ensure_future(_reload_keys(app, cfg.api_keys)) if cfg.api_keys else None
    log.info("listening on %s:%d; loading %s model %s version %s from %s", cfg.host, cfg.port,
             ident.manifest.format, ident.name, ident.version, cfg.model_dir)  # fmt: skip

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    opts = LoadOptions(cfg.model_dir, ident.manifest, cfg.device, cfg.dtype, cfg.max_batch_size)
    loading = _load_in_thread(loop, opts, cfg.digest)
    stopping = asyncio.ensure_future(stop.wait())
    waiting: list[asyncio.Future[Any]] = [loading, stopping]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        log.info("stopped while loading")
        http.start_drain()
        http.close_all()
        ignore_exit_signals(loop)
        return 0
    try:
        model, seconds = loading.result()
    except LoadError as exc:
        reason = f"model failed to load: {exc}"
        log.error(reason)
        write_termination_log(reason)
        return 1
    except Exception as exc:
        reason = f"model failed to load: {type(exc).__name__}: {exc}"
        log.exception(reason)
        write_termination_log(reason)
        return 1

    # Everything loaded so far (torch, the model: ~200k objects) lives as long as the process:
    # out of the cyclic GC's sight, a full collection stops costing ~0.3 s of the event loop.
    gc.freeze()
    threads = cfg.threads or default_threads()

    def post(fn: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(fn)

    batcher: Batcher[InferRequest, Answer] = Batcher(
        app.process_batch,
        post=post,
        max_batch_size=model.max_batch_size,
        max_delay_s=cfg.max_batch_delay_ms / 1000.0,
        max_queue_size=cfg.max_queue_size,
        overload_status=cfg.overload_status,
        observer=metrics,
        thread_init=(lambda: torch.set_num_threads(threads)) if threads else None,
    )
    batcher.start()
    if model.device.type == "cuda":
        metrics.watch_gpu(model.device.index or 0)
    cost = _cost_collector(app, model)
    metrics.load_seconds.set(seconds)
    app.model, app.batcher = model, batcher
    app.ready = True
    app.idle.serve()
    metrics.ready.set(1)
    sampling = asyncio.ensure_future(_sample_costs(cost))
    log.info("ready in %.2fs (device %s, max batch %d)", seconds, model.device,
             model.max_batch_size)  # fmt: skip

    await stopping
    # SIGTERM: not ready at once, stop accepting, answer everything accepted, then exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):  # another signal must not cut the drain short
        loop.add_signal_handler(sig, log.info, "already draining: signal %d ignored", sig)
    app.ready = False
    app.idle.stop()
    sampling.cancel()
    metrics.ready.set(0)
    http.start_drain()
    now = loop.time()
    deadline = now + cfg.drain_timeout
    # Keep-alive connections may carry a request already on the wire; give them a moment
    # (answered with "Connection: close") before closing the idle ones.
    grace_end = now + min(IDLE_GRACE_S, cfg.drain_timeout)
    log.info("draining: %d requests in flight", http.inflight)
    while (http.inflight or http.connections) and loop.time() < deadline:
        if loop.time() >= grace_end:
            http.close_idle()
        await asyncio.sleep(0.005)
    if http.inflight:
        log.warning("drain timeout: %d requests unanswered", http.inflight)
    http.close_all()  # abort(): a client that reads nothing must not hold the exit up
    for server, _ in servers[1:]:
        server.start_drain()
        server.close_all()
    if reloading is not None:
        reloading.cancel()
    batcher.stop(timeout=max(0.0, deadline - loop.time()))
    ignore_exit_signals(loop)
    log.info("drained; exiting")
    return 0


def _cost_collector(app: App, model: Model) -> CostCollector:
    """Idle and energy metrics for the accelerators this process holds: on CUDA every GPU
    the container can see (the device plugin hands a pod its GPUs; an unused one still
    costs), with NVML's energy counters where the driver has them."""
    accelerators, energy = 0, None
    if model.device.type == "cuda":
        accelerators = torch.cuda.device_count()
        why = "no CUDA device in use"
        try:
            uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(accelerators)]
        except Exception as exc:  # an old driver or torch: no energy figures, still serving
            uuids, why = [], f"cannot read the GPUs' UUIDs: {exc}"
        energy, why_not = Nvml.open(uuids) if uuids else (None, why)
        if energy is None:
            log.info("no accelerator energy figures: %s", why_not)
    cost = CostCollector(
        {"model": app.name, "version": app.version},
        clock=app.idle,
        accelerators=accelerators,
        energy=energy,
        inferences=lambda: app.inferences,
    )
    app.metrics.registry.register(cost)
    return cost


async def _sample_costs(cost: CostCollector) -> None:
    while True:
        await asyncio.sleep(SAMPLE_EVERY_S)
        try:
            cost.sample()
        except Exception:  # a bug here must not end the sampling
            log.exception("sampling the idle and energy figures failed")


def _read_keys(directory: Path) -> KeyRing:
    loaded = load_key_dir(directory)
    for problem in loaded.problems:
        log.warning("--api-keys %s: skipped %s", directory, problem)
    return loaded.ring


async def _reload_keys(app: App, directory: Path) -> None:
    """Read the key directory every KEY_RELOAD_S; a changed set of keys replaces the old
    one at once (rotation and revocation without a restart). When the directory cannot be
    read, the keys last read stay (said once per distinct error)."""
    last_error = ""
    while True:
        await asyncio.sleep(KEY_RELOAD_S)
        try:
            loaded = await asyncio.to_thread(load_key_dir, directory)
        except OSError as exc:
            if str(exc) != last_error:
                kept = len(app.keys or ())
                log.warning("--api-keys %s: cannot read the key directory, keeping the %d "
                            "keys read before: %s", directory, kept, exc)  # fmt: skip
                last_error = str(exc)
            continue
        except Exception:  # a bug here must not end the reloads
            log.exception("reading the API keys failed")
            continue
        last_error = ""
        old = app.keys.digests if app.keys is not None else {}
        new = loaded.ring.digests
        if new != old:
            for problem in loaded.problems:
                log.warning("--api-keys %s: skipped %s", directory, problem)
            added = sorted(k for k in new if k not in old)
            removed = sorted(k for k in old if k not in new)
            changed = sorted(k for k in new if k in old and new[k] != old[k])
            log.info("API keys now %d: added %s, removed %s, rotated %s", len(new),
                     added or "none", removed or "none", changed or "none")  # fmt: skip
            app.set_keys(loaded.ring)


def ignore_exit_signals(loop: asyncio.AbstractEventLoop) -> None:
    """From here to the exit a SIGTERM (the kubelet's second one, a supervisor's) must not
    kill the process with 143: the exit status is the drain's. Closing the loop would put
    the default handlers back, so take ours out of its hands first."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def run(cfg: ServeConfig) -> int:
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune_for_batches()  # before the model's first buffers
    # the default follows the CPU quota and affinity, not the node's core count
    torch.set_num_threads(cfg.threads or default_threads())
    try:
        ident = resolve_identity(cfg)
    except LoadError as exc:
        reason = f"model failed to load: {exc}"
        log.error(reason)
        write_termination_log(reason)
        return 1
    return asyncio.run(serve(cfg, ident))
