"""Reads what a node autoscaler says about pending serving pods, while some pod waits.

Only while a serving pod is unschedulable, every ``interval_s``, one LIST per namespace with
such pods and per Event kind a node autoscaler posts (nodescale.SELECTORS: the API server
filters them, so an answer is a few objects). A watch on every Event in the cluster would
cost the operator a kopf object per Event (thousands in a busy cluster) for the rare ones it
wants; polling while nothing pends costs nothing: the operator stays idle when converged.
A ModelDeployment whose pods' news changed is queued for a reconcile (status within one
interval, 5 s, of the Event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from .nodescale import SELECTORS, NodeScaleEvent, newest_by_pod
from .observe import pod_name

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Lookup(Protocol):
    """A kopf index (key -> the values stored under it), as reconcile.Lookup."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __iter__(self) -> Any: ...


ListEvents = Callable[[str, str], Awaitable[list[dict[str, Any]]]]

INTERVAL_S = 5.0


def unschedulable(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False"
        for c in status.get("conditions") or []
    )


class NodeEventWatch:
    def __init__(
        self,
        pods: Lookup,
        list_events: ListEvents,
        notify: Callable[[Key], None],
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.pods = pods
        self.list_events = list_events
        self.notify = notify
        self.interval_s = interval_s
        self.by_namespace: dict[str, dict[str, NodeScaleEvent]] = {}
        self._told: dict[Key, dict[str, NodeScaleEvent]] = {}

    def for_pods(
        self, namespace: str, pods: Iterable[Mapping[str, Any]]
    ) -> dict[str, NodeScaleEvent]:
        """The newest node autoscaler Event of each of these pods that has one."""
        known = self.by_namespace.get(namespace) or {}
        return {n: known[n] for p in pods if (n := pod_name(p)) in known}

    def _waiting(self) -> dict[Key, list[Mapping[str, Any]]]:
        out: dict[Key, list[Mapping[str, Any]]] = {}
        for key in list(self.pods):
            if not isinstance(key, tuple) or len(key) != 2:
                continue
            pending = [p for p in self.pods.get(key) or () if unschedulable(p)]
            if pending:
                out[(str(key[0]), str(key[1]))] = pending
        return out

    async def _namespace(self, namespace: str) -> dict[str, NodeScaleEvent] | None:
        try:
            answers = await asyncio.gather(*(self.list_events(namespace, s) for s in SELECTORS))
        except Exception as exc:  # RBAC, the API down: keep what was known, say so
            log.warning("listing node autoscaler Events in %s failed: %s", namespace, exc)
            return None
        return newest_by_pod(e for items in answers for e in items)

    async def tick(self) -> None:
        waiting = self._waiting()
        namespaces = sorted({ns for ns, _ in waiting})
        found = await asyncio.gather(*(self._namespace(ns) for ns in namespaces))
        by_namespace: dict[str, dict[str, NodeScaleEvent]] = {}
        for ns, events in zip(namespaces, found, strict=True):
            by_namespace[ns] = events if events is not None else self.by_namespace.get(ns, {})
        self.by_namespace = by_namespace
        told: dict[Key, dict[str, NodeScaleEvent]] = {}
        for key, pods in waiting.items():
            told[key] = self.for_pods(key[0], pods)
        for key in set(told) | set(self._told):
            if told.get(key, {}) != self._told.get(key, {}):
                self.notify(key)
        self._told = {k: v for k, v in told.items() if v}

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the watch
                log.exception("node autoscaler Event tick failed")
            await asyncio.sleep(self.interval_s)
