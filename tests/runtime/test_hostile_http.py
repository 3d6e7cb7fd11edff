"""A hostile or careless client against a real runtime process (issue 10's findings, each a
regression test): nothing it sends may stall, exhaust or crash the server, and every
malformed request gets a 4xx naming what is wrong.

Assertions are on behaviour (answers, closed connections, the server's RSS against a
generous bound), never on speed; the short timeouts below only make the waits short.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Runtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_models import build_affine_dir
from test_http import BODY, Reader

pytestmark = pytest.mark.runtime

TIMEOUTS = ("--request-timeout", "2", "--write-timeout", "2", "--keepalive-timeout", "30")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "hostile"
    build_affine_dir(d, "torchscript")
    return d


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Runtime]:
    runtime = Runtime(model_dir, *TIMEOUTS, "--max-body-bytes", "65536")
    try:
        yield runtime.wait_ready()
    finally:
        runtime.stop()


def connect(server: Runtime, timeout: float = 10) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock, Reader(sock)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def ended_by_server(sock: socket.socket, wait_s: float = 60) -> bool:
    """Read whatever comes until the server closes or resets the connection."""
    sock.settimeout(wait_s)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def healthy(server: Runtime) -> bool:
    return server.request("GET", "/v2/health/ready", timeout=10)[0] == 200


# -- flow control ----------------------------------------------------------------------------


def test_pipelining_without_reading_stops_reading_bounds_memory_then_aborts(
    server: Runtime,
) -> None:
    """Each 60-byte request asks for a ~1 KB document: a server that parsed on without
    flow control buffered ~20x what the client sent (12.6 MB sent: +100 MB RSS)."""
    request = f"GET /v2/models/{server.model_dir.name}/config HTTP/1.1\r\nHost: t\r\n\r\n"
    chunk = request.encode() * 1000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    before = rss_bytes(server.proc.pid)
    sock.settimeout(1)
    sent, limit, reset = 0, 64 << 20, False
    try:
        while sent < limit:
            sent += sock.send(chunk)
    except TimeoutError:  # the server has stopped reading
        pass
    except ConnectionResetError:  # ... and already dropped us
        reset = True
    grown = rss_bytes(server.proc.pid) - before
    assert sent < limit, "the server kept reading from a client that reads nothing"
    assert grown < 48 << 20, f"RSS grew {grown >> 20} MB for {sent >> 20} MB sent"
    assert healthy(server)  # everyone else is still served
    # It reads nothing: dropped after --write-timeout, not held forever by close().
    assert reset or ended_by_server(sock)
    sock.close()
    assert healthy(server)


def test_a_client_that_never_reads_one_big_answer_is_dropped(server: Runtime) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 200)
    assert ended_by_server(sock)
    sock.close()


# -- clocks ----------------------------------------------------------------------------------


def test_slowloris_head_is_reaped_though_bytes_keep_coming(server: Runtime) -> None:
    """The request clock runs from the request's first byte; it does not restart on every
    byte (the finding: a head trickled a byte at a time was never reaped)."""
    sock, reader = connect(server)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 400
    closed = False
    for byte in head:  # ~40 s of trickle at most; the server's limit is 2 s
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.1)
        if reader.buf or _readable(sock):
            closed = True
            break
    assert closed, "a trickled head outlived --request-timeout"
    status, headers, body = reader.response()
    assert status == 408 and headers["connection"] == "close"
    assert "in time" in json.loads(body)["error"]
    sock.close()


def _readable(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(65536, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


def test_idle_keep_alive_connection_is_closed_quietly(model_dir: Path) -> None:
    runtime = Runtime(model_dir, "--keepalive-timeout", "1").wait_ready()
    try:
        sock, reader = connect(runtime, timeout=30)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.response()[0] == 200
        assert reader.closed()  # then nothing but EOF
        sock.close()
    finally:
        runtime.stop()


# -- malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        ("POST /v2 HTTP/1.1\r\nHost: t\r\nContent-Length: \u00b9\r\n\r\n".encode(), 400,
         "Content-Length"),
        ("POST /v2 HTTP/1.1\r\nHost: t\r\nContent-Length: \u0662\r\n\r\nab".encode(), 400,
         "Content-Length"),
        (b"GET /v2 HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET /v2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"GET /v2 HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, "header value"),
        (b"GET /v2 HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "header value"),
        (b"GET /v2 HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, "header value"),
        (b"GET /v2\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "url"),
        (b"GET /v2\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400, "url"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "too large"),
        (b"POST /v2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
         b"X: " + b"a" * 70000, 431, "trailer"),
        (b"POST /v2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
         "Transfer-Encoding"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501, "CONNECT"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417, "Expect"),
    ],
    ids=["superscript-length", "arabic-digit-length", "no-host", "two-hosts", "ctl-value",
         "nul-value", "del-value", "ctl-target", "non-ascii-target", "huge-header",
         "huge-trailer", "gzip-te", "connect", "h2-preface", "expect"],
)  # fmt: skip
def test_malformed_requests_get_a_clear_4xx_and_close(
    server: Runtime, raw: bytes, status: int, needle: str
) -> None:
    sock, reader = connect(server)
    sock.sendall(raw)
    got, headers, body = reader.response()
    error = json.loads(body)["error"]
    assert got == status and needle.lower() in error.lower(), error
    assert headers["connection"] == "close"
    assert reader.closed()
    sock.close()


def test_http10_needs_no_host(server: Runtime) -> None:
    sock, reader = connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert reader.response()[0] == 200
    sock.close()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v2/models/{m}/infer", "POST"),
        ("PUT", "/v2/models/{m}/versions/1/infer", "POST"),
        ("POST", "/v2/health/live", "GET, HEAD"),
        ("DELETE", "/v2/models/{m}", "GET, HEAD"),
        ("POST", "/v2/models/{m}/config", "GET, HEAD"),
        ("GET", "/v2/repository/index", "POST"),
        ("OPTIONS", "/metrics", "GET, HEAD"),
    ],
)
def test_405_says_what_is_allowed(server: Runtime, method: str, path: str, allow: str) -> None:
    status, headers, body = server.request(method, path.format(m=server.model_dir.name), b"")
    assert status == 405 and headers["allow"] == allow
    assert allow in json.loads(body)["error"]


def test_100_continue_is_not_sent_ahead_of_an_earlier_answer(slow_server: Runtime) -> None:
    """The slow model answers the first request after ~20 ms; a '100 Continue' for the second
    one sent before that would read as the first one's answer."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1, 2]}]}).encode()  # fmt: skip
    infer = (f"POST /v2/models/{slow_server.model_dir.name}/infer HTTP/1.1\r\nHost: t\r\n"
             f"Content-Length: {len(body)}\r\n").encode()  # fmt: skip
    sock, reader = connect(slow_server)
    sock.sendall(infer + b"\r\n" + body + infer + b"Expect: 100-continue\r\n\r\n")
    first = reader.response()
    second = reader.response()
    sock.sendall(body)
    third = reader.response()
    sock.close()
    assert [first[0], second[0], third[0]] == [200, 100, 200]
    assert json.loads(first[2])["outputs"] == json.loads(third[2])["outputs"]


# -- garbage over the wire -------------------------------------------------------------------

PREFIXES = st.sampled_from([
    b"", b"GET / HTTP/1.1\r\n", b"POST /v2/models/hostile/infer HTTP/1.1\r\nHost: t\r\n",
    b"POST /v2/models/hostile/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /v2/models/hostile/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n",
])  # fmt: skip


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(prefix=PREFIXES, junk=st.binary(min_size=1, max_size=200))
def test_garbage_gets_a_4xx_or_a_clean_close_never_a_500_or_a_hang(
    server: Runtime, prefix: bytes, junk: bytes
) -> None:
    sock, reader = connect(server)
    try:
        sock.sendall(prefix + junk + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # we send nothing more: the server must not wait on us
        while True:
            try:
                status, _headers, body = reader.response()
            except AssertionError:  # closed with no (further) answer: a clean close
                assert not reader.buf, reader.buf
                break
            assert status < 500 or status in (501, 505), body
            if status >= 400:
                assert json.loads(body)["error"]
    finally:
        sock.close()


def test_still_serving_after_all_that(server: Runtime) -> None:
    status, _, body = server.request(
        "POST", f"/v2/models/{server.model_dir.name}/infer", BODY, {"Content-Type": JSON_TYPE}
    )
    assert status == 200 and "outputs" in json.loads(body)
    assert "Traceback" not in server.log


JSON_TYPE = "application/json"
