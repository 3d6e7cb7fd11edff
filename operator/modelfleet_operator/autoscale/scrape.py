"""One shared async scraper of the runtime pods' /metrics (bounded timeouts, bounded
concurrency). prometheus_client's own text parser reads the exposition format."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..usage import PodUsage

INFLIGHT = "modelfleet_inflight_requests"
QUEUE = "modelfleet_queue_depth"
REQUESTS = "modelfleet_requests"  # a counter: samples are modelfleet_requests_total
READY = "modelfleet_model_ready"
HELD = "modelfleet_activator_held_requests"  # the activator's, per ModelDeployment
IDLE_LAST_HOUR = "modelfleet_idle_seconds_last_hour"
ACCELERATORS = "modelfleet_accelerators"
ENERGY_SOURCE = "modelfleet_energy_source_info"  # an info metric (a gauge in text format)
TIMEOUT_S = 1.0
CONCURRENCY = 64
MAX_BYTES = 1 << 20  # a runtime's /metrics is a few KiB; more is not ours
T = TypeVar("T")


@dataclass(frozen=True)
class PodMetrics:
    inflight: float
    queued: float
    requests: float  # requests answered so far, every outcome (a counter)
    ready: bool


def parse_metrics(text: str) -> PodMetrics:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (INFLIGHT, QUEUE, REQUESTS, READY):
            continue
        for sample in family.samples:
            if family.name == REQUESTS and not sample.name.endswith("_total"):
                continue
            values[family.name] = values.get(family.name, 0.0) + float(sample.value)
    return PodMetrics(
        inflight=values.get(INFLIGHT, 0.0),
        queued=values.get(QUEUE, 0.0),
        requests=values.get(REQUESTS, 0.0),
        ready=values.get(READY, 0.0) >= 1,
    )


def parse_held(text: str) -> dict[tuple[str, str], float]:
    """An activator's /metrics: requests it holds now, by (namespace, ModelDeployment)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HELD:
            continue
        for sample in family.samples:
            key = (sample.labels.get("namespace", ""), sample.labels.get("name", ""))
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def parse_usage(text: str) -> PodUsage:
    """A runtime's idle and energy figures (modelfleet_runtime/energy.py)."""
    idle: float | None = None
    accelerators = 0
    source: str | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == IDLE_LAST_HOUR:
                # an hour at most (a NaN or a wild value is not believed)
                idle = (idle or 0.0) + min(max(0.0, float(sample.value)), 3600.0)
            elif family.name == ACCELERATORS:
                value = float(sample.value)
                accelerators += int(value) if 0 <= value < 1 << 16 else 0
            elif sample.name == ENERGY_SOURCE:
                source = str(sample.labels.get("energy_source") or "") or source
    return PodUsage(idle_last_hour_s=idle, accelerators=accelerators, energy_source=source)


class Scraper:
    """GET http://<address>/metrics for many pods at once; None for a pod that did not
    answer in time, answered an error, or sent something that is not the format."""

    def __init__(self, timeout_s: float = TIMEOUT_S, concurrency: int = CONCURRENCY) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s)
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            )
        return self._session

    async def text(self, address: str, limit: int = MAX_BYTES) -> str | None:
        """http://<address>/metrics as text; None when it did not answer 200 in time."""
        async with self._limit:
            try:
                async with self._client().get(f"http://{address}/metrics") as resp:
                    if resp.status != 200:
                        return None
                    body = await resp.content.read(limit)
                return body.decode("utf-8", errors="replace")
            except (TimeoutError, aiohttp.ClientError, OSError):
                return None

    async def _parsed(
        self, address: str, parse: Callable[[str], T], limit: int = MAX_BYTES
    ) -> T | None:
        """/metrics read by ``parse``; None when it did not answer or is not the format."""
        text = await self.text(address, limit)
        try:
            return parse(text) if text is not None else None
        except ValueError:
            return None

    async def one(self, address: str) -> PodMetrics | None:
        return await self._parsed(address, parse_metrics)

    async def usage(self, address: str) -> PodUsage | None:
        return await self._parsed(address, parse_usage)

    async def held(self, address: str) -> dict[tuple[str, str], float] | None:
        """One activator's held requests (its /metrics may list many ModelDeployments)."""
        return await self._parsed(address, parse_held, limit=16 * MAX_BYTES)

    async def many(self, addresses: Iterable[str]) -> Mapping[str, PodMetrics | None]:
        wanted = list(dict.fromkeys(addresses))
        results = await asyncio.gather(*(self.one(a) for a in wanted))
        return dict(zip(wanted, results, strict=True))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
