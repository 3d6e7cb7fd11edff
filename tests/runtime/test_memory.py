"""Request bodies do not stay resident after their request: rounds of many-megabyte bodies
leave the process's RSS near where the first round left it (each connection's parser sits in
a reference cycle with llhttp; a body it kept waited for the cyclic GC, and RSS climbed by
~200 MiB a round under 24 clients)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Runtime
from runtime_models import build_slow_dir

pytestmark = pytest.mark.runtime

BODY_BYTES = 4 << 20
CLIENTS = 16
PER_CLIENT = 3
ROUNDS = 4
# one round moves 16 x 3 x 4 MiB = 192 MiB of bodies; before the fix RSS rose 190-380 MiB
# from the first round to the worst later one, after it 0-75 MiB
GROWTH_LIMIT_MIB = 160


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS in /proc status")


def _big_doc() -> bytes:
    doc = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    return doc + b" " * (BODY_BYTES - len(doc))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Runtime]:
    """A fresh process per test: RSS compared within one test's rounds."""
    d = tmp_path / "slow"
    build_slow_dir(d, delay_s=0.02)
    rt = Runtime(d, "--max-batch-size", "16", "--max-queue-size", "512")
    try:
        yield rt.wait_ready()
    finally:
        rt.stop()


def _rounds(server: Runtime, client: Callable[[list[int]], None]) -> list[int]:
    """RSS after each round of CLIENTS threads running ``client``; statuses checked."""
    rss = []
    for _ in range(ROUNDS):
        statuses: list[int] = []
        threads = [threading.Thread(target=client, args=(statuses,)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(statuses) == CLIENTS * PER_CLIENT, statuses
        rss.append(_rss_mib(server.proc.pid))
    return rss


def _assert_flat(rss: list[int]) -> None:
    worst = max(rss[1:])
    assert worst - rss[0] <= GROWTH_LIMIT_MIB, f"RSS per round {rss} MiB"


@pytest.mark.parametrize("model", ["nosuch", "slow"])
def test_big_bodies_do_not_accumulate(server: Runtime, model: str) -> None:
    body = _big_doc()
    path = f"/v2/models/{model}/infer"
    allowed = {404} if model == "nosuch" else {200, 503}

    def client(statuses: list[int]) -> None:
        for _ in range(PER_CLIENT):
            status = server.request("POST", path, body, timeout=120)[0]
            assert status in allowed
            statuses.append(status)

    _assert_flat(_rounds(server, client))


def test_bodies_cut_off_midway_are_released(server: Runtime) -> None:
    head = (
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()
    part = b" " * (BODY_BYTES * 3 // 4)

    def client(statuses: list[int]) -> None:
        for _ in range(PER_CLIENT):
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
                s.sendall(head + part)
                s.shutdown(socket.SHUT_WR)
                answer = s.recv(65536)  # the server closes: the body never completes
            statuses.append(len(answer))

    _assert_flat(_rounds(server, client))
    assert server.request("GET", "/v2/health/ready")[0] == 200
