"""The runtime's HTTP/1.1 request parser (llhttp plus the server-side rules), fed byte streams
directly. tests/unit/test_runtime_http_fuzz.py compares it with h11 over generated input."""

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
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
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


BIG = bytes(range(256)) * 400  # 100 KB: past the size taken without llhttp


@pytest.mark.parametrize("step", [None, 1000, 4096, 65536])
def test_big_bodies_then_more_requests_in_any_fragmentation(step: int | None) -> None:
    """A big Content-Length body (copied without llhttp) ends exactly at its length: the
    requests after it, a bad one included, are parsed as usual."""
    big = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (len(BIG), BIG)
    reqs = parse_all(big + PIPELINE + big + big[:-1] + b"!", step)
    assert [r.path for r in reqs] == ["/big", "/v2/models/m/infer", "/v2/health/ready", "/c",
                                      "/last", "/big", "/big"]  # fmt: skip
    assert reqs[0].body == BIG and reqs[5].body == BIG and reqs[6].body == BIG[:-1] + b"!"
    assert reqs[3].body == b"abc0123456789"
    parser = RequestParser()
    parser.feed(big + b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused after the big one
    assert parser.next() is not None
    with pytest.raises(HttpError, match="Host"):
        parser.next()


def test_a_big_body_cut_short_is_not_a_request() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG))
    parser.feed(BIG[:-1])
    assert parser.next() is None and not parser.idle


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te, Close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    assert parse_all(head)[0].keep_alive is keep_alive


def test_leading_blank_lines_are_ignored() -> None:
    assert parse_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")[0].path == "/"


def test_expect_continue_is_flagged_until_the_body_arrives() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert parser.next() is None and parser.expects_continue
    parser.feed(b"abc")
    req = parser.next()
    assert req is not None and req.body == b"abc" and not parser.expects_continue


H = b"Host: a\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /\r\n\r\n", 505),  # HTTP/0.9
        (b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
        (b"GET / HTTP/3\r\n" + H + b"\r\n", 505),
        (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET / FTP/1.1\r\n" + H + b"\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"Name : v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"A: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\rX: b\r\n\r\n", 400),
        (CHUNKED.replace(b"Host", b"Content-Length: 1\r\nHost"), 400),
        (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n" + H + "Content-Length: \u00b9\r\n\r\n".encode(), 400),
        (b"POST / HTTP/1.1\r\n" + H + "Content-Length: \u0661\r\n\r\n".encode(), 400),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 101\r\n\r\n", 413),
        (CHUNKED + b"zz\r\n", 400),
        (CHUNKED + b"65\r\n" + b"a" * 101, 413),
        (CHUNKED + b"1\r\nab\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"Expect: magic\r\n\r\n", 417),
        (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 300, 431),
        (b"GET / HTTP/1.1\r\n" + H + b"A: b\r\n" * 11 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
        (b"GET / HTTP/1.0\r\n" + H + b"host: b\r\n\r\n", 400),
        (b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
        (b"GET /a\x7f HTTP/1.1\r\n" + H + b"\r\n", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"X: a\x1bb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + H + b"X: a\x7f\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n", 501),
        (b"POST / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: h2c\r\n"
         b"Content-Length: 3\r\n\r\nabc", 400),
    ],
)  # fmt: skip
def test_malformed_or_ambiguous_requests_are_refused(data: bytes, status: int) -> None:
    parser = RequestParser(max_body_bytes=100, max_header_bytes=256, max_headers=10)
    parser.feed(data)
    with pytest.raises(HttpError) as err:
        while parser.next() is not None:
            pass
    assert err.value.status == status
    assert err.value.message  # says what is wrong


def test_host_is_optional_in_http10_and_may_be_empty() -> None:
    assert parse_all(b"GET / HTTP/1.0\r\n\r\n")[0].headers == {}
    assert parse_all(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")[0].headers == {"host": ""}


def test_header_values_lose_surrounding_whitespace_and_keep_obs_text() -> None:
    req = parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nX: \t v  w \t \r\nY: \xe9\r\n\r\n")[0]
    assert req.headers["x"] == "v  w" and req.headers["y"] == "\u00e9"


def test_an_ignored_upgrade_offer_keeps_the_connection_http11() -> None:
    reqs = parse_all(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                     b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")  # fmt: skip
    assert [r.path for r in reqs] == ["/a", "/b"]


def test_requests_before_an_error_are_delivered_first() -> None:
    parser = RequestParser()
    parser.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    first = parser.next()
    assert first is not None and first.path == "/a"
    with pytest.raises(HttpError, match="Host"):
        parser.next()


def test_parsing_goes_no_further_than_asked() -> None:
    """A pipelining client is parsed a slice ahead at most: garbage far behind the first
    request is not looked at (so not refused) until the server asks for that far."""
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000 + b"garbage\r\n\r\n")
    assert parser.next() is not None
    assert not parser.idle
    with pytest.raises(HttpError):
        while parser.next() is not None:
            pass


def test_content_length_body_over_limit_is_refused_before_reading() -> None:
    parser = RequestParser(max_body_bytes=10)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(HttpError, match="exceeds 10 bytes"):
        parser.next()
