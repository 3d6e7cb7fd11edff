"""The scale-to-zero activator as a real process: its slices from a file, real backends on
loopback and real clients (some hostile) on its ModelDeployment ports."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import http.client
import json
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

import pytest

from .activator_support import (
    NS,
    ActivatorProcess,
    Backend,
    Reply,
    activator_slice,
    answer_bytes,
    clients,
    connectable,
    free_port,
    replica_slice,
    request,
    wait_for,
)

pytestmark = pytest.mark.slow

Start = Callable[..., ActivatorProcess]
MakeBackend = Callable[..., Backend]


def raw(port: int, data: bytes, *, timeout: float = 5.0) -> socket.socket:
    """A connection to ``port`` that has sent ``data``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything until the peer closes (or ``limit`` seconds: then fail, it hung)."""
    out = bytearray()
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return bytes(out)


def closed_by_peer(sock: socket.socket, within: float) -> float:
    """Seconds until the peer closed ``sock`` (reading and dropping what it sends)."""
    begin = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {within} s") from None
    return time.monotonic() - begin


def post_in_thread(
    pool: concurrent.futures.ThreadPoolExecutor, port: int, body: bytes, path: str = "/infer"
) -> concurrent.futures.Future[Reply]:
    return pool.submit(request, port, "POST", path, body, {"Content-Type": "application/json"})


# --- 1. held until a replica is ready ------------------------------------------------------


def test_held_requests_are_proxied_once_a_replica_is_ready(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    md = activator_slice("llm", port, max_held=10, hold_timeout_s=30)
    act.write_slices([md])
    act.wait_routes({f"{NS}/llm": port})
    bodies = [json.dumps({"i": i, "pad": "x" * (i * 1000)}).encode() for i in range(5)]
    with clients(5) as pool:
        futures = [post_in_thread(pool, port, b, f"/v2/models/llm/infer?i={i}") for i, b in
                   enumerate(bodies)]  # fmt: skip
        act.wait_held("llm", 5)
        time.sleep(0.3)
        assert not any(f.done() for f in futures), "a request was answered with no replica"
        assert act.readyz()[1]["held"] == 5
        backend = backends("r0")
        act.write_slices([md, replica_slice("llm", backend.port)])
        replies = [f.result(timeout=15) for f in futures]
    for body, reply in zip(bodies, replies, strict=True):
        assert reply.status == 200, reply
        assert reply.body == answer_bytes("r0", body)
        assert reply.headers["x-backend"] == "r0"
    assert sorted(s.body for s in backend.seen) == sorted(bodies)
    assert sorted(s.path for s in backend.seen) == sorted(
        f"/v2/models/llm/infer?i={i}" for i in range(5)
    )
    assert act.held("llm") == 0
    assert act.outcome("llm", "proxied") == 5
    # with a replica ready, a request goes straight through
    reply = request(port, "GET", "/v2/health/ready")
    assert (reply.status, reply.body) == (200, answer_bytes("r0", b""))


# --- 2. the hold cap -----------------------------------------------------------------------


def test_over_the_cap_is_503_at_once_and_under_it_still_works(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    md = activator_slice("capped", port, max_held=2, hold_timeout_s=30)
    act.write_slices([md])
    act.wait_routes({f"{NS}/capped": port})
    with clients(2) as pool:
        held = [post_in_thread(pool, port, b"held-%d" % i) for i in range(2)]
        act.wait_held("capped", 2)
        begin = time.monotonic()
        over = request(port, "POST", "/infer", b"over")
        assert time.monotonic() - begin < 2.0, "a request over the cap was held"
        assert over.status == 503
        assert over.headers["retry-after"] == "5"
        assert over.headers["content-type"].startswith("application/json")
        error = over.error()
        assert f"{NS}/capped" in error
        assert "modelfleet.io/max-held-requests 2" in error
        assert not any(f.done() for f in held)
        backend = backends("r0")
        act.write_slices([md, replica_slice("capped", backend.port)])
        replies = [f.result(timeout=15) for f in held]
    assert [(r.status, r.body) for r in replies] == [
        (200, answer_bytes("r0", b"held-%d" % i)) for i in range(2)
    ]
    assert b"over" not in [s.body for s in backend.seen]
    assert act.outcome("capped", "rejected_cap") == 1
    assert act.outcome("capped", "proxied") == 2
    assert act.held("capped") == 0


def test_cap_of_all_modeldeployments_together(activator: Start) -> None:
    act = activator("--max-held-total", "1")
    a, b = free_port(), free_port()
    act.write_slices([activator_slice("a", a, hold_timeout_s=30),
                      activator_slice("b", b, hold_timeout_s=30)])  # fmt: skip
    act.wait_routes({f"{NS}/a": a, f"{NS}/b": b})
    with clients(1) as pool:
        held = post_in_thread(pool, a, b"x")
        act.wait_held("a", 1)
        over = request(b, "POST", "/", b"y")
        assert over.status == 503
        assert "--max-held-total 1" in over.error()
        assert over.headers["retry-after"] == "5"
        act.write_slices([])
        assert held.result(timeout=10).status == 503  # its slice went away


# --- 3. the hold timeout -------------------------------------------------------------------


def test_hold_timeout_is_504_naming_the_timeout_and_the_modeldeployment(
    activator: Start,
) -> None:
    act = activator()
    port = free_port()
    act.write_slices([activator_slice("sleepy", port, max_held=5, hold_timeout_s=1.5)])
    act.wait_routes({f"{NS}/sleepy": port})
    begin = time.monotonic()
    reply = request(port, "POST", "/v2/models/sleepy/infer", b"{}")
    waited = time.monotonic() - begin
    assert reply.status == 504, reply
    assert 1.4 <= waited < 6.0
    error = reply.error()
    assert f"ModelDeployment {NS}/sleepy" in error
    assert "1.5 s" in error
    assert "modelfleet.io/hold-timeout-seconds" in error
    assert act.outcome("sleepy", "timed_out") == 1
    assert act.held("sleepy") == 0


# --- 4. a client that leaves while held ----------------------------------------------------


def unsent(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that have not left it yet (Linux)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


@pytest.mark.parametrize(
    ("body_size", "reset"),
    [(10, False), (1 << 20, False), (8 << 20, True)],
    ids=["small-body-closed", "1MiB-body-closed", "8MiB-body-reset"],
)
def test_a_client_that_leaves_while_held_frees_its_place(
    activator: Start, backends: MakeBackend, body_size: int, reset: bool
) -> None:
    """With a big body the activator stops reading the held request's socket (the body
    waits in the kernel), and still sees the client close or reset it."""
    act = activator()
    port = free_port()
    md = activator_slice("one", port, max_held=1, hold_timeout_s=60)
    act.write_slices([md])
    act.wait_routes({f"{NS}/one": port})
    body = b"b" * body_size
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    sock.settimeout(1.0)
    with contextlib.suppress(TimeoutError):
        sock.sendall(body)  # 8 MiB: more than the activator and the kernel take while held
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:  # all of it sent: the close's FIN is not stuck behind unsent bytes
        wait_for(lambda: unsent(sock) == 0, 5, "the body to leave the client's socket")
    act.wait_held("one", 1)
    assert request(port, "POST", "/", b"x").status == 503  # the cap of 1 is taken
    sock.close()
    act.wait_held("one", 0)
    wait_for(lambda: act.outcome("one", "client_gone") == 1, 5, "client_gone counted")
    with clients(1) as pool:
        later = post_in_thread(pool, port, b"later")
        act.wait_held("one", 1)
        backend = backends("r0")
        act.write_slices([md, replica_slice("one", backend.port)])
        reply = later.result(timeout=10)
    assert (reply.status, reply.body) == (200, answer_bytes("r0", b"later"))
    assert [s.body for s in backend.seen] == [b"later"]


# --- 5. body limits ------------------------------------------------------------------------


def test_a_body_over_max_body_bytes_is_413_and_never_reaches_a_replica(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator("--max-body-bytes", "1000")
    port = free_port()
    backend = backends("r0")
    act.write_slices([activator_slice("small", port), replica_slice("small", backend.port)])
    act.wait_routes({f"{NS}/small": port})
    assert request(port, "POST", "/ok", b"a" * 1000).status == 200  # at the limit: passes

    declared = request(port, "POST", "/declared", b"d" * 1001)
    assert declared.status == 413
    assert "1001 bytes" in declared.error() and "--max-body-bytes" in declared.error()

    # chunked: no length to judge up front, counted while it streams
    sock = raw(port, b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(6):
        with contextlib.suppress(OSError):
            sock.sendall(b"190\r\n" + b"c" * 400 + b"\r\n")
            time.sleep(0.05)
    with contextlib.suppress(OSError):
        sock.sendall(b"0\r\n\r\n")
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"--max-body-bytes" in answer

    assert [s.path for s in backend.seen] == ["/ok"]
    assert act.outcome("small", "too_large") == 2
    assert request(port, "POST", "/after", b"fine").status == 200  # still serving
    assert [s.path for s in backend.seen] == ["/ok", "/after"]


def test_a_declared_body_over_the_limit_is_413_even_with_no_replica(activator: Start) -> None:
    act = activator("--max-body-bytes", "1000")
    port = free_port()
    act.write_slices([activator_slice("cold", port, hold_timeout_s=30)])
    act.wait_routes({f"{NS}/cold": port})
    begin = time.monotonic()
    reply = request(port, "POST", "/", b"x" * 5000)
    assert reply.status == 413
    assert time.monotonic() - begin < 2.0, "an oversized request was held first"
    assert act.held("cold") == 0


# --- 6. hostile clients --------------------------------------------------------------------


def test_slowloris_does_not_block_others_and_is_closed_by_the_idle_timeout(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator("--idle-timeout-seconds", "1.5")
    port = free_port()
    backend = backends("r0")
    act.write_slices([activator_slice("md", port), replica_slice("md", backend.port)])
    act.wait_routes({f"{NS}/md": port})
    trickles = [raw(port, b"POST /infer HTTP/1.1\r\nHost: x\r\n") for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    closed: dict[int, float] = {}
    begin = time.monotonic()

    def trickle(i: int, sock: socket.socket) -> None:
        """A header byte every 0.1 s, never the end of the headers."""
        try:
            while time.monotonic() - begin < 10:
                sock.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            closed[i] = time.monotonic() - begin

    threads = [threading.Thread(target=trickle, args=(i, s)) for i, s in enumerate(trickles)]
    for t in threads:
        t.start()
    try:
        # meanwhile others are served at once
        for i in range(5):
            t0 = time.monotonic()
            reply = request(port, "POST", f"/other-{i}", b"x")
            assert (reply.status, reply.body) == (200, answer_bytes("r0", b"x"))
            assert time.monotonic() - t0 < 1.0
        for sock in silent:
            assert closed_by_peer(sock, within=5.0) < 3.0
        for t in threads:
            t.join(timeout=8)
        assert sorted(closed) == list(range(20)), "a trickling connection stayed open"
        assert max(closed.values()) < 5.0
    finally:
        for sock in trickles + silent:
            sock.close()
    assert [s.path for s in backend.seen] == [f"/other-{i}" for i in range(5)]
    act.check_alive()


GARBAGE = {
    "binary": b"\x00\x01\x02 GARBAGE\r\n\r\n",
    "version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "huge-header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "300-headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(300))
    + b"\r\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
    b"\r\nhello",
    "length-and-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "bad-chunk": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n",
    "negative-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
}


def test_garbage_requests_get_4xx_and_the_process_lives(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    backend = backends("r0")
    act.write_slices([activator_slice("md", port), replica_slice("md", backend.port)])
    act.wait_routes({f"{NS}/md": port})
    for what, garbage in GARBAGE.items():
        sock = raw(port, garbage)
        answer = read_all(sock)
        sock.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None
        assert status is not None and 400 <= status < 500, (what, answer[:300])
        act.check_alive()
        assert request(port, "GET", f"/after-{what}").status == 200, what
    assert [s.path for s in backend.seen] == [f"/after-{w}" for w in GARBAGE]


def served(port: int, path: str) -> bool:
    try:
        return request(port, "GET", path, timeout=2).status == 200
    except OSError:
        return False


def test_many_connections_and_the_connection_cap(activator: Start, backends: MakeBackend) -> None:
    act = activator("--max-connections", "50")
    port = free_port()
    backend = backends("r0")
    act.write_slices([activator_slice("md", port), replica_slice("md", backend.port)])
    act.wait_routes({f"{NS}/md": port})
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(120)]
    try:
        # those over the cap are closed at once; the first 50 stay open
        for sock in socks[60:]:
            assert closed_by_peer(sock, within=3.0) < 3.0
        for sock in socks[:40]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        # the activator's own port is not behind that cap
        assert act.readyz()[0] == 200
    finally:
        for sock in socks:
            sock.close()
    # once they are gone, requests are served again, many at once
    # (the activator may not have seen all the closes yet: until then it resets new ones)
    wait_for(lambda: served(port, "/again"), 5, "a request served")
    with clients(16) as pool:
        futures = [post_in_thread(pool, port, b"%d" % i) for i in range(100)]
        replies = [f.result(timeout=30) for f in futures]
    assert [(r.status, r.body) for r in replies] == [
        (200, answer_bytes("r0", b"%d" % i)) for i in range(100)
    ]
    act.check_alive()


# --- 7. proxying ---------------------------------------------------------------------------


def test_a_replica_that_refuses_connections_is_passed_over(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    good = backends("good")
    dead = free_port()  # listed ready, nothing listening
    act.write_slices([activator_slice("md", port), replica_slice("md", dead),
                      replica_slice("md", good.port)])  # fmt: skip
    act.wait_routes({f"{NS}/md": port})
    for i in range(8):
        body = b"body-%d" % i
        reply = request(port, "POST", f"/r{i}", body)
        assert (reply.status, reply.body) == (200, answer_bytes("good", body)), reply
    # a streamed (chunked) body too: nothing of it was spent on the refused connection
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/chunked", body=iter([b"abc", b"def" * 1000]), encode_chunked=True)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, answer_bytes("good", b"abc" + b"def" * 1000))
    conn.close()
    assert len(good.seen) == 9
    assert act.outcome("md", "proxied") == 9
    assert act.outcome("md", "backend_error") == 0


def test_a_replica_that_fails_mid_answer_closes_the_clients_connection(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    cut = backends("cut", "cut")
    act.write_slices([activator_slice("md", port), replica_slice("md", cut.port)])
    act.wait_routes({f"{NS}/md": port})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    begin = time.monotonic()
    conn.request("POST", "/infer", body=b"payload")
    resp = conn.getresponse()
    assert resp.status == 200  # the answer had begun
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    assert time.monotonic() - begin < 8.0, "the client waited for the rest of the answer"
    conn.close()
    assert [s.body for s in cut.seen] == [b"payload"]
    wait_for(lambda: act.outcome("md", "backend_error") == 1, 5, "backend_error counted")
    assert act.outcome("md", "proxied") == 0


def test_hop_by_hop_headers_are_not_forwarded_and_via_is_added(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    port = free_port()
    backend = backends("r0", "chunked")
    act.write_slices([activator_slice("md", port), replica_slice("md", backend.port)])
    act.wait_routes({f"{NS}/md": port})
    body = [b"first,", b"second," * 500, b"third"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/v2/models/md/infer?x=1%202", skip_accept_encoding=True)
    for name, value in [
        ("Connection", "keep-alive, X-Foo"),
        ("X-Foo", "only-for-the-next-hop"),
        ("Keep-Alive", "timeout=300"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Transfer-Encoding", "chunked"),
        ("Via", "1.1 edge-lb"),
        ("Authorization", "Bearer end-to-end"),
        ("X-Request-Id", "abc-123"),
        ("Content-Type", "application/octet-stream"),
    ]:
        conn.putheader(name, value)
    conn.endheaders()
    for part in body:
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    answer = resp.read()
    conn.close()

    assert resp.status == 200
    assert answer == answer_bytes("r0", b"".join(body))  # de-chunked and chunked again intact
    [seen] = backend.seen
    assert seen.path == "/v2/models/md/infer?x=1%202"
    assert seen.body == b"".join(body)
    for hop in ("X-Foo", "Keep-Alive", "TE", "Proxy-Connection", "Proxy-Authorization"):
        assert seen.header(hop) == [], (hop, seen.headers)
    assert all("x-foo" not in v.lower() for v in seen.header("Connection")), seen.headers
    assert seen.header("Transfer-Encoding") in ([], ["chunked"])  # the activator's own framing
    assert seen.header("Via") == ["1.1 edge-lb, 1.1 modelfleet-activator"]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("Authorization") == ["Bearer end-to-end"]
    assert seen.header("X-Request-Id") == ["abc-123"]
    assert seen.header("Content-Type") == ["application/octet-stream"]

    got = {k.lower(): v for k, v in resp.getheaders()}
    assert "x-bar" not in got and "keep-alive" not in got, got  # the backend's hop headers
    assert "x-bar" not in got.get("connection", "").lower()
    assert got["via"] == "1.1 modelfleet-activator"
    assert got["x-backend"] == "r0"


# --- 8. the slices file --------------------------------------------------------------------


def test_malformed_slices_are_named_on_readyz_and_good_routes_still_work(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    good_port, shared = free_port(), free_port()
    backend = backends("r0")
    bad_port = activator_slice("bad-port", 1)
    bad_port["ports"] = [{"name": "http", "port": "abc"}]
    no_label = activator_slice("no-label", free_port())
    del no_label["metadata"]["labels"]["kubernetes.io/service-name"]
    no_port = activator_slice("no-port", free_port())
    no_port["ports"] = []
    bad_cap = activator_slice("bad-cap", free_port())
    bad_cap["metadata"]["annotations"]["modelfleet.io/max-held-requests"] = "lots"
    slices = [
        activator_slice("good", good_port),
        replica_slice("good", backend.port),
        bad_port,
        no_label,
        no_port,
        activator_slice("privileged", 80),
        activator_slice("on-metrics", act.metrics_port),
        activator_slice("first", shared),
        activator_slice("second", shared),
        bad_cap,
    ]
    act.write_slices(slices)
    doc = act.wait_routes(
        {
            f"{NS}/good": good_port,
            f"{NS}/first": shared,
            f"{NS}/bad-cap": bad_cap["ports"][0]["port"],
        }
    )
    problems = doc["problems"]

    def named(*words: str) -> bool:
        return any(all(w in p for w in words) for p in problems)

    assert named(f"EndpointSlice {NS}/bad-port", "'abc'"), problems
    assert named(f"EndpointSlice {NS}/no-label", "kubernetes.io/service-name"), problems
    assert named(f"EndpointSlice {NS}/no-port", "no port named 'http'"), problems
    assert named(f"EndpointSlice {NS}/privileged", "port 80 is refused"), problems
    assert named(f"EndpointSlice {NS}/on-metrics", f"port {act.metrics_port} is refused"), problems
    assert named(f"EndpointSlice {NS}/second", f"port {shared}", f"{NS}/first"), problems
    assert named(f"EndpointSlice {NS}/bad-cap", "'lots'", "using 100"), problems
    assert len(problems) == 7, problems
    assert act.metric("modelfleet_activator_slice_problems") == 7
    assert act.readyz()[0] == 200
    reply = request(good_port, "POST", "/", b"hi")
    assert (reply.status, reply.body) == (200, answer_bytes("r0", b"hi"))
    assert act.metric("modelfleet_activator_listener_up", namespace=NS, name="good",
                      port=str(good_port)) == 1  # fmt: skip

    # a file that cannot be parsed: the last good table keeps serving, /readyz says why
    act.write_slices("- [unclosed\n")
    wait_for(lambda: act.readyz()[1]["source_problem"], 5, "the file's problem on /readyz")
    assert request(good_port, "POST", "/", b"still").status == 200


def test_a_removed_slice_closes_its_listener_and_answers_its_held_requests(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator()
    gone_port, kept_port = free_port(), free_port()
    backend = backends("r0")
    kept = [activator_slice("kept", kept_port), replica_slice("kept", backend.port)]
    act.write_slices([activator_slice("gone", gone_port, hold_timeout_s=30), *kept])
    act.wait_routes({f"{NS}/gone": gone_port, f"{NS}/kept": kept_port})
    with clients(1) as pool:
        held = post_in_thread(pool, gone_port, b"waiting")
        act.wait_held("gone", 1)
        act.write_slices(kept)
        reply = held.result(timeout=10)
    assert reply.status == 503
    assert f"{NS}/gone" in reply.error() and "deleted" in reply.error()
    wait_for(lambda: not connectable(gone_port), 5, f"port {gone_port} closed")
    assert act.readyz()[1]["routes"] == {f"{NS}/kept": kept_port}
    metrics = act.own("/metrics").body.decode()
    assert 'name="gone"' not in metrics  # its series are dropped
    assert request(kept_port, "GET", "/").status == 200
    # and it comes back with its slice
    act.write_slices([activator_slice("gone", gone_port), *kept])
    act.wait_routes({f"{NS}/gone": gone_port, f"{NS}/kept": kept_port})


# --- 9. SIGTERM ----------------------------------------------------------------------------


def test_sigterm_drain_still_proxies_held_requests_and_exits_0(
    activator: Start, backends: MakeBackend
) -> None:
    act = activator("--drain-seconds", "3")
    port = free_port()
    md = activator_slice("md", port, hold_timeout_s=30)
    act.write_slices([md])
    act.wait_routes({f"{NS}/md": port})
    with clients(2) as pool:
        held = post_in_thread(pool, port, b"held over the drain")
        act.wait_held("md", 1)
        act.terminate()
        signalled = time.monotonic()
        _status, doc = wait_for(
            lambda: (r := act.readyz())[0] == 503 and r, 3, "/readyz 503 while draining"
        )
        assert doc["draining"] is True and doc["held"] == 1
        backend = backends("r0", "gate")
        act.write_slices([md, replica_slice("md", backend.port)])  # a replica comes up
        wait_for(lambda: backend.started, 5, "the held request to reach the replica")
        later = post_in_thread(pool, port, b"sent while draining")
        wait_for(lambda: backend.started == 2, 5, "a new request proxied while draining")
        time.sleep(0.3)
        assert not held.done()  # the replica has not answered yet
        backend.gate.set()
        assert (held.result(10).status, held.result().body) == (
            200, answer_bytes("r0", b"held over the drain"))  # fmt: skip
        assert later.result(10).body == answer_bytes("r0", b"sent while draining")
        elapsed = time.monotonic() - signalled
        assert elapsed < 2.5, "too slow to check the listener stays open"
        time.sleep(2.5 - elapsed)
        assert connectable(port), "the listener closed before min(5 s, --drain-seconds)"
    assert act.wait_exit(timeout=10) == 0
    assert time.monotonic() - signalled >= 2.9
    assert not connectable(port)


def test_sigterm_drain_answers_requests_still_held_503(activator: Start) -> None:
    act = activator("--drain-seconds", "1.5")
    port = free_port()
    act.write_slices([activator_slice("md", port, hold_timeout_s=30)])
    act.wait_routes({f"{NS}/md": port})
    with clients(3) as pool:
        held = [post_in_thread(pool, port, b"%d" % i) for i in range(3)]
        act.wait_held("md", 3)
        act.terminate()
        signalled = time.monotonic()
        assert wait_for(lambda: act.readyz()[0] == 503, 3, "/readyz 503 while draining")
        replies = [f.result(timeout=10) for f in held]
    waited = time.monotonic() - signalled
    for reply in replies:
        assert reply.status == 503, reply
        assert "shutting down" in reply.error()
    assert 1.3 <= waited < 6
    assert act.wait_exit(timeout=10) == 0
    assert "stopped" in act.log
