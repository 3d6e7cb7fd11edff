"""HTTP/1.1 behaviour seen from raw sockets: pipelining, chunked bodies, 100-continue, close."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import Runtime
from testnets import Affine

pytestmark = pytest.mark.runtime

BODY = json.dumps({"inputs": [
    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "scale", "datatype": "FP32", "shape": [1, 1], "data": [1]},
]}).encode()  # fmt: skip


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-response: {self.buf!r}"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        return not self.buf and not self._fill()


@pytest.fixture
def server(affine_servers: dict[str, tuple[Runtime, Affine]]) -> Runtime:
    return affine_servers["torchscript"][0]


def connect(server: Runtime) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock, Reader(sock)


def infer_request(server: Runtime, extra: bytes = b"", body: bytes = BODY) -> bytes:
    return (f"POST /v2/models/{server.model_dir.name}/infer HTTP/1.1\r\nHost: t\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body  # fmt: skip


def test_pipelined_requests_are_answered_in_order(server: Runtime) -> None:
    sock, reader = connect(server)
    bad = infer_request(server, body=b"{}")
    sock.sendall(infer_request(server) + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
                 + bad + infer_request(server))  # fmt: skip
    statuses = []
    for _ in range(4):
        status, _, body = reader.response()
        statuses.append((status, json.loads(body)))
    sock.close()
    assert [s for s, _ in statuses] == [200, 200, 400, 200]
    assert "outputs" in statuses[0][1] and statuses[1][1] == {"live": True}
    assert statuses[0][1] == statuses[3][1]


def test_chunked_body_and_no_content_type(server: Runtime) -> None:
    sock, reader = connect(server)
    chunks = [BODY[:10], BODY[10:50], BODY[50:]]
    payload = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    sock.sendall(f"POST /v2/models/{server.model_dir.name}/infer HTTP/1.1\r\nHost: t\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode() + payload)  # fmt: skip
    status, headers, body = reader.response()
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert len(json.loads(body)["outputs"]) == 2
    sock.close()


def test_expect_100_continue(server: Runtime) -> None:
    sock, reader = connect(server)
    head = infer_request(server, b"Expect: 100-continue\r\n")
    sock.sendall(head[: -len(BODY)])  # headers only: wait for the go-ahead
    status, _, _ = reader.response()
    assert status == 100
    sock.sendall(BODY)
    status, _, body = reader.response()
    assert status == 200, body
    sock.close()


def test_keep_alive_many_requests_then_close(server: Runtime) -> None:
    sock, reader = connect(server)
    for _ in range(50):
        sock.sendall(infer_request(server))
        assert reader.response()[0] == 200
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, _ = reader.response()
    assert status == 200 and headers["connection"] == "close"
    assert reader.closed()
    sock.close()


def test_head_has_no_body(server: Runtime) -> None:
    sock, reader = connect(server)
    sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")  # fmt: skip
    while b"\r\n\r\n" not in reader.buf:
        reader._fill()
    head, _, reader.buf = reader.buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 13" in head
    assert reader.response()[2] == b'{"live":true}'  # the next answer starts right away
    sock.close()


def test_http10_closes_after_answer(server: Runtime) -> None:
    sock, reader = connect(server)
    sock.sendall(b"GET /v2/health/ready HTTP/1.0\r\n\r\n")
    assert reader.response()[0] == 200
    assert reader.closed()
    sock.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /v2 HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    ],
    ids=["request-line", "version", "cl-and-te", "bad-length", "space-in-name", "too-large"],
)
def test_unreadable_requests_are_refused_and_closed(
    server: Runtime, raw: bytes, status: int
) -> None:
    sock, reader = connect(server)
    sock.sendall(raw)
    got, headers, body = reader.response()
    assert got == status and "error" in json.loads(body)
    assert headers["connection"] == "close"
    assert reader.closed()
    sock.close()
