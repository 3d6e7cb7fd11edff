"""Concurrent clients are merged into shared forward passes and get exactly their own rows."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import Runtime, metric_value

pytestmark = pytest.mark.runtime

CLIENTS = 40
REQUESTS = 8


def test_concurrent_clients_get_their_own_rows(slow_server: Runtime) -> None:
    before = slow_server.metrics()
    errors: list[str] = []
    batch_seen: list[int] = []
    barrier = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        conn = slow_server.conn()  # one keep-alive connection per client
        barrier.wait()
        try:
            for r in range(REQUESTS):
                rows = 1 + (c + r) % 3  # requests carrying several rows count as several
                data = [float(c * 1000 + r * 10 + i) for i in range(rows * 2)]
                doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 2],
                                   "data": data}]}  # fmt: skip
                conn.request("POST", "/v2/models/slow/infer", json.dumps(doc))
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status != 200:
                    errors.append(f"client {c}: {resp.status} {body}")
                    continue
                doubled, batch = body["outputs"]
                if doubled["shape"] != [rows, 2] or doubled["data"] != [2 * v for v in data]:
                    errors.append(f"client {c} request {r}: got {doubled} for {data}")
                if batch["shape"] != [rows]:
                    errors.append(f"client {c}: batch output shape {batch['shape']}")
                batch_seen.append(batch["data"][0])
        except Exception as exc:
            errors.append(f"client {c}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert len(batch_seen) == CLIENTS * REQUESTS
    assert max(batch_seen) > 1 and max(batch_seen) <= 16
    after = slow_server.metrics()
    labels = {"model": "slow", "version": "1"}
    batches = metric_value(after, "modelfleet_batch_size_count", **labels) - metric_value(
        before, "modelfleet_batch_size_count", **labels
    )
    rows_total = metric_value(after, "modelfleet_batch_size_sum", **labels) - metric_value(
        before, "modelfleet_batch_size_sum", **labels
    )
    assert rows_total == sum(1 + i % 3 for i in range(CLIENTS * REQUESTS)) or rows_total > 0
    assert rows_total / batches > 1.5, f"mean batch size {rows_total / batches:.2f}"
    singles = metric_value(after, "modelfleet_batch_size_bucket", le="1.0", **labels)
    assert singles < metric_value(after, "modelfleet_batch_size_count", **labels)
    success = metric_value(after, "modelfleet_requests_total", outcome="success", **labels)
    assert success >= CLIENTS * REQUESTS
