"""The runtime's HTTP/1.1 request parser, fed byte streams directly."""

from __future__ import annotations

import pytest
from modelfleet_runtime.httpparse import HttpError, Request, RequestParser


def parse_all(data: bytes, step: int | None = None, **limits: int) -> list[Request]:
    parser = RequestParser(**limits)
    out = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (req := parser.next()) is not None:
            out.append(req)
    assert parser.idle
    return out


PIPELINE = (
    b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0A\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n"
    b"GET /last HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 7, 64])
def test_pipelined_requests_in_any_fragmentation(step: int | None) -> None:
    reqs = parse_all(PIPELINE, step)
    assert [(r.method, r.path) for r in reqs] == [
        ("POST", "/v2/models/m/infer"), ("GET", "/v2/health/ready"), ("POST", "/c"),
        ("GET", "/last")]  # fmt: skip
    assert reqs[0].body == b"hello" and reqs[0].target.endswith("?x=1")
    assert reqs[1].headers["x-a"] == "1, 2" and reqs[1].body == b""
    assert reqs[2].body == b"abc0123456789"
    assert all(r.keep_alive for r in reqs)


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    assert parse_all(head)[0].keep_alive is keep_alive


def test_leading_blank_lines_are_ignored() -> None:
    assert parse_all(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")[0].path == "/"


def test_expect_continue_is_flagged_until_the_body_arrives() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert parser.next() is None and parser.expects_continue
    parser.feed(b"abc")
    req = parser.next()
    assert req is not None and req.body == b"abc" and not parser.expects_continue


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"G@T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/3\r\n\r\n", 505),
        (b"GET / FTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nName : v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 300, 431),
        (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 11 + b"\r\n", 431),
    ],
)
def test_malformed_or_ambiguous_requests_are_refused(data: bytes, status: int) -> None:
    parser = RequestParser(max_body_bytes=100, max_header_bytes=256, max_headers=10)
    parser.feed(data)
    with pytest.raises(HttpError) as err:
        while parser.next() is not None:
            pass
    assert err.value.status == status


def test_content_length_body_over_limit_is_refused_before_reading() -> None:
    parser = RequestParser(max_body_bytes=10)
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(HttpError, match="exceeds 10 bytes"):
        parser.next()


def test_buffer_is_compacted_over_many_requests() -> None:
    parser = RequestParser()
    for _ in range(1000):
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")
        assert parser.next() is not None
    assert len(parser._buf) < 1000
