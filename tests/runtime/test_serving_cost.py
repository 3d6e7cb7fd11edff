"""The idle and energy metrics of a real runtime process on CPU: no NVML figures and
``energy_source="none"``, no accelerators, and idle seconds that follow a scripted traffic
pattern (idle, then kept busy by clients, then idle again)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
from conftest import Runtime, metric_value

pytestmark = pytest.mark.runtime

DOC = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


def idle_seconds(server: Runtime) -> float:
    return metric_value(server.metrics(), "modelfleet_idle_seconds_total")


def test_idle_seconds_follow_traffic_and_cpu_has_no_energy_figures(slow_dir: Path) -> None:
    # One row per forward pass of 20 ms: four clients in a loop keep a request in flight.
    server = Runtime(slow_dir, "--max-batch-size", "1").wait_ready()
    try:
        text = server.metrics()
        assert 'modelfleet_energy_source_info{energy_source="none"' in text
        assert metric_value(text, "modelfleet_accelerators") == 0
        for absent in ("modelfleet_accelerator_energy_joules", "modelfleet_accelerator_idle",
                       "modelfleet_energy_joules_per_1000"):  # fmt: skip
            assert absent not in text, absent

        start = idle_seconds(server)
        time.sleep(2.0)
        quiet = idle_seconds(server) - start
        assert 1.7 < quiet < 2.6, quiet  # scrapes themselves are not inference

        def client(until: float) -> int:
            answered = 0
            while time.monotonic() < until:
                assert server.infer("slow", DOC)[0] == 200
                answered += 1
            return answered

        before = idle_seconds(server)
        until = time.monotonic() + 2.0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answered = sum(pool.map(client, [until] * 4))
        busy = idle_seconds(server) - before
        assert answered > 20
        assert busy < 0.5, f"{busy:.2f} s idle while 4 clients kept it busy"

        before = idle_seconds(server)
        time.sleep(1.0)
        assert 0.8 < idle_seconds(server) - before < 1.6
        last_hour = metric_value(server.metrics(), "modelfleet_idle_seconds_last_hour")
        assert quiet + 0.8 < last_hour < quiet + busy + 3.0 + 0.5
    finally:
        server.stop()
