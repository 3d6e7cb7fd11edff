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
        self.activator: dict[str, dict[tuple[str, str], float] | None] = {}

    async def held(self, address: str) -> dict[tuple[str, str], float] | None:
        return self.activator.get(address)

    async def many(self, addresses: Iterable[str]) -> Mapping[str, PodMetrics | None]:
        wanted = list(addresses)
        self.asked.append(wanted)
        return {a: self.values.get(a) for a in wanted}

    async def close(self) -> None:
        return None


Setup = tuple[Autoscaler, FakeScraper, list[int], list[float]]


def setup(
    body: dict[str, Any],
    pods: list[dict[str, Any]],
    activators: list[str] | None = None,
    routed: bool = True,
) -> Setup:
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
        scraper=scraper,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        activators=lambda: activators,
        routed=lambda key: routed,
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


# --- scale to zero ----------------------------------------------------------------------------

ACT = "10.1.0.5:9090"


def test_requests_held_at_zero_bring_one_replica_at_the_next_tick() -> None:
    scaler, scraper, writes, clock = setup(md(replicas=0, minReplicas=0), [], [ACT])
    scraper.activator[ACT] = {}
    for _ in range(3):
        asyncio.run(scaler.tick())
        clock[0] += 1
    assert writes == []
    report = scaler.report(KEY)
    assert report is not None and report.active and report.reason == "ScaledToZero"
    scraper.activator[ACT] = {KEY: 1.0, ("other", "m"): 9.0}  # another MD's are not ours
    asyncio.run(scaler.tick())
    assert writes == [1]
    report = scaler.report(KEY)
    assert report is not None and report.last_decision is not None
    assert "1 held by the activator" in report.last_decision


def test_idle_scales_to_zero_only_while_the_activator_answers() -> None:
    body = md(replicas=1, minReplicas=0, scaleDownStabilizationSeconds=0)
    for activators, answer, routed, want in (
        ([ACT], {}, True, [0]),
        (None, {}, True, []),  # no activator configured
        ([], {}, True, []),  # no activator pod ready
        ([ACT], None, True, []),  # its /metrics did not answer
        ([ACT], {}, False, []),  # our slice is not there (yet)
    ):
        scaler, scraper, writes, clock = setup(body, [pod("a")], activators, routed)
        scraper.values["10.0.0.1:8080"] = m(inflight=0)
        scraper.activator[ACT] = answer
        for _ in range(70):  # a whole stable window of nothing in flight
            asyncio.run(scaler.tick())
            clock[0] += 1
            if writes:
                break
        assert writes == want, (activators, answer, routed)
        report = scaler.report(KEY)
        assert report is not None
        if want:  # the tick that wrote 0 says so (no Ready=False "spec.replicas is 0" between)
            assert (report.reason, report.desired) == ("ScaledToZero", 0)
        else:
            assert report.desired == 1


def test_at_zero_without_an_activator_one_replica_comes_back() -> None:
    scaler, _scraper, writes, _ = setup(md(replicas=0, minReplicas=0), [], [])
    asyncio.run(scaler.tick())
    assert writes == [1]
    report = scaler.report(KEY)
    assert report is not None and report.last_decision is not None
    assert "keeping 1: no activator pod is ready" in report.last_decision
