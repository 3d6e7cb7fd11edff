"""The builtin autoscaler against real runtime processes on 127.0.0.1: the shared scraper
reads their /metrics with prometheus_client's parser, and the loop (with an injected address
resolver in place of pod IPs, and the /scale write recorded) scales up under a load step,
holds while a pod does not answer, and says why."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Runtime, free_port
from modelfleet_operator.autoscale.loop import Autoscaler
from modelfleet_operator.autoscale.scrape import Scraper
from runtime_models import build_slow_dir

pytestmark = pytest.mark.runtime
DOC = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
KEY = ("ml", "slow")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """0.2 s per forward pass, no batching: in-flight requests pile up under load."""
    d: Path = tmp_path_factory.mktemp("autoscale") / "slow"
    build_slow_dir(d, delay_s=0.2)
    rt = Runtime(d, "--max-batch-size", "1", "--max-queue-size", "64")
    try:
        yield rt.wait_ready()
    finally:
        rt.stop()


def md(replicas: int = 1, target: float = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "slow", "namespace": "ml", "uid": "u"},
        "spec": {
            "model": {"uri": "file:///m", "name": "slow"},
            "replicas": replicas,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "target": target},
        },
    }


def pod(name: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class Load:
    """``clients`` threads each sending one request after another until stopped."""

    def __init__(self, server: Runtime, clients: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(server,)) for _ in range(clients)]

    def _run(self, server: Runtime) -> None:
        while not self.stop.is_set():
            server.request("POST", "/v2/models/slow/infer", DOC.encode(), timeout=30)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_scraper_reads_the_runtime_gauges(server: Runtime) -> None:
    async def go() -> Any:
        scraper = Scraper(timeout_s=2)
        try:
            idle = await scraper.one(f"127.0.0.1:{server.port}")
            with Load(server, 6):
                await asyncio.sleep(1.0)
                busy = await scraper.one(f"127.0.0.1:{server.port}")
            dead = await scraper.many([f"127.0.0.1:{free_port()}"])
            return idle, busy, dead
        finally:
            await scraper.close()

    idle, busy, dead = asyncio.run(go())
    assert idle is not None and idle.ready and idle.inflight == 0
    assert busy is not None and busy.inflight >= 3 and busy.queued >= 1, busy
    assert busy.requests > idle.requests
    assert list(dead.values()) == [None]


def run_loop(server: Runtime, pods: list[dict[str, Any]], seconds: float, clients: int,
             dead: set[str] = frozenset()) -> tuple[Autoscaler, list[tuple[float, int]], float]:  # type: ignore[assignment]  # fmt: skip
    """Tick the autoscaler every 0.5 s for ``seconds`` with a load of ``clients`` started
    after 2 s; returns it, the /scale writes (seconds after the load started, replicas),
    and when the load started."""
    mds = {KEY: [md()]}
    writes: list[tuple[float, int]] = []
    started = [0.0]
    dead_port = free_port()

    async def write_scale(namespace: str, name: str, replicas: int) -> None:
        writes.append((time.monotonic() - started[0], replicas))
        mds[KEY] = [md(replicas)]

    def resolve(md: Any, pods: Any, port: int) -> dict[str, str | None]:
        return {
            p["metadata"][
                "name"
            ]: f"127.0.0.1:{dead_port if p['metadata']['name'] in dead else server.port}"
            for p in pods
        }

    async def go() -> Autoscaler:
        scaler = Autoscaler(
            mds, {KEY: pods}, write_scale, resolver=resolve, scraper=Scraper(timeout_s=1)
        )
        try:
            end = time.monotonic() + seconds
            load: Load | None = None
            t0 = time.monotonic()
            while time.monotonic() < end:
                if load is None and time.monotonic() - t0 >= 2:
                    load = Load(server, clients).__enter__()
                    started[0] = time.monotonic()
                await scaler.tick()
                await asyncio.sleep(0.5)
            if load is not None:
                load.__exit__()
            return scaler
        finally:
            await scaler.close()

    scaler = asyncio.run(go())
    return scaler, writes, started[0]


def test_a_load_step_is_scaled_up_within_seconds(server: Runtime) -> None:
    scaler, writes, _ = run_loop(server, [pod("slow-0")], seconds=10, clients=8)
    assert writes, "no /scale write under 8 concurrent clients at target 2"
    latency, replicas = writes[0]
    # 8 clients, one at a time each: ~8 in flight on one pod at target 2 -> ~4 pods.
    assert replicas >= 3, writes
    report = scaler.report(KEY)
    assert report is not None and report.active and report.reason == "ValidMetricFound"
    assert report.last_decision is not None and "in flight" in report.last_decision
    load = Path("/proc/loadavg").read_text().strip()
    print(f"\nbuiltin decision latency after the load step: {latency:.2f}s -> {replicas} "
          f"replicas ({report.last_decision}); loadavg {load}")  # fmt: skip


def test_a_pod_that_does_not_answer_holds_scale_down_and_is_reported(server: Runtime) -> None:
    pods = [pod("slow-0"), pod("slow-1")]
    scaler, writes, _ = run_loop(server, pods, seconds=3, clients=0, dead={"slow-1"})
    assert writes == []  # 1 replica asked; nothing to add, nothing may go
    report = scaler.report(KEY)
    assert report is not None and report.active
    assert "1 did not answer" in report.message
    scaler, _, _ = run_loop(server, [pod("slow-1")], seconds=1, clients=0, dead={"slow-1"})
    report = scaler.report(KEY)
    assert report is not None and not report.active and report.reason == "FailedGetPodsMetric"
