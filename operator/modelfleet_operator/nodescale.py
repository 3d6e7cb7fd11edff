"""What a node autoscaler said about a pending pod, from the Events it posts on the pod.

Cluster Autoscaler posts ``TriggeredScaleUp`` ("pod triggered scale-up: [{group 0->1 (max:
4)}]") or ``NotTriggerScaleUp`` ("pod didn't trigger scale-up: ..."); Karpenter posts
``Nominated`` ("Pod should schedule on: nodeclaim/<pool>-<suffix>") or, as component
``karpenter``, ``FailedScheduling`` ("Failed to schedule pod, no instance type ..."). The
scheduler's own ``FailedScheduling`` (component ``default-scheduler``) is not one of them.

Pure: the event watch (nodewatch.py) lists these Events; status.py turns the newest one per
pod into ``WaitingForNode`` or ``NoNodeGroupFits``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WAITING = "waiting"  # a node is on its way for the pod
NO_FIT = "no-fit"  # the node autoscaler can bring no node the pod fits on

# (reason, the component that must have posted it, or None for any) -> outcome
KNOWN: dict[tuple[str, str | None], str] = {
    ("TriggeredScaleUp", None): WAITING,
    ("NotTriggerScaleUp", None): NO_FIT,
    ("Nominated", "karpenter"): WAITING,
    ("FailedScheduling", "karpenter"): NO_FIT,
}
# The field selectors nodewatch.py lists with (an equality per field: the API server's only
# operators on Events are = and !=).
SELECTORS: tuple[str, ...] = tuple(
    "involvedObject.kind=Pod,reason=" + reason + (f",source={component}" if component else "")
    for reason, component in KNOWN
)

_CA_GROUP_RE = re.compile(r"\{(\S+) (\d+)->(\d+) \(max: (\d+)\)\}")
_NODECLAIM_RE = re.compile(r"nodeclaim/([a-z0-9.-]+)")


@dataclass(frozen=True)
class NodeScaleEvent:
    outcome: str  # WAITING or NO_FIT
    component: str
    reason: str
    message: str
    at: str  # RFC 3339, the newest time the event was seen

    def describe(self) -> str:
        """The status message: the node group named where the event names it."""
        if self.outcome == WAITING and self.reason == "TriggeredScaleUp":
            groups = [
                f"node group {g} {a} -> {b} (max {m})"
                for g, a, b, m in _CA_GROUP_RE.findall(self.message)
            ]
            if groups:
                return f"{self.component} is adding a node: {', '.join(groups)}"
        if self.outcome == WAITING and self.reason == "Nominated":
            claim = _NODECLAIM_RE.search(self.message)
            if claim:
                # Karpenter names a NodeClaim after its NodePool plus a 5-character suffix.
                pool = claim.group(1).rsplit("-", 1)[0]
                return (
                    f"{self.component} is launching a node: node pool {pool} "
                    f"(nodeclaim {claim.group(1)})"
                )
        return f"{self.component}: {self.message}"


def _component(event: Mapping[str, Any]) -> str:
    source = event.get("source") or {}
    return str(source.get("component") or event.get("reportingComponent") or "")


def _time(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        if isinstance(value, str) and value:
            return value
    return ""


def recognize(event: Mapping[str, Any]) -> tuple[str, NodeScaleEvent] | None:
    """(the pod's name, what the node autoscaler said) for an Event about a pod, else None."""
    involved = event.get("involvedObject") or {}
    if involved.get("kind") != "Pod" or not involved.get("name"):
        return None
    reason = str(event.get("reason") or "")
    component = _component(event)
    outcome = KNOWN.get((reason, None)) or KNOWN.get((reason, component))
    if outcome is None:
        return None
    return str(involved["name"]), NodeScaleEvent(
        outcome=outcome,
        component=component or "node autoscaler",
        reason=reason,
        message=" ".join(str(event.get("message") or "").split()),
        at=_time(event),
    )


def newest_by_pod(events: Iterable[Mapping[str, Any]]) -> dict[str, NodeScaleEvent]:
    """The newest recognized Event per pod name (RFC 3339 times in UTC sort as strings;
    a later scale-up after a refusal, or the other way round, wins)."""
    out: dict[str, NodeScaleEvent] = {}
    for event in events:
        found = recognize(event)
        if found is None:
            continue
        pod, said = found
        old = out.get(pod)
        if old is None or said.at >= old.at:
            out[pod] = said
    return out
