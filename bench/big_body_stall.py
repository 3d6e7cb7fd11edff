"""How long one connection's big JSON body stalls everyone else (issue 10).

    .venv/bin/python bench/big_body_stall.py [--gzip] [--seconds 8]

Builds the payload suite's image model (bench/runtime.py), serves it pinned to core 0 with
``--threads 1``, then for ``--seconds`` one connection posts 8-image JSON bodies (7.7 MB, or
gzip-compressed) in a loop while another pings ``/v2/health/live`` every 5 ms; prints the
pings' p50/p99/max latency and the load average. Set PYTHONPATH to another checkout's
``runtime`` to measure that code instead. Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime import SERVER_CPU, Server, build_payload_models, loadavg


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gzip", action="store_true", help="send the body gzip-compressed")
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelfleet-stall-") as tmp:
        model_dir = build_payload_models(Path(tmp))["image"][0]
        doc = json.loads((model_dir / "request.json").read_text())
        doc["inputs"][0]["shape"][0] = 8
        doc["inputs"][0]["data"] = doc["inputs"][0]["data"] * 8
        body = json.dumps(doc).encode()
        headers = {}
        if a.gzip:
            body, headers = gzip.compress(body, 9), {"Content-Encoding": "gzip"}
        server = Server(model_dir, 1, 32, cpu=SERVER_CPU)
        try:
            stop = time.monotonic() + a.seconds
            pings: list[float] = []

            def pinger() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    conn.request("GET", "/v2/health/live")
                    conn.getresponse().read()
                    pings.append(time.monotonic() - t0)
                    time.sleep(0.005)

            def sender() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                while time.monotonic() < stop:
                    conn.request("POST", "/v2/models/image/infer", body, headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"infer answered {resp.status}")

            threads = [threading.Thread(target=pinger), threading.Thread(target=sender)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            server.stop()
    pings.sort()
    print(f"{'gzip' if a.gzip else 'json'} body {len(body)} bytes: {len(pings)} pings, "
          f"p50 {pings[len(pings) // 2] * 1000:.1f} ms, p99 "
          f"{pings[int(len(pings) * 0.99)] * 1000:.1f} ms, max {pings[-1] * 1000:.1f} ms; "
          f"load average {loadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
