"""Scale to zero: the EndpointSlice that puts the activator behind the ModelDeployment's
Service while no replica is ready.

The Service keeps its selector, so Kubernetes' EndpointSlice controller lists the serving
pods as it always does. This second slice of the same Service (``kubernetes.io/service-name``)
is the operator's (``endpointslice.kubernetes.io/managed-by``): while no replica is ready it
lists the activator's pods on a port that stands for this ModelDeployment alone; once one is,
it lists none, and callers reach the pods directly. A caller never meets a Service with no
endpoint, and the activator never sits in the path of a serving ModelDeployment.

The activator (``modelfleet_operator.activator``) reads the same slice: its port, the hold
settings in the annotations, and the backends from the controller's slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..spec import ModelDeploymentSpec
from .common import Owner, metadata, passthrough_annotations

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "activator.modelfleet.io"
MAX_HELD_ANNOTATION = "modelfleet.io/max-held-requests"
HOLD_TIMEOUT_ANNOTATION = "modelfleet.io/hold-timeout-seconds"


@dataclass(frozen=True)
class ActivatorEndpoint:
    """One activator pod, from the activator Service's EndpointSlices."""

    ip: str
    pod: str | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class ActivatorRoute:
    """Where this ModelDeployment's held requests go: the activator's ready pods (none:
    no activator is ready) and the port it listens on for this ModelDeployment."""

    port: int
    endpoints: tuple[ActivatorEndpoint, ...] = ()


def render_activator_slice(
    owner: Owner, spec: ModelDeploymentSpec, route: ActivatorRoute, *, serving: bool
) -> dict[str, Any]:
    """``serving``: a replica is ready and spec.replicas > 0, so the slice lists nothing."""
    auto = spec.autoscaling
    assert auto is not None and auto.scale_to_zero is not None
    meta = metadata(owner, spec)
    meta["labels"] = {
        **meta["labels"],
        SERVICE_NAME_LABEL: owner.name,
        SLICE_MANAGED_BY_LABEL: SLICE_MANAGER,
    }
    meta["annotations"] = {
        MAX_HELD_ANNOTATION: str(auto.scale_to_zero.max_held_requests),
        HOLD_TIMEOUT_ANNOTATION: str(auto.scale_to_zero.hold_timeout_s),
        **passthrough_annotations(owner),
    }
    endpoints: list[dict[str, Any]] = []
    if not serving:
        for ep in sorted(route.endpoints, key=lambda e: e.ip):
            item: dict[str, Any] = {"addresses": [ep.ip], "conditions": {"ready": True}}
            if ep.pod and ep.namespace:
                item["targetRef"] = {"kind": "Pod", "name": ep.pod, "namespace": ep.namespace}
            endpoints.append(item)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": route.port, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": endpoints,
    }


def slice_port(live: Mapping[str, Any] | None) -> int | None:
    """The port a live activator slice holds (its allocation), if it holds a sane one."""
    for port in (live or {}).get("ports") or []:
        value = port.get("port") if isinstance(port, Mapping) else None
        if isinstance(value, int) and 1024 <= value <= 65535:
            return value
    return None


def allocate_port(
    current: int | None, taken: Sequence[int] | set[int], port_range: tuple[int, int]
) -> int | None:
    """Keep ``current`` when it is in range and nobody else holds it, else the lowest free
    port of the range (None: the range is full)."""
    low, high = port_range
    used = set(taken)
    if current is not None and low <= current <= high and current not in used:
        return current
    for port in range(low, high + 1):
        if port not in used:
            return port
    return None
