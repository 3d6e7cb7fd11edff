"""Small helpers every benchmark script here shares (run as `python bench/<script>.py`, so
this directory is on sys.path)."""

from __future__ import annotations

import pathlib
import socket
import time
from collections.abc import Callable
from typing import Any


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


def wait(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """The first truthy value of ``probe()``, polled every ``interval`` s; exits naming
    ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
