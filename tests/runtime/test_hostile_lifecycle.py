"""Hostile clients against the runtime's limits and its shutdown, each on its own runtime
process (issue 10's findings): a connection cap that real requests get through, a low
descriptor limit that neither blocks real requests nor floods the log, a SIGTERM drain that
ends by --drain-timeout although a client reads nothing, and a second SIGTERM that does not
turn the drain's exit status into 143."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Runtime
from runtime_models import build_affine_dir
from test_http import BODY, Reader

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("limits") / "limits"
    build_affine_dir(d, "torchscript")
    return d


def infer(server: Runtime) -> int:
    status, _, _ = server.request("POST", f"/v2/models/{server.model_dir.name}/infer", BODY)
    return status


@contextlib.contextmanager
def sockets(server: Runtime, n: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(n):
            with contextlib.suppress(OSError):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                opened.append(sock)
                if first_bytes:
                    sock.sendall(first_bytes)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_connection_cap_pushes_out_idle_connections_then_refuses_with_503(
    model_dir: Path,
) -> None:
    server = Runtime(model_dir, "--max-connections", "16").wait_ready()
    try:
        with sockets(server, 16):  # idle: they give way to a real request
            assert infer(server) == 200
        time.sleep(0.5)  # let the server see those closes
        # Sixteen requests arriving (heads not finished): nothing to push out.
        with sockets(server, 16, b"GET /v2/health/live HTTP/1.1\r\n") as busy:
            assert len(busy) == 16
            time.sleep(0.5)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            status, headers, body = Reader(sock).response()
            sock.close()
            assert status == 503 and headers["connection"] == "close"
            assert headers["retry-after"] == "1"
            assert "too many connections" in json.loads(body)["error"]
        time.sleep(0.5)
        assert infer(server) == 200  # room again once they are gone
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


def test_at_a_low_descriptor_limit_idle_floods_neither_block_nor_flood_the_log(
    model_dir: Path,
) -> None:
    """The finding: at a 1024-fd limit, 1100 idle connections blocked every real request
    and wrote 16k-30k traceback lines. Here: 160 descriptors, 400 idle connections."""
    server = Runtime(model_dir, "--log-level", "info", preexec_fn=low_fd_limit).wait_ready()
    try:
        with sockets(server, 400) as idle:
            assert len(idle) > 160  # the kernel queued what the server could not take
            statuses = [infer(server) for _ in range(5)]  # served now, not after the flood
        assert statuses == [200] * 5
        time.sleep(1)
        assert [infer(server) for _ in range(5)] == [200] * 5
    finally:
        assert server.stop() == 0
    log = server.log
    assert "Traceback" not in log
    assert len(log.splitlines()) < 60, log[-4000:]
    assert "at most" in log  # it says the cap it runs with


def test_drain_ends_by_its_deadline_although_a_client_reads_nothing(model_dir: Path) -> None:
    server = Runtime(model_dir, "--drain-timeout", "3", "--write-timeout", "600").wait_ready()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", server.port))
    stuck.settimeout(1)
    request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 500
    with contextlib.suppress(TimeoutError):
        for _ in range(200):  # until the server stops reading it
            stuck.sendall(request)
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)  # generous: the drain itself is 3 s
        took = time.monotonic() - started
    finally:
        stuck.close()
        server.stop()
    assert code == 0, server.log[-3000:]
    assert took < 30, f"drain took {took:.0f}s with --drain-timeout 3"


def test_repeated_sigterm_keeps_the_drains_exit_status(model_dir: Path) -> None:
    server = Runtime(model_dir, "--drain-timeout", "1").wait_ready()
    # A keep-alive connection mid-request keeps the drain going for its full second.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    try:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signal.SIGTERM)  # during the drain and after it
            time.sleep(0.02)
        code = server.proc.wait(10)
    finally:
        sock.close()
        server.stop()
    assert code == 0, f"exit {code}:\n{server.log[-3000:]}"
    assert "already draining" in server.log
