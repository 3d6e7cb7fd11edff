"""How many CPUs this process may really use: the default for ``--threads``.

``os.cpu_count()`` is the node's count: in a container limited to 2 CPUs on a 64-core node,
torch would start 64 intra-op threads that the CFS quota then throttles. The usable count is
the smallest of the CPU affinity mask and the cgroup quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up, at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(cpu_max: str | None, cfs_quota: str | None, cfs_period: str | None) -> float | None:
    """CPUs granted by the cgroup quota, or None when unlimited/unknown. ``cpu_max`` is the
    v2 file's text ("max 100000" or "150000 100000"); the v1 pair is used without it."""
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) != 2 or parts[0] == "max":
            return None
        quota, period = parts
    elif cfs_quota is not None and cfs_period is not None:
        quota, period = cfs_quota.strip(), cfs_period.strip()
    else:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:  # v1 writes -1 for "no limit"
        return None
    return q / p


def decide_threads(affinity: int | None, quota: float | None) -> int:
    """Intra-op threads: the affinity mask's size, capped by the quota rounded up."""
    counts = [n for n in (affinity, math.ceil(quota) if quota else None) if n]
    return max(1, min(counts)) if counts else 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def default_threads(root: Path = CGROUP) -> int:
    """decide_threads() for this process, from /proc and the cgroup filesystem."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = os.cpu_count()
    quota = quota_cpus(
        _read(root / "cpu.max"),
        _read(root / "cpu/cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us"),
        _read(root / "cpu/cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us"),
    )
    return decide_threads(affinity, quota)
