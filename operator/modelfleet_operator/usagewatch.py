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
from .observe import pod_live, pod_ready
from .render.deployment import metrics_port
from .spec import InvalidSpec, parse_spec
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
        # (generation, metrics port or None when the object requests no GPU)
        self._specs: dict[Key, tuple[Any, int | None]] = {}

    def get(self, key: Key) -> UsageReport | None:
        return self.reports.get(key)

    def _gpu_objects(self) -> list[tuple[Key, Mapping[str, Any], int]]:
        out = []
        keys = list(self.mds)
        for key in keys:
            md = next(iter(self.mds.get(key) or ()), None)
            if md is None or (md.get("metadata") or {}).get("deletionTimestamp"):
                continue
            generation = (md.get("metadata") or {}).get("generation")
            cached = self._specs.get(key)
            if cached is None or cached[0] != generation or generation is None:
                try:
                    spec = parse_spec(md.get("spec"), name=key[1])
                    cached = (generation, metrics_port(spec) if spec.gpu is not None else None)
                except InvalidSpec:
                    cached = (generation, None)
                self._specs[key] = cached
            if cached[1] is not None:
                out.append((key, md, cached[1]))
        present = set(keys)
        for gone in [k for k in self._specs if k not in present]:
            del self._specs[gone]
        return out

    async def tick(self) -> None:
        wanted = self._gpu_objects()
        for key in [k for k in self.reports if k not in {w[0] for w in wanted}]:
            del self.reports[key]  # deleted, or no GPU any more: the status drops it
            self.notify(key)
        await asyncio.gather(*(self._one(*w) for w in wanted))

    async def _one(self, key: Key, md: Mapping[str, Any], port: int) -> None:
        ready = [p for p in self.pods.get(key) or () if pod_live(p) and pod_ready(p)]
        addresses = self.resolver(md, ready, port)
        answers = await asyncio.gather(
            *(self.scraper.usage(a) if (a := addresses.get(_name(p))) else _none() for p in ready)
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


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name"))


async def _none() -> None:
    return None
