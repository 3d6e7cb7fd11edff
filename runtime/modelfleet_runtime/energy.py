"""What serving costs in hardware: seconds with nothing to do, and the accelerators' energy
read from the driver (NVML). Nothing here is estimated: a figure that cannot be read is
absent from the metrics, never a made-up zero. No HTTP and no torch (app.py wires it in).

- Idle: serving (the model loaded, not draining) with no inference request in flight or
  queued. Counted in seconds; times the accelerators this process holds, it is the
  accelerator time paid for and unused.
- Energy: NVML's total energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules
  since the driver loaded; Volta and later), read at scrape time, counted from this
  process's start. It is the whole device's energy: on a GPU shared with other processes,
  theirs is in it too. MIG instances have no counter of their own, so under MIG it is absent.
- Joules per 1000 inferences: over the last ENERGY_WINDOW_S, energy used divided by rows
  answered successfully (an inference is one row of a batch, as Triton counts them).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

IDLE_WINDOW_S = 3600.0  # modelfleet_idle_seconds_last_hour: what the operator's status shows
ENERGY_WINDOW_S = 60.0  # modelfleet_energy_joules_per_1000_inferences
SAMPLE_EVERY_S = 5.0  # history resolution of both windows


class IdleClock:
    """Seconds spent serving with nothing in flight or queued. Every call comes from the
    event loop (requests begin and end there), so there is no lock."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._busy = 0
        self._serving = False
        self._idle_before = 0.0  # idle seconds of the intervals already closed
        self._idle_since: float | None = None
        self._history: deque[tuple[float, float]] = deque()  # (time, idle seconds then)
        self._started: float | None = None

    def serve(self) -> None:
        """The model is loaded: from now on a moment with nothing to do is idle."""
        now = self._now()
        self._serving = True
        self._started = now
        self._history.append((now, self._idle_before))
        if self._busy == 0:
            self._idle_since = now

    def stop(self) -> None:
        """Draining: the hardware is on its way out, no longer idle capacity."""
        self._close(self._now())
        self._serving = False

    def begin(self) -> None:
        self._busy += 1
        if self._busy == 1:
            self._close(self._now())

    def end(self) -> None:
        self._busy = max(0, self._busy - 1)
        if self._busy == 0 and self._serving:
            self._idle_since = self._now()

    def _close(self, now: float) -> None:
        if self._idle_since is not None:
            self._idle_before += now - self._idle_since
            self._idle_since = None

    def idle_seconds(self) -> float:
        since = self._idle_since
        return self._idle_before + (self._now() - since if since is not None else 0.0)

    def sample(self) -> None:
        """Remember the total now (every SAMPLE_EVERY_S), keeping IDLE_WINDOW_S of them."""
        now = self._now()
        self._history.append((now, self.idle_seconds()))
        while len(self._history) > 1 and self._history[1][0] <= now - IDLE_WINDOW_S:
            self._history.popleft()

    def idle_last_hour(self) -> float | None:
        """Idle seconds within the last IDLE_WINDOW_S (or since serving began, when that is
        later), to SAMPLE_EVERY_S resolution; None before serving began."""
        if not self._history:
            return None
        return max(0.0, self.idle_seconds() - self._history[0][1])


class EnergyReader(Protocol):
    source: str

    def read_joules(self) -> dict[str, float]:
        """Device label -> the device's energy counter in joules (any origin)."""
        ...


class Nvml:
    """NVML's energy counters of the given CUDA devices, through nvidia-ml-py (NVIDIA's own
    bindings: no hand-written ctypes declarations to keep in step with the driver)."""

    source = "nvml"

    def __init__(self, nvml: Any, handles: dict[str, Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    @classmethod
    def open(cls, uuids: Sequence[str]) -> tuple[Nvml | None, str]:
        """Counters for the devices with these UUIDs (torch's ``props.uuid``), or None and
        why not (no library, no driver, a device without a counter)."""
        if not uuids:
            return None, "no CUDA device in use"
        try:
            import pynvml  # noqa: PLC0415 (optional: absent or driverless is normal on CPU)
        except ImportError:
            return None, "nvidia-ml-py is not installed"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return None, f"NVML: {exc}"
        handles: dict[str, Any] = {}
        try:
            for i, uuid in enumerate(uuids):
                text = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
                handle = pynvml.nvmlDeviceGetHandleByUUID(text)
                if text.startswith("MIG-"):
                    return None, f"device {i} is a MIG instance: NVML has no energy counter"
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # NOT_SUPPORTED before Volta
                handles[str(i)] = handle
        except Exception as exc:
            return None, f"NVML energy counter: {exc}"
        return cls(pynvml, handles), ""

    def read_joules(self) -> dict[str, float]:
        get = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        return {label: get(handle) / 1000.0 for label, handle in self._handles.items()}


@dataclass
class _EnergySample:
    at: float
    joules: float
    inferences: int


class CostCollector(Collector):
    """The ``modelfleet_*`` idle and energy metrics, computed at scrape time."""

    def __init__(
        self,
        labels: dict[str, str],
        *,
        clock: IdleClock,
        accelerators: int,
        energy: EnergyReader | None,
        inferences: Callable[[], int],
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._labels = labels
        self.clock = clock
        self.accelerators = accelerators
        self._energy = energy
        self._now = now
        self._inferences = inferences  # rows answered with 200, so far
        self._base: dict[str, float] = {}
        self._window: deque[_EnergySample] = deque()
        self._failed = False
        if energy is not None:
            self._base = self._read() or {}
            if self._base:
                self._window.append(_EnergySample(now(), sum(self._base.values()), inferences()))

    def _read(self) -> dict[str, float] | None:
        assert self._energy is not None
        try:
            return self._energy.read_joules()
        except Exception as exc:  # a driver fault must not break /metrics
            if not self._failed:
                log.warning("reading the energy counters failed: %s", exc)
                self._failed = True
            return None

    def sample(self) -> None:
        self.clock.sample()
        if self._energy is None:
            return
        joules = self._read()
        if joules is None:
            return
        now = self._now()
        self._window.append(_EnergySample(now, sum(joules.values()), self._inferences()))
        while len(self._window) > 1 and self._window[1].at <= now - ENERGY_WINDOW_S:
            self._window.popleft()

    def collect(self) -> Iterator[Any]:
        names, values = list(self._labels), list(self._labels.values())
        source = self._energy.source if self._energy is not None else "none"
        info = InfoMetricFamily(
            "modelfleet_energy_source",
            "Where the energy figures come from (none: not measured)",
            labels=names,
        )
        info.add_metric(values, {"energy_source": source})
        yield info
        idle_s = self.clock.idle_seconds()
        yield self._one(
            CounterMetricFamily,
            "modelfleet_idle_seconds",
            "Seconds serving with no inference request in flight or queued",
            idle_s,
        )
        last_hour = self.clock.idle_last_hour()
        if last_hour is not None:
            yield self._one(
                GaugeMetricFamily,
                "modelfleet_idle_seconds_last_hour",
                "Idle seconds within the last hour (since serving began, if later)",
                last_hour,
            )
        yield self._one(
            GaugeMetricFamily,
            "modelfleet_accelerators",
            "Accelerators (GPUs) this process holds",
            float(self.accelerators),
        )
        if self.accelerators:
            yield self._one(
                CounterMetricFamily,
                "modelfleet_accelerator_idle_seconds",
                "Accelerator-seconds held while idle (idle seconds times accelerators)",
                idle_s * self.accelerators,
            )
        if self._energy is None:
            return
        joules = self._read()
        if joules is None:
            return
        energy = CounterMetricFamily(
            "modelfleet_accelerator_energy_joules",
            "Energy the accelerator used since this process started (NVML; the whole device)",
            labels=[*names, "device"],
        )
        for device, total in sorted(joules.items()):
            energy.add_metric([*values, device], max(0.0, total - self._base.get(device, total)))
        yield energy
        first = self._window[0] if self._window else None
        done = self._inferences() - first.inferences if first else 0
        if first is not None and done > 0:
            used = max(0.0, sum(joules.values()) - first.joules)
            yield self._one(
                GaugeMetricFamily,
                "modelfleet_energy_joules_per_1000_inferences",
                f"Accelerator energy per 1000 inferences (rows) over the last "
                f"{ENERGY_WINDOW_S:g} s",
                used / done * 1000,
            )

    def _one(self, family: Any, name: str, doc: str, value: float) -> Any:
        metric = family(name, doc, labels=list(self._labels))
        metric.add_metric(list(self._labels.values()), value)
        return metric
