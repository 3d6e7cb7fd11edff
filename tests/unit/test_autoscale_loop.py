"""The builtin loop with a fake scraper and clock: rps from counters, the written value as
current until the watch shows it, engines other than builtin ignored, pod addresses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from modelfleet_operator.autoscale.loop import (
    SIMULATED_METRICS_ANNOTATION,
    Autoscaler,
    pod_addresses,
    simulated_addresses,
)
from modelfleet_operator.autoscale.scrape import PodMetrics, parse_metrics

KEY = ("ml", "m")


def md(replicas: int = 1, **auto: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {
            "model": {"uri": "file:///m"},
            "replicas": replicas,
            "autoscaling": {"maxReplicas": 10, "target": 10, **auto},
        },
    }


def pod(name: str, ip: str = "10.0.0.1", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class FakeScraper:
    def __init__(self) -> None:
        self.values: dict[str, PodMetrics | None] = {}
        self.asked: list[list[str]] = []

    async def many(self, addresses: Iterable[str]) -> Mapping[str, PodMetrics | None]:
        wanted = list(addresses)
        self.asked.append(wanted)
        return {a: self.values.get(a) for a in wanted}

    async def close(self) -> None:
        return None


Setup = tuple[Autoscaler, FakeScraper, list[int], list[float]]


def setup(body: dict[str, Any], pods: list[dict[str, Any]]) -> Setup:
    mds = {KEY: [body]}
    writes: list[int] = []
    clock = [0.0]
    scraper = FakeScraper()

    async def write(namespace: str, name: str, replicas: int) -> None:
        writes.append(replicas)

    scaler = Autoscaler(
        mds,
        {KEY: pods},
        write,
        scraper=scraper,
        clock=lambda: clock[0],  # type: ignore[arg-type]
    )
    return scaler, scraper, writes, clock


def m(inflight: float = 0, requests: float = 0) -> PodMetrics:
    return PodMetrics(inflight=inflight, queued=0, requests=requests, ready=True)


def test_rps_is_the_rate_of_the_requests_counter() -> None:
    scaler, scraper, writes, clock = setup(md(metric="rps"), [pod("a")])
    for total in (0, 50, 100):  # 50 requests per second at target 10: 5 pods
        scraper.values["10.0.0.1:8080"] = m(requests=total)
        asyncio.run(scaler.tick())
        clock[0] += 1
    assert writes == [5]
    report = scaler.report(KEY)
    assert report is not None and report.last_decision is not None
    assert report.last_decision.startswith("1 -> 5: 50 req/s over 1 ready")


def test_the_written_value_is_current_until_the_watch_shows_it() -> None:
    scaler, scraper, writes, clock = setup(md(), [pod("a")])
    scraper.values["10.0.0.1:8080"] = m(inflight=40)
    for _ in range(3):  # the index still says 1 replica: no second write of the same 4
        asyncio.run(scaler.tick())
        clock[0] += 1
    assert writes == [4]


def test_only_ready_pods_are_scraped_and_other_engines_are_left_alone() -> None:
    scaler, scraper, _, _ = setup(md(), [pod("a"), pod("b", "10.0.0.2", ready=False)])
    asyncio.run(scaler.tick())
    assert scraper.asked == [["10.0.0.1:8080"]]
    report = scaler.report(KEY)
    assert report is not None and report.reason == "FailedGetPodsMetric"  # a answered nothing
    scaler, scraper, _, _ = setup(md(engine="hpa"), [pod("a")])
    asyncio.run(scaler.tick())
    assert scraper.asked == [] and scaler.report(KEY) is None


def test_pod_addresses_and_the_simulated_ones() -> None:
    pods = [pod("b", "10.0.0.2"), pod("a"), {"metadata": {"name": "c"}, "status": {}}]
    assert pod_addresses(md(), pods, 8080) == {
        "b": "10.0.0.2:8080",
        "a": "10.0.0.1:8080",
        "c": None,
    }
    body = md()
    body["metadata"]["annotations"] = {SIMULATED_METRICS_ANNOTATION: "127.0.0.1:1 127.0.0.1:2"}
    assert simulated_addresses(body, pods, 8080) == {
        "a": "127.0.0.1:1",
        "b": "127.0.0.1:2",
        "c": None,
    }
    assert simulated_addresses(md(), pods, 8080) == pod_addresses(md(), pods, 8080)


def test_parse_metrics_reads_the_runtime_exposition() -> None:
    text = (
        "# TYPE modelfleet_inflight_requests gauge\n"
        'modelfleet_inflight_requests{model="m",version="1"} 7.0\n'
        "# TYPE modelfleet_queue_depth gauge\n"
        'modelfleet_queue_depth{model="m",version="1"} 3.0\n'
        "# TYPE modelfleet_requests_total counter\n"
        'modelfleet_requests_total{model="m",version="1",outcome="success"} 40.0\n'
        'modelfleet_requests_total{model="m",version="1",outcome="overloaded"} 2.0\n'
        "# TYPE modelfleet_model_ready gauge\n"
        'modelfleet_model_ready{model="m",version="1"} 1.0\n'
    )
    assert parse_metrics(text) == PodMetrics(inflight=7, queued=3, requests=42, ready=True)
