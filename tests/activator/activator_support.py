"""Run the scale-to-zero activator as a real process on loopback ports, fed a slices file,
with real HTTP backends (threads of this process) behind it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NS = "team"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy value of ``probe()``; AssertionError naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


# --- EndpointSlices ----------------------------------------------------------------------


def activator_slice(
    name: str,
    port: int,
    *,
    max_held: int | None = None,
    hold_timeout_s: float | None = None,
    namespace: str = NS,
    slice_name: str | None = None,
) -> dict[str, Any]:
    """The operator's activator slice of ModelDeployment ``name``: listen on ``port``."""
    annotations: dict[str, str] = {}
    if max_held is not None:
        annotations["modelfleet.io/max-held-requests"] = str(max_held)
    if hold_timeout_s is not None:
        annotations["modelfleet.io/hold-timeout-seconds"] = f"{hold_timeout_s:g}"
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name or name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "activator.modelfleet.io",
                "app.kubernetes.io/managed-by": "modelfleet-operator",
            },
            "annotations": annotations,
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
    }


def replica_slice(
    name: str,
    port: int,
    *,
    pod: str | None = None,
    ready: bool | None = True,
    namespace: str = NS,
) -> dict[str, Any]:
    """A Service slice (as Kubernetes' controller writes it) listing one replica of
    ``name`` at 127.0.0.1:``port``."""
    conditions: dict[str, Any] = {} if ready is None else {"ready": ready}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-{port}",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app.kubernetes.io/managed-by": "modelfleet-operator",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": conditions,
                "targetRef": {"kind": "Pod", "name": pod or f"{name}-pod-{port}"},
            }
        ],
    }


# --- backends ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request a backend read to its end."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def answer_bytes(name: str, body: bytes) -> bytes:
    """What backend ``name`` answers to ``body``: every byte value, so any change shows."""
    return b"%s|%s|" % (name.encode(), body) + bytes(range(256))


def read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        line = rfile.readline(1 << 16)
        if not line:
            raise ConnectionError("EOF inside a chunked body")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(out)
        data = rfile.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("EOF inside a chunk")
        out += data[:size]


class Backend:
    """A replica on 127.0.0.1: ``mode`` is "ok" (Content-Length answer), "chunked" (a chunked
    answer with hop-by-hop headers of its own), "cut" (closes halfway through its answer) or
    "gate" (answers "ok" once ``gate`` is set)."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.seen: list[Seen] = []
        self.started = 0  # requests whose headers were read
        self.gate = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                with outer._lock:
                    outer.started += 1
                try:
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        body = read_chunked(self.rfile)
                    else:
                        length = int(self.headers.get("Content-Length") or 0)
                        body = self.rfile.read(length)
                        if len(body) != length:
                            raise ConnectionError("EOF inside the body")
                except (ConnectionError, ValueError, OSError):
                    self.close_connection = True
                    return
                with outer._lock:
                    outer.seen.append(
                        Seen(self.command, self.path, list(self.headers.items()), body)
                    )
                outer._answer(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        data = answer_bytes(self.name, body)
        if self.mode == "gate":
            self.gate.wait(30)
        if self.mode == "cut":
            h.send_response(200)
            h.send_header("Content-Length", str(len(data) + 100_000))
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.send_response(200)
        h.send_header("X-Backend", self.name)
        if self.mode == "chunked":
            h.send_header("Connection", "x-bar")
            h.send_header("X-Bar", "hop")
            h.send_header("Keep-Alive", "timeout=5")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(data), 100):
                part = data[i : i + 100]
                h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            h.wfile.write(b"0\r\n\r\n")
        else:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        h.wfile.flush()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str, mode: str = "ok") -> Backend:
        b = Backend(name, mode)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# --- the activator -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        doc = json.loads(self.body)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str), self.body
        return str(doc["error"])


class ActivatorProcess:
    """One ``python -m modelfleet_operator.activator --slices-file`` process."""

    def __init__(self, workdir: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.metrics_port = free_port()
        self.slices_path = workdir / "slices.yaml"
        self.log_path = workdir / f"activator-{self.metrics_port}.log"
        self.write_slices([])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_operator.activator",
             "--slices-file", str(self.slices_path), "--host", "127.0.0.1",
             "--metrics-port", str(self.metrics_port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def write_slices(self, slices: Sequence[Mapping[str, Any]] | str) -> None:
        """Replace the slices file at once (the activator never reads half of it)."""
        text = slices if isinstance(slices, str) else yaml.safe_dump(list(slices))
        tmp = self.slices_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.slices_path)

    def own(self, path: str, timeout: float = 5.0) -> Reply:
        return request(self.metrics_port, "GET", path, timeout=timeout)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        reply = self.own("/readyz")
        doc = json.loads(reply.body)
        assert isinstance(doc, dict)
        return reply.status, doc

    def metric(self, metric: str, **labels: str) -> float:
        return metric_value(self.own("/metrics").body.decode(), metric, **labels)

    def held(self, name: str) -> float:
        return self.metric("modelfleet_activator_held_requests", namespace=NS, name=name)

    def outcome(self, name: str, outcome: str) -> float:
        return self.metric(
            "modelfleet_activator_requests_total", namespace=NS, name=name, outcome=outcome
        )

    def wait_held(self, name: str, count: int, timeout: float = 10.0) -> None:
        wait_for(lambda: self.held(name) == count, timeout, f"{count} held requests of {name}")

    def wait_routes(self, routes: Mapping[str, int], timeout: float = 10.0) -> dict[str, Any]:
        """Wait until /readyz routes exactly ``routes`` ("ns/name": port) and each port
        accepts connections."""

        def probe() -> dict[str, Any] | None:
            self.check_alive()
            with contextlib.suppress(OSError, ValueError):
                status, doc = self.readyz()
                if status == 200 and doc["routes"] == dict(routes):
                    return doc
            return None

        doc = wait_for(probe, timeout, f"routes {dict(routes)}")
        for port in routes.values():
            wait_for(lambda p=port: connectable(p), timeout, f"a listener on port {port}")  # type: ignore[misc]
        return doc

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"activator exited {self.proc.returncode}:\n{self.log}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"activator still running after {timeout} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def clients(workers: int) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for concurrent clients; leaving does not wait for them (a failed test must not
    hang on a held request: killing the activator ends them)."""
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def request(
    port: int,
    method: str,
    path: str = "/",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 20.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def metric_value(text: str, metric: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != metric:
            continue
        found = {
            kv.split("=", 1)[0]: kv.split("=", 1)[1].strip('"')
            for kv in rest.rstrip("}").split(",")
            if kv
        }
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


@pytest.fixture
def activator(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ActivatorProcess]]:
    """``activator(*args, env={})``: a started activator (ready: its empty slices file read).
    Every one is killed at teardown; a failed test shows their logs."""
    made: list[ActivatorProcess] = []
    request.node.activators = made

    def start(*args: str, env: Mapping[str, str] | None = None) -> ActivatorProcess:
        proc = ActivatorProcess(tmp_path, args, env or {})
        made.append(proc)
        proc.wait_routes({})
        return proc

    yield start
    for proc in made:
        proc.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the log of every activator it started."""
    rep = yield
    if rep.failed:
        for proc in getattr(item, "activators", ()):
            rep.sections.append((f"activator log {proc.log_path.name}", proc.log))
    return rep
