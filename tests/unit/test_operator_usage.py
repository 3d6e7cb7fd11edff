"""status.usage: the ready pods' idle GPU-hours added up (a silent pod is missing, never
zero), read from the runtime's own /metrics text, refreshed by the watch, and shown only
for ModelDeployments that request GPUs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modelfleet_operator.autoscale.scrape import parse_usage
from modelfleet_operator.spec import parse_spec
from modelfleet_operator.status import compute_status
from modelfleet_operator.usage import PodUsage, UsageReport, summarize, usage_status
from modelfleet_operator.usagewatch import UsageWatch
from modelfleet_runtime.energy import CostCollector, IdleClock
from operator_samples import md
from prometheus_client import CollectorRegistry, generate_latest
from test_operator_status import observe


def runtime_metrics(idle_s: float, accelerators: int) -> str:
    """What a runtime serves: its own collector on a scripted clock."""
    t = [0.0]
    clock = IdleClock(lambda: t[0])
    clock.serve()
    t[0] += idle_s
    registry = CollectorRegistry()
    registry.register(
        CostCollector(
            {"model": "m", "version": "1"},
            clock=clock,
            accelerators=accelerators,
            energy=None,
            inferences=lambda: 0,
            now=lambda: t[0],
        )
    )
    return generate_latest(registry).decode()


def test_parse_reads_the_runtimes_own_text() -> None:
    assert parse_usage(runtime_metrics(900, 2)) == PodUsage(900, 2, "none")
    assert parse_usage("# nothing of ours\nother_metric 1\n") == PodUsage(None, 0, None)
    wild = "modelfleet_idle_seconds_last_hour NaN\nmodelfleet_accelerators 1e30\n"
    assert parse_usage(wild) == PodUsage(0.0, 0, None)


def test_summary_counts_gpus_times_idle_hours_and_names_silent_pods() -> None:
    r = summarize([PodUsage(1800, 2, "nvml"), PodUsage(3600, 1, "nvml"), None])
    assert r.idle_gpu_hours == pytest.approx(2.0)  # 0.5 h x 2 + 1 h x 1
    assert (r.gpus, r.reporting, r.ready, r.energy_source) == (3, 2, 3, "nvml")
    status = usage_status(r, None)
    assert status["idleGPUHoursLastHour"] == "2.00"
    assert "1 of 3 ready pods did not report" in status["message"]
    nobody = summarize([None, None])
    assert nobody.idle_gpu_hours is None  # unknown, not zero
    assert "idleGPUHoursLastHour" not in usage_status(nobody, None)
    assert usage_status(summarize([]), None)["message"].startswith("no ready pod")


def test_status_shows_usage_only_with_gpus_and_keeps_it_until_the_first_scrape() -> None:
    gpu_spec = parse_spec(md()["spec"], name="resnet")
    report = summarize([PodUsage(600, 1, "none")])
    status, _ = compute_status(observe(spec=gpu_spec, usage=report), None, "t")
    assert status["usage"] == {"gpus": 1, "reportingPods": 1, "idleGPUHoursLastHour": "0.17",
                               "energySource": "none"}  # fmt: skip
    # a restarted operator has not scraped yet: the figure stays
    again, _ = compute_status(observe(spec=gpu_spec, usage=None), status, "t")
    assert again["usage"] == status["usage"]
    cpu = md({"runtime": {"device": "cpu"}})
    del cpu["spec"]["gpu"]
    cpu_spec = parse_spec(cpu["spec"], name="resnet")
    gone, _ = compute_status(observe(spec=cpu_spec, usage=report), status, "t")
    assert gone["usage"] is None  # the merge patch's null removes it


class Scripted:
    """The scraper's usage() over a table of addresses (None: the pod did not answer)."""

    def __init__(self, table: dict[str, PodUsage | None]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def usage(self, address: str) -> PodUsage | None:
        self.asked.append(address)
        return self.table.get(address)


def pod(name: str, ip: str, *, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": str(ready)}]},
    }  # fmt: skip


def test_watch_scrapes_ready_gpu_pods_and_notifies_only_on_a_visible_change() -> None:
    gpu = md()
    cpu = md({"runtime": {"device": "cpu"}}, name="cpu")
    del cpu["spec"]["gpu"]
    mds = {("ml", "resnet"): [gpu], ("ml", "cpu"): [cpu]}
    pods = {
        ("ml", "resnet"): [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False),
                           pod("c", "10.0.0.3", deleting=True)],
        ("ml", "cpu"): [pod("x", "10.0.0.9")],
    }  # fmt: skip
    scraper = Scripted({"10.0.0.1:8080": PodUsage(1800, 1, "none")})
    told: list[tuple[str, str]] = []

    def resolver(_md: Any, ps: Any, port: int) -> dict[str, str | None]:
        return {p["metadata"]["name"]: f"{p['status']['podIP']}:{port}" for p in ps}

    watch = UsageWatch(mds, pods, scraper, resolver, told.append)  # type: ignore[arg-type]
    asyncio.run(watch.tick())
    assert scraper.asked == ["10.0.0.1:8080"]  # the ready, live pod of the GPU object only
    assert told == [("ml", "resnet")]
    report = watch.get(("ml", "resnet"))
    assert isinstance(report, UsageReport) and report.idle_gpu_hours == pytest.approx(0.5)
    asyncio.run(watch.tick())  # the same figures: no status write
    assert told == [("ml", "resnet")]
    scraper.table["10.0.0.1:8080"] = PodUsage(1830, 1, "none")  # +0.008 h: shows as 0.51
    asyncio.run(watch.tick())
    assert len(told) == 2
    del mds[("ml", "resnet")]
    asyncio.run(watch.tick())
    assert watch.get(("ml", "resnet")) is None and len(told) == 3
