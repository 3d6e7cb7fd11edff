"""The idle clock and the energy metrics, on a scripted clock and a scripted energy counter:
idle seconds follow the traffic pattern exactly, energy is counted from the process's start,
joules per 1000 inferences follow the window, and what cannot be read is absent."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from modelfleet_runtime.energy import (
    ENERGY_WINDOW_S,
    IDLE_WINDOW_S,
    SAMPLE_EVERY_S,
    CostCollector,
    IdleClock,
    Nvml,
)
from prometheus_client import CollectorRegistry, generate_latest


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Counter:
    """An energy counter the test drives (joules, with an arbitrary origin like NVML's)."""

    source = "nvml"

    def __init__(self) -> None:
        self.joules = {"0": 5_000_000.0}
        self.broken = False

    def read_joules(self) -> dict[str, float]:
        if self.broken:
            raise RuntimeError("GPU is lost")
        return dict(self.joules)


def scrape(collector: CostCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def one(samples: dict[str, float], name: str) -> float | None:
    found = [v for k, v in samples.items() if k.split("{")[0] == name]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_idle_follows_a_scripted_traffic_pattern() -> None:
    clock = Clock()
    idle = IdleClock(clock)
    clock.advance(30)  # loading: not idle, nothing is served yet
    assert idle.idle_seconds() == 0
    assert idle.idle_last_hour() is None
    idle.serve()
    clock.advance(10)  # idle 10
    idle.begin()
    clock.advance(3)  # busy
    idle.begin()  # a second request overlaps the first
    clock.advance(2)
    idle.end()
    clock.advance(1)  # still busy: one left
    idle.end()
    clock.advance(4)  # idle 4
    assert idle.idle_seconds() == pytest.approx(14)
    idle.begin()
    idle.stop()  # draining while busy: the hardware is leaving, nothing more is idle
    clock.advance(5)
    idle.end()
    clock.advance(5)
    assert idle.idle_seconds() == pytest.approx(14)


def test_idle_last_hour_forgets_what_is_older() -> None:
    clock = Clock()
    idle = IdleClock(clock)
    idle.serve()
    for _ in range(int(IDLE_WINDOW_S / SAMPLE_EVERY_S)):  # an idle hour
        clock.advance(SAMPLE_EVERY_S)
        idle.sample()
    assert idle.idle_last_hour() == pytest.approx(IDLE_WINDOW_S, abs=SAMPLE_EVERY_S)
    idle.begin()  # then busy for half an hour
    for _ in range(int(IDLE_WINDOW_S / 2 / SAMPLE_EVERY_S)):
        clock.advance(SAMPLE_EVERY_S)
        idle.sample()
    assert idle.idle_last_hour() == pytest.approx(IDLE_WINDOW_S / 2, abs=SAMPLE_EVERY_S)
    assert idle.idle_seconds() == pytest.approx(IDLE_WINDOW_S)


def test_on_cpu_the_energy_figures_are_absent_and_the_source_is_none() -> None:
    clock = Clock()
    idle = IdleClock(clock)
    cost = CostCollector({"model": "m", "version": "1"}, clock=idle, accelerators=0,
                         energy=None, inferences=lambda: 0, now=clock)  # fmt: skip
    idle.serve()
    clock.advance(7)
    s = scrape(cost)
    assert s['modelfleet_energy_source_info{energy_source="none",model="m",version="1"}'] == 1
    assert one(s, "modelfleet_idle_seconds_total") == pytest.approx(7)
    assert one(s, "modelfleet_accelerators") == 0
    for absent in ("modelfleet_accelerator_idle_seconds_total",
                   "modelfleet_accelerator_energy_joules_total",
                   "modelfleet_energy_joules_per_1000_inferences"):  # fmt: skip
        assert one(s, absent) is None, absent


def test_energy_is_counted_from_start_and_per_1000_inferences_over_the_window() -> None:
    clock, counter = Clock(), Counter()
    idle = IdleClock(clock)
    done = [0]
    cost = CostCollector({"model": "m", "version": "1"}, clock=idle, accelerators=2,
                         energy=counter, inferences=lambda: done[0], now=clock)  # fmt: skip
    idle.serve()
    s = scrape(cost)
    assert one(s, "modelfleet_accelerator_energy_joules_total") == 0  # not the driver's origin
    assert one(s, "modelfleet_energy_joules_per_1000_inferences") is None  # nothing served
    clock.advance(10)
    assert one(scrape(cost), "modelfleet_accelerator_idle_seconds_total") == pytest.approx(20)

    def a_minute(watts: float, rows_per_sample: int, extra_samples: int = 0) -> None:
        for _ in range(int(ENERGY_WINDOW_S / SAMPLE_EVERY_S) + extra_samples):
            clock.advance(SAMPLE_EVERY_S)
            counter.joules["0"] += watts * SAMPLE_EVERY_S
            done[0] += rows_per_sample
            cost.sample()

    # 60 s at 300 W while 2400 rows are answered: 18 kJ, 7500 J per 1000
    a_minute(300, 200)
    s = scrape(cost)
    assert one(s, "modelfleet_accelerator_energy_joules_total") == pytest.approx(18_000)
    assert one(s, "modelfleet_energy_joules_per_1000_inferences") == pytest.approx(7500)
    # then a minute at 100 W doing 10x the work: the window forgets the first minute
    a_minute(100, 2000)
    s = scrape(cost)
    assert one(s, "modelfleet_accelerator_energy_joules_total") == pytest.approx(24_000)
    assert one(s, "modelfleet_energy_joules_per_1000_inferences") == pytest.approx(250)
    # a minute with no inference (and no energy): no figure, rather than infinity
    a_minute(0, 0, extra_samples=1)
    assert one(scrape(cost), "modelfleet_energy_joules_per_1000_inferences") is None


def test_a_failing_energy_counter_drops_the_figure_not_the_scrape() -> None:
    clock, counter = Clock(), Counter()
    idle = IdleClock(clock)
    cost = CostCollector({"model": "m", "version": "1"}, clock=idle, accelerators=1,
                         energy=counter, inferences=lambda: 0, now=clock)  # fmt: skip
    idle.serve()
    counter.broken = True
    cost.sample()
    s = scrape(cost)
    assert one(s, "modelfleet_accelerator_energy_joules_total") is None
    assert one(s, "modelfleet_idle_seconds_total") == 0
    assert 'modelfleet_energy_source_info{energy_source="nvml",model="m",version="1"}' in s


class FakeNvml(types.ModuleType):
    """pynvml's calls the runtime makes, over a scripted device table."""

    def __init__(self, devices: dict[str, int | None], init_error: str | None = None) -> None:
        super().__init__("pynvml")
        self.devices = devices  # UUID -> energy counter in mJ (None: not supported)
        self.init_error = init_error

    def nvmlInit(self) -> None:
        if self.init_error:
            raise RuntimeError(self.init_error)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.devices:
            raise RuntimeError("Not Found")
        return uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        value = self.devices[handle]
        if value is None:
            raise RuntimeError("Not Supported")
        return value


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(module: types.ModuleType | None) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", module)

    return install


def test_nvml_reads_the_devices_torch_uses_by_uuid(fake_nvml: Any) -> None:
    fake_nvml(FakeNvml({"GPU-aaa": 7_000, "GPU-bbb": 1_000_000}))
    nvml, why = Nvml.open(["bbb"])
    assert nvml is not None, why
    assert nvml.read_joules() == {"0": 1000.0}


@pytest.mark.parametrize(
    ("module", "uuids", "reason"),
    [
        (None, ["aaa"], "nvidia-ml-py is not installed"),
        (FakeNvml({}, init_error="NVML Shared Library Not Found"), ["aaa"], "Library Not Found"),
        (FakeNvml({"GPU-aaa": None}), ["aaa"], "Not Supported"),
        (FakeNvml({"MIG-aaa": 5}), ["MIG-aaa"], "MIG instance"),
        (FakeNvml({"GPU-aaa": 5}), [], "no CUDA device"),
    ],
)
def test_nvml_unavailable_says_why(
    fake_nvml: Any, module: types.ModuleType | None, uuids: list[str], reason: str
) -> None:
    fake_nvml(module)
    nvml, why = Nvml.open(uuids)
    assert nvml is None
    assert reason in why
