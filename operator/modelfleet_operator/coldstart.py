"""How long a serving pod took to start, phase by phase (pure), from the timestamps the
API server already keeps on the pod and its node: no clock of ours, so an operator restart
changes nothing and a pod's phases can be read back at any time.

- ``node``: waiting for a node that did not exist when the pod was created (a node
  autoscaler bringing up a GPU node): node creation - pod creation;
- ``scheduling``: the rest of the time to PodScheduled;
- ``fetch``: PodScheduled -> Initialized (the init container: pulling its image and fetching
  the model);
- ``image``: Initialized -> the runtime container's start (pulling the runtime image);
- ``model_load``: container start -> Ready (loading the model, warm-up, readiness probe);
- ``total``: pod creation -> Ready.

Timestamps have one-second resolution; a phase whose ends are missing is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

PHASES = ("node", "scheduling", "fetch", "image", "model_load", "total")


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _condition_time(pod: Mapping[str, Any], type_: str) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return _time(c.get("lastTransitionTime"))
    return None


def _started(pod: Mapping[str, Any], container: str | None) -> float | None:
    times = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if container is not None and cs.get("name") != container:
            continue
        running = (cs.get("state") or {}).get("running") or {}
        started = _time(running.get("startedAt"))
        if started is not None:
            times.append(started)
    return min(times) if times else None


def ready_time(pod: Mapping[str, Any]) -> float | None:
    """When the pod last became Ready (epoch seconds), if it is."""
    return _condition_time(pod, "Ready")


def startup_phases(
    pod: Mapping[str, Any],
    node: Mapping[str, Any] | None = None,
    container: str | None = "runtime",
) -> dict[str, float] | None:
    """Seconds per phase of a Ready pod; None while it is not Ready (or says nothing)."""
    created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
    ready = _condition_time(pod, "Ready")
    if created is None or ready is None:
        return None
    scheduled = _condition_time(pod, "PodScheduled")
    initialized = _condition_time(pod, "Initialized")
    started = _started(pod, container)
    out: dict[str, float] = {"total": max(0.0, ready - created)}
    node_created = _time(((node or {}).get("metadata") or {}).get("creationTimestamp"))
    waited = 0.0
    if node_created is not None and node_created > created:
        waited = node_created - created
        if scheduled is not None:
            waited = min(waited, scheduled - created)
    out["node"] = max(0.0, waited)
    marks = [("scheduling", created + waited, scheduled), ("fetch", scheduled, initialized)]
    marks += [("image", initialized, started), ("model_load", started, ready)]
    for phase, begin, end in marks:
        if begin is not None and end is not None:
            out[phase] = max(0.0, end - begin)
    return out


def describe(phases: Mapping[str, float]) -> str:
    return ", ".join(f"{p.replace('_', ' ')} {phases[p]:.0f}s" for p in PHASES if p in phases)
