"""The builtin engine on the operator's loop: every ``interval_s``, for each ModelDeployment
with ``autoscaling.engine: builtin``, scrape its pods' /metrics (one shared scraper), decide
(decide.py), and write /scale when the decision differs from spec.replicas.

The ModelDeployments and pods come from the watches' indexes (no GET or LIST); pod
addresses from each pod's IP and the runtime's port (an injectable resolver, so tests can
point it at runtime processes on 127.0.0.1). What it saw and decided is kept per
ModelDeployment (``report``) for the status (status.py's ScalingReport).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..observe import ParsedSpecs, pod_live, pod_name, pod_ready
from ..render.deployment import metrics_port
from ..spec import AutoscalingSpec
from ..status import Reason, ScalingReport
from .decide import Decision, Observation, Policy, State, decide, replace_decision
from .scrape import PodMetrics, Scraper

log = logging.getLogger("modelfleet.autoscaler")
Key = tuple[str, str]
INTERVAL_S = 1.0
# A /scale write shows in the watch a moment later; until then the written value is current.
WRITE_SETTLE_S = 10.0
# (the ModelDeployment, its live pods, the runtime's port) -> pod name -> host:port of its
# /metrics (None: nowhere to read it)
Resolver = Callable[
    [Mapping[str, Any], Sequence[Mapping[str, Any]], int], Mapping[str, "str | None"]
]
# Development and tests only (honoured when the operator runs with
# MODELFLEET_SIMULATED_METRICS=1): space-separated host:port addresses of runtime processes
# standing in for the pods' IPs, the i-th pod by name reading the i-th address (a kwok pod's
# IP answers nothing).
SIMULATED_METRICS_ANNOTATION = "modelfleet.io/simulated-metrics-addresses"
WriteScale = Callable[[str, str, int], Awaitable[Any]]
# Scale to zero: the ready activator pods' /metrics addresses (None: no activator configured)
Activators = Callable[[], "Sequence[str] | None"]
# Whether a ModelDeployment's activator slice exists (callers can reach the activator)
Routed = Callable[[Key], bool]


class Lookup(Protocol):
    def get(self, key: Any, default: Any = None) -> Any: ...

    def __iter__(self) -> Any: ...


def pod_addresses(
    md: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], port: int
) -> dict[str, str | None]:
    """Each pod's IP and the runtime's port."""
    out: dict[str, str | None] = {}
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        out[pod_name(pod)] = f"{ip}:{port}" if ip else None
    return out


def simulated_addresses(
    md: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], port: int
) -> dict[str, str | None]:
    """``SIMULATED_METRICS_ANNOTATION``'s addresses by pod name order, else the pods' IPs."""
    annotations = (md.get("metadata") or {}).get("annotations") or {}
    listed = str(annotations.get(SIMULATED_METRICS_ANNOTATION) or "").split()
    if not listed:
        return pod_addresses(md, pods, port)
    names = sorted(pod_name(p) for p in pods)
    return {n: listed[i] if i < len(listed) else None for i, n in enumerate(names)}


def policy_of(auto: AutoscalingSpec) -> Policy:
    return Policy(
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target=auto.target,
        metric=auto.metric,
        scale_up_window_s=auto.scale_up_window_s,
        scale_down_window_s=auto.scale_down_window_s,
    )


@dataclass
class Track:
    """What the loop keeps per ModelDeployment between ticks."""

    state: State = field(default_factory=State)
    policy: Policy | None = None
    counters: dict[str, tuple[float, float]] = field(default_factory=dict)  # pod -> (at, total)
    written: tuple[int, float] | None = None  # (replicas, at) of the last /scale write
    report: ScalingReport | None = None


def _count(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Autoscaler:
    def __init__(
        self,
        mds: Lookup,
        pods: Lookup,
        write_scale: WriteScale,
        *,
        scraper: Scraper | None = None,
        resolver: Resolver = pod_addresses,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[Key], None] | None = None,
        activators: Activators | None = None,
        routed: Routed | None = None,
    ) -> None:
        self.mds = mds
        self.pods = pods
        self.write_scale = write_scale
        self.scraper = scraper or Scraper()
        self.resolver = resolver
        self.interval_s = interval_s
        self.clock = clock
        self.notify = notify
        self.activators = activators
        self.routed = routed
        self.tracks: dict[Key, Track] = {}
        self.writes = 0
        self._specs = ParsedSpecs()

    def report(self, key: Key) -> ScalingReport | None:
        track = self.tracks.get(key)
        return track.report if track else None

    def _builtin(self) -> list[tuple[Key, Mapping[str, Any], AutoscalingSpec, int]]:
        return [
            (key, md, spec.autoscaling, metrics_port(spec))
            for key, md, spec in self._specs.live(self.mds)
            if spec.autoscaling is not None and spec.autoscaling.engine == "builtin"
        ]

    async def tick(self) -> None:
        wanted = self._builtin()
        keys = {w[0] for w in wanted}
        for key in [k for k in self.tracks if k not in keys]:
            del self.tracks[key]  # deleted, or another engine now
        held, activator = await self._held(any(w[2].to_zero for w in wanted))
        await asyncio.gather(
            *(self._one(*w, held=held, activator=activator) for w in wanted),
            return_exceptions=False,
        )

    async def _held(self, needed: bool) -> tuple[dict[Key, float], str | None]:
        """Requests the activators hold, by ModelDeployment, and why scale to zero cannot
        be trusted now (None: it can: every ready activator answered)."""
        if not needed:
            return {}, None
        addresses = list(self.activators() or ()) if self.activators else None
        if addresses is None:
            return {}, "no activator is configured (operator flag --activator-service)"
        if not addresses:
            return {}, "no activator pod is ready"
        answers = await asyncio.gather(*(self.scraper.held(a) for a in addresses))
        total: dict[Key, float] = {}
        for answer in answers:
            for key, value in (answer or {}).items():
                total[key] = total.get(key, 0.0) + value
        failed = sum(1 for a in answers if a is None)
        if failed:
            return total, f"{failed} of {len(addresses)} activator pods did not answer /metrics"
        return total, None

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.tick()
            except Exception:  # one bad tick must not end autoscaling
                log.exception("autoscaler tick failed")
            await asyncio.sleep(max(0.05, self.interval_s - (self.clock() - started)))

    async def _one(
        self,
        key: Key,
        md: Mapping[str, Any],
        auto: AutoscalingSpec,
        port: int,
        *,
        held: Mapping[Key, float],
        activator: str | None,
    ) -> None:
        track = self.tracks.setdefault(key, Track())
        policy = policy_of(auto)
        if track.policy != policy:
            track.policy = policy  # a changed target or window: start the windows afresh
            track.state = State()
        pods = [p for p in self.pods.get(key) or () if pod_live(p)]
        ready = [p for p in pods if pod_ready(p)]
        loading = [p for p in pods if not pod_ready(p)]
        addresses = self.resolver(md, pods, port)
        # Only ready pods carry demand; a loading one may not even listen yet.
        scraped = await self.scraper.many(
            a for p in ready if (a := addresses.get(pod_name(p))) is not None
        )
        now = self.clock()
        obs = self._observe(track, auto, now, ready, len(loading), addresses, scraped)
        if auto.to_zero:
            waiting = held.get(key, 0.0)
            obs = replace(
                obs,
                held=waiting,
                demand=obs.demand + waiting if auto.metric == "concurrency" else obs.demand,
            )
            if activator is None and self.routed is not None and not self.routed(key):
                activator = "this ModelDeployment's activator EndpointSlice is not there yet"
        current = self._current(track, md, now)
        decision, track.state = decide(policy, track.state, obs, current)
        if auto.to_zero and activator is not None and decision.desired < 1:
            # Nothing may hold requests at zero: keep (or bring back) one replica.
            decision = replace_decision(decision, 1, f"; keeping 1: {activator}")
        await self._act(key, track, decision, obs, now, auto=auto)

    def _observe(  # noqa: PLR0917 (one tick's inputs, in the order they are gathered)
        self,
        track: Track,
        auto: AutoscalingSpec,
        now: float,
        ready: Iterable[Mapping[str, Any]],
        loading: int,
        addresses: Mapping[str, str | None],
        scraped: Mapping[str, PodMetrics | None],
    ) -> Observation:
        demand = queued = 0.0
        answered = failed = 0
        seen: dict[str, tuple[float, float]] = {}
        for pod in ready:
            name = pod_name(pod)
            address = addresses.get(name)
            m = scraped.get(address) if address else None
            if m is None:
                failed += 1
                continue
            answered += 1
            queued += m.queued
            if auto.metric == "rps":
                seen[name] = (now, m.requests)
                prev = track.counters.get(name)
                if prev is not None and now > prev[0] and m.requests >= prev[1]:
                    demand += (m.requests - prev[1]) / (now - prev[0])
            else:
                demand += m.inflight
        track.counters = seen
        return Observation(
            at=now, demand=demand, ready=answered, loading=loading, failed=failed, queued=queued
        )

    def _current(self, track: Track, md: Mapping[str, Any], now: float) -> int:
        replicas = int((md.get("spec") or {}).get("replicas") or 0)
        if track.written is not None:
            value, at = track.written
            if value != replicas and now - at < WRITE_SETTLE_S:
                return value
            track.written = None
        return replicas

    async def _act(
        self,
        key: Key,
        track: Track,
        decision: Decision,
        obs: Observation,
        now: float,
        *,
        auto: AutoscalingSpec,
    ) -> None:
        previous = track.report
        hold = auto.scale_to_zero
        # The decision for zero is reported at once (not a tick later, when current is 0):
        # between the two, the status said Ready=False "spec.replicas is 0" (seen in CI).
        if hold is not None and decision.desired == 0 and not obs.held:
            active, reason = True, Reason.SCALED_TO_ZERO
            message = (
                f"no replica runs: the activator holds requests (up to {hold.max_held_requests}"
                f", {hold.hold_timeout_s}s each) and the first one brings a replica back"
            )
        elif hold is not None and obs.ready == 0 and obs.held:
            active, reason = True, Reason.ACTIVATING_FROM_ZERO
            message = (
                f"the activator holds {_count(obs.held)} requests until a replica is ready "
                f"({obs.loading} loading)"
            )
        elif obs.ready == 0 and obs.failed:
            active, reason = False, "FailedGetPodsMetric"
            message = f"no ready pod answered /metrics ({obs.failed} failed)"
        elif obs.ready == 0:
            active, reason, message = False, "NoPodsToScrape", "no ready pod to read /metrics from"
        else:
            active, reason = True, "ValidMetricFound"
            message = f"the builtin autoscaler reads /metrics of {obs.ready} ready pods"
            if obs.failed:
                message += f" ({obs.failed} did not answer: no scale-down until they do)"
        last_why = previous.last_decision if previous else None
        last_at = previous.last_decision_time if previous else None
        if decision.changed:
            try:
                await self.write_scale(key[0], key[1], decision.desired)
            except Exception as exc:  # the API refused: keep deciding, say so
                log.warning("%s/%s: /scale write failed: %s", *key, exc)
                active, reason = False, "FailedUpdateScale"
                message = f"writing /scale failed: {exc}"
            else:
                self.writes += 1
                track.written = (decision.desired, now)
                last_why, last_at = decision.why, _now_iso()
                log.info("%s/%s: scale %s", *key, decision.why)
        track.report = ScalingReport(
            engine="builtin",
            active=active,
            reason=reason,
            message=message,
            current=decision.current,
            desired=decision.desired,
            last_decision=last_why,
            last_decision_time=last_at,
        )
        news = (
            previous is None
            or previous.active != active
            or previous.reason != reason
            or previous.message != message
            or previous.last_decision != last_why
        )
        if news and self.notify is not None:
            self.notify(key)

    async def close(self) -> None:
        await self.scraper.close()
