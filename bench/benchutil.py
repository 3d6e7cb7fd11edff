"""Small helpers every benchmark script here shares (run as `python bench/<script>.py`, so
this directory is on sys.path)."""

from __future__ import annotations

import pathlib
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    """The 1/5/15-minute load average, quoted beside every figure."""
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
