"""A full queue answers at once (503, or 429 when configured) with Retry-After; requests whose
deadline passes while queued are answered 504 without reaching the model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Runtime, metric_value
from runtime_models import build_slow_dir

pytestmark = pytest.mark.runtime

DOC = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
LABELS = {"model": "slow", "version": "1"}


@pytest.fixture(scope="module", params=[503, 429])
def busy_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """0.4 s per forward pass, no batching, two requests may wait."""
    d: Path = tmp_path_factory.mktemp(f"busy{request.param}") / "slow"
    build_slow_dir(d, delay_s=0.4)
    server = Runtime(d, "--max-batch-size", "1", "--max-queue-size", "2",
                     "--overload-status", str(request.param))  # fmt: skip
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def fire(server: Runtime, n: int, headers: dict[str, str] | None = None,
         body: str = DOC) -> list[tuple[int, dict[str, str], float]]:  # fmt: skip
    """n concurrent requests; (status, headers, seconds) each, in completion order."""
    out: list[tuple[int, dict[str, str], float]] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.monotonic()
        status, hdrs, _ = server.request("POST", "/v2/models/slow/infer", body.encode(), headers)
        with lock:
            out.append((status, hdrs, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    return out


def test_full_queue_is_refused_at_once_with_retry_after(busy_server: Runtime) -> None:
    overload = int(busy_server.proc.args[busy_server.proc.args.index("--overload-status") + 1])
    results = fire(busy_server, 8)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == overload]
    assert len(ok) + len(refused) == 8, [r[0] for r in results]
    assert 3 <= len(ok) <= 4  # one computing, two waiting (maybe one more as the first ends)
    for _, headers, seconds in refused:
        assert headers["retry-after"] == "1"
        assert seconds < 0.3  # refused at once, not after waiting for a slot
    # A full queue counts as "overloaded", whichever status code answers it.
    assert metric_value(busy_server.metrics(), "modelfleet_requests_total",
                        outcome="overloaded", **LABELS) >= len(refused)  # fmt: skip


def test_a_full_queue_refuses_before_decoding_the_body(busy_server: Runtime) -> None:
    # Refusing must stay cheap under overload: the queue check comes before the JSON
    # decode, so even a malformed body is answered with the overload status, not a 400.
    overload = int(busy_server.proc.args[busy_server.proc.args.index("--overload-status") + 1])
    filler = threading.Thread(target=fire, args=(busy_server, 3))  # 1 computing + 2 queued
    filler.start()
    time.sleep(0.15)
    status, headers, _ = busy_server.request("POST", "/v2/models/slow/infer", b"{not json")
    filler.join(60)
    assert status == overload and headers["retry-after"] == "1"


@pytest.mark.parametrize("how", ["header", "parameter"])
def test_deadline_passing_in_queue_is_504_without_compute(busy_server: Runtime, how: str) -> None:
    before = metric_value(busy_server.metrics(), "modelfleet_batch_size_count", **LABELS)
    blocker = threading.Thread(target=fire, args=(busy_server, 1))
    blocker.start()
    time.sleep(0.1)  # the blocker is in the model now
    if how == "header":
        headers, body = {"Modelfleet-Timeout-Ms": "100"}, DOC
    else:
        doc = json.loads(DOC)
        doc["parameters"] = {"timeout": 100_000}  # microseconds, as in Triton
        headers, body = {}, json.dumps(doc)
    started = time.monotonic()
    status, _, raw = busy_server.request("POST", "/v2/models/slow/infer", body.encode(), headers)
    elapsed = time.monotonic() - started
    blocker.join(10)
    assert status == 504, raw
    assert "deadline" in json.loads(raw)["error"]
    assert elapsed < 0.3  # answered when the deadline passed, not when the model freed up
    time.sleep(0.5)
    after = metric_value(busy_server.metrics(), "modelfleet_batch_size_count", **LABELS)
    assert after - before == 1  # only the blocker reached the model
    assert metric_value(busy_server.metrics(), "modelfleet_requests_total",
                        outcome="deadline_exceeded", **LABELS) >= 1  # fmt: skip
