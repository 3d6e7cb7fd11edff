"""The hardware cost of a ModelDeployment as its status shows it, from the serving pods' own
figures (the runtime's energy.py): GPU-hours held idle over the last hour, the GPUs the
pods hold, and where energy figures come from. Pure: usagewatch.py scrapes, this adds up.

Idle is measured by each runtime (serving, nothing in flight or queued), so the figure
covers the pods that run now; a pod replaced within the hour takes its part with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A ModelDeployment's figure is refreshed this often: each refresh that moves it by at
# least 0.01 GPU-hour writes the status once (<= one status write per GPU object per
# interval, which keeps the idle operator's API traffic bounded).
INTERVAL_S = 120.0


@dataclass(frozen=True)
class PodUsage:
    """One runtime's figures (modelfleet_idle_seconds_last_hour, modelfleet_accelerators,
    modelfleet_energy_source_info); None where the runtime did not report it."""

    idle_last_hour_s: float | None
    accelerators: int
    energy_source: str | None


@dataclass(frozen=True)
class UsageReport:
    idle_gpu_hours: float | None  # None: no ready pod reported
    gpus: int
    reporting: int  # ready pods that answered with the figures
    ready: int  # ready pods asked
    energy_source: str | None

    def key(self) -> tuple[str | None, int, int, int, str | None]:
        """What the status shows of it: a change here is worth a status write."""
        hours = None if self.idle_gpu_hours is None else f"{self.idle_gpu_hours:.2f}"
        return hours, self.gpus, self.reporting, self.ready, self.energy_source


def summarize(answers: Sequence[PodUsage | None]) -> UsageReport:
    """The ready pods' figures added up; a pod that did not answer (None) is counted as
    missing, never as zero idle."""
    got = [a for a in answers if a is not None and a.idle_last_hour_s is not None]
    sources = sorted({a.energy_source for a in got if a.energy_source})
    return UsageReport(
        idle_gpu_hours=(
            sum((a.idle_last_hour_s or 0.0) * a.accelerators for a in got) / 3600 if got else None
        ),
        gpus=sum(a.accelerators for a in got),
        reporting=len(got),
        ready=len(answers),
        energy_source=",".join(sources) if sources else None,
    )


def usage_status(report: UsageReport | None, previous: Mapping[str, Any] | None) -> Any:
    """status.usage: the report, else what the status said before (a restarted operator
    has not scraped yet: the pods' figures have not gone), else nothing."""
    if report is None:
        return dict(previous) if isinstance(previous, Mapping) else None
    out: dict[str, Any] = {"gpus": report.gpus, "reportingPods": report.reporting}
    if report.idle_gpu_hours is not None:
        out["idleGPUHoursLastHour"] = f"{report.idle_gpu_hours:.2f}"
    if report.energy_source is not None:
        out["energySource"] = report.energy_source
    if report.reporting < report.ready:
        out["message"] = (
            f"{report.ready - report.reporting} of {report.ready} ready pods did not report "
            f"their figures (/metrics); the idle GPU-hours cover {report.reporting}"
        )
    elif report.ready == 0:
        out["message"] = "no ready pod: nothing is held idle"
    return out
