"""Every INTERVAL_S, the idle GPU-hours of each ModelDeployment that requests GPUs, read from
its ready serving pods' /metrics (on the metrics port the autoscaler scrapes too); a figure
that changes what the status shows queues a reconcile, which writes it (status.usage)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .autoscale.scrape import Scraper
from .observe import ParsedSpecs, pod_live, pod_name, pod_ready
from .render.deployment import metrics_port
from .usage import INTERVAL_S, UsageReport, summarize

log = logging.getLogger(__name__)

Key = tuple[str, str]
Resolver = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], int], Mapping[str, str | None]]


class UsageWatch:
    def __init__(
        self,
        mds: Any,
        pods: Any,
        scraper: Scraper,
        resolver: Resolver,
        notify: Callable[[Key], None],
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mds = mds
        self.pods = pods
        self.scraper = scraper
        self.resolver = resolver
        self.notify = notify
        self.interval_s = interval_s
        self.clock = clock
        self.reports: dict[Key, UsageReport] = {}
        self._specs = ParsedSpecs()

    def get(self, key: Key) -> UsageReport | None:
        return self.reports.get(key)

    def _gpu_objects(self) -> list[tuple[Key, Mapping[str, Any], int]]:
        return [
            (key, md, metrics_port(spec))
            for key, md, spec in self._specs.live(self.mds)
            if spec.gpu is not None
        ]

    async def tick(self) -> None:
        wanted = self._gpu_objects()
        keys = {w[0] for w in wanted}
        for key in [k for k in self.reports if k not in keys]:
            del self.reports[key]  # deleted, or no GPU any more: the status drops it
            self.notify(key)
        await asyncio.gather(*(self._one(*w) for w in wanted))

    async def _one(self, key: Key, md: Mapping[str, Any], port: int) -> None:
        ready = [p for p in self.pods.get(key) or () if pod_live(p) and pod_ready(p)]
        addresses = self.resolver(md, ready, port)
        answers = await asyncio.gather(
            *(
                self.scraper.usage(a) if (a := addresses.get(pod_name(p))) else _none()
                for p in ready
            )
        )
        report = summarize(answers)
        old = self.reports.get(key)
        self.reports[key] = report
        if old is None or old.key() != report.key():
            self.notify(key)

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the figures
                log.exception("usage tick failed")
            await asyncio.sleep(max(1.0, self.interval_s - (self.clock() - started)))


async def _none() -> None:
    return None
