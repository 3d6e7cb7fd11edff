"""Active/standby replicas: one operator reconciles, the others wait on a Lease.

The record is client-go's leader-election Lease (``coordination.k8s.io/v1``: holderIdentity,
leaseDurationSeconds, acquireTime, renewTime, leaseTransitions), so ``kubectl get lease``
and existing dashboards read it the usual way. As in client-go, expiry is judged on this
process's monotonic clock from when the record was last seen to change, never by comparing
the holder's timestamps with our wall clock: skewed clocks cannot make two leaders.

The holder renews every ``retry_s``; if no renewal succeeded for ``renew_deadline_s``
(< the lease duration, so it stops before anyone may take over) it exits the process: state
lives in the cluster, so a restart loses nothing, and exiting is the only stop that cannot
leave a worker writing beside the next leader (client-go does the same).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

LEASE_NAME = "modelfleet-operator"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    transitions: int
    resource_version: str | None


def parse_lease(obj: Mapping[str, Any]) -> LeaseRecord:
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_s=int(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
    )


@dataclass(frozen=True)
class Decision:
    action: str  # "create" | "renew" | "take" | "wait"
    wait_s: float = 0.0  # for "wait": how long until the holder's lease runs out


def decide(
    record: LeaseRecord | None, me: str, unchanged_for_s: float, duration_s: int
) -> Decision:
    """What to do with the Lease as last read. ``unchanged_for_s``: how long (our monotonic
    clock) the record has looked exactly like this."""
    if record is None:
        return Decision("create")
    if record.holder == me:
        return Decision("renew")
    lease_s = record.duration_s or duration_s
    if not record.holder or unchanged_for_s >= lease_s:
        return Decision("take")
    return Decision("wait", lease_s - unchanged_for_s)


def lease_body(
    *,
    name: str,
    namespace: str,
    me: str,
    duration_s: int,
    now: dt.datetime,
    previous: LeaseRecord | None,
) -> dict[str, Any]:
    """The Lease we write to create, renew or take it (a renewal keeps acquireTime; the
    API server keeps fields a replace leaves out only if we send them, so send all)."""
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": duration_s,
        "renewTime": stamp,
        "leaseTransitions": previous.transitions if previous else 0,
    }
    if previous is None or previous.holder != me:
        spec["acquireTime"] = stamp
        if previous is not None and previous.holder:
            spec["leaseTransitions"] = previous.transitions + 1
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version:
        metadata["resourceVersion"] = previous.resource_version  # optimistic concurrency
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


class LeaseAPI(Protocol):
    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class LeaderElector:
    def __init__(
        self,
        api: LeaseAPI,
        *,
        namespace: str,
        identity: str,
        name: str = LEASE_NAME,
        duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_s < renew_deadline_s < duration_s:
            raise ValueError("need 0 < retry < renew deadline < lease duration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.clock = clock
        self._seen: tuple[LeaseRecord | None, float] | None = None  # (record, first seen at)
        self.last_renewed = -float("inf")

    def _observe(self, record: LeaseRecord | None) -> float:
        """How long the record has been unchanged (holder and version)."""
        now = self.clock()
        if self._seen is None or self._seen[0] != record:
            self._seen = (record, now)
        return now - self._seen[1]

    async def try_once(self) -> Decision:
        """Read the Lease and create, renew or take it if that is ours to do. Returns the
        decision; "wait" (or an exception from the API) means we do not hold it."""
        raw = await self.api.read_lease(self.namespace, self.name)
        record = parse_lease(raw) if raw is not None else None
        decision = decide(record, self.identity, self._observe(record), self.duration_s)
        if decision.action == "wait":
            return decision
        body = lease_body(
            name=self.name,
            namespace=self.namespace,
            me=self.identity,
            duration_s=self.duration_s,
            now=dt.datetime.now(dt.UTC),
            previous=record,
        )
        if record is None:
            await self.api.create_lease(self.namespace, body)
        else:
            await self.api.replace_lease(self.namespace, self.name, body)
        self.last_renewed = self.clock()
        if decision.action != "renew":
            log.info(
                "became the leader (Lease %s/%s, was held by %r)",
                self.namespace,
                self.name,
                record.holder if record else None,
            )
        return decision

    async def acquire(self) -> None:
        """Return once we hold the Lease (standby until then)."""
        announced = False
        while True:
            try:
                decision = await self.try_once()
            except Exception as exc:  # the API is down or someone won the race: try again
                log.info("Lease %s/%s not acquired: %s", self.namespace, self.name, exc)
                await asyncio.sleep(self.retry_s)
                continue
            if decision.action != "wait":
                return
            if not announced:
                log.info(
                    "standby: Lease %s/%s is held by another replica; taking over if it is "
                    "not renewed for %ss",
                    self.namespace,
                    self.name,
                    self.duration_s,
                )
                announced = True
            await asyncio.sleep(min(self.retry_s, max(0.1, decision.wait_s)))

    async def hold(self, on_lost: Callable[[str], None]) -> None:
        """Renew until cancelled; call ``on_lost`` once we can no longer claim the Lease."""
        while True:
            await asyncio.sleep(self.retry_s)
            why = ""
            try:
                decision = await self.try_once()
                if decision.action == "wait":
                    why = "another replica holds the Lease"
            except Exception as exc:
                if self.clock() - self.last_renewed < self.renew_deadline_s:
                    log.warning("Lease renewal failed (will retry): %s", exc)
                    continue
                why = f"not renewed for {self.renew_deadline_s:.0f}s: {exc}"
            if why:
                on_lost(why)
                return

    async def release(self) -> None:
        """On a clean stop: give the Lease up so a standby takes over at once."""
        try:
            raw = await self.api.read_lease(self.namespace, self.name)
            record = parse_lease(raw) if raw is not None else None
            if record is None or record.holder != self.identity:
                return
            body = lease_body(
                name=self.name,
                namespace=self.namespace,
                me="",
                duration_s=1,
                now=dt.datetime.now(dt.UTC),
                previous=record,
            )
            body["spec"].pop("acquireTime", None)
            body["spec"]["leaseTransitions"] = record.transitions
            await self.api.replace_lease(self.namespace, self.name, body)
            log.info("released Lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # best effort: the lease then simply expires
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
