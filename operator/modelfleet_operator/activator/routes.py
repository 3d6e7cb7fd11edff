"""The routing table: which port stands for which ModelDeployment, its hold settings, and
its ready backends, from the EndpointSlice dicts the watch holds. Pure: no I/O.

Two kinds of slice carry ``app.kubernetes.io/managed-by: modelfleet-operator``:

- the operator's activator slice of a ModelDeployment (``endpointslice.kubernetes.io/
  managed-by: activator.modelfleet.io``): its ``http`` port is the port this process listens
  on for that ModelDeployment, its annotations the hold cap and deadline;
- the Service's own slices (any other ``managed-by``, normally Kubernetes' EndpointSlice
  controller, which copies the Service's labels): their ready endpoints are the replicas.

A slice that cannot be read is skipped and named in ``Table.problems``, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..render.activator import (
    HOLD_TIMEOUT_ANNOTATION,
    MAX_HELD_ANNOTATION,
    SERVICE_NAME_LABEL,
    SLICE_MANAGED_BY_LABEL,
    SLICE_MANAGER,
)
from ..render.common import MANAGED_BY_LABEL, MANAGER

# autoscale.loop.SIMULATED_METRICS_ANNOTATION (that module does I/O; a unit test ties them)
SIMULATED_ADDRESSES_ANNOTATION = "modelfleet.io/simulated-metrics-addresses"
# The one label selector of the watch: both kinds of slice carry it.
SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"
PORT_NAME = "http"
# When an activator slice lacks the annotations (the operator always writes them).
DEFAULT_MAX_HELD = 100
DEFAULT_HOLD_TIMEOUT_S = 1200.0
MIN_PORT = 1024

Key = tuple[str, str]  # (namespace, ModelDeployment name)


@dataclass(frozen=True)
class Backend:
    """One ready replica: ``address`` is host:port, None where it cannot be reached (a
    simulated replica without an address)."""

    pod: str
    address: str | None


@dataclass(frozen=True)
class Route:
    key: Key
    port: int
    max_held: int
    hold_timeout_s: float
    backends: tuple[Backend, ...] = ()

    @property
    def reachable(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.address)


@dataclass(frozen=True)
class Table:
    routes: Mapping[Key, Route] = field(default_factory=dict)
    by_port: Mapping[int, Key] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _str_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _ref(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"EndpointSlice {meta.get('namespace') or '?'}/{meta.get('name') or '?'}"


def _named_port(obj: Mapping[str, Any]) -> int | str | None:
    """The ``http`` port (or the only port when none is named): an int, None when the slice
    has no such port, or a message saying what is wrong with it."""
    ports = obj.get("ports")
    if not isinstance(ports, list) or not ports:
        return None
    items = [p for p in ports if isinstance(p, Mapping)]
    named = [p for p in items if p.get("name") == PORT_NAME]
    chosen = named[0] if named else (items[0] if len(items) == 1 else None)
    if chosen is None:
        return None
    port = chosen.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"port {port!r} is not a number in 1..65535"
    return port


def _whole(text: str | None, default: int, what: str, problems: list[str], ref: str) -> int:
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        problems.append(f"{ref}: {what} {text!r} is not a whole number >= 0; using {default}")
        return default
    return value


def _seconds(text: str | None, default: float, what: str, problems: list[str], ref: str) -> float:
    if text is None:
        return default
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        problems.append(f"{ref}: {what} {text!r} is not a number of seconds > 0; using {default}")
        return default
    return value


def _ready(endpoint: Mapping[str, Any]) -> bool:
    # The API: "nil should be interpreted as true" for ready.
    conditions = endpoint.get("conditions")
    ready = conditions.get("ready") if isinstance(conditions, Mapping) else None
    return ready is None or ready is True


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def ready_endpoints(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(pod name, host:port) of each ready endpoint of a Service's slice; the pod name is the
    targetRef's, else the address."""
    port = _named_port(obj)
    if not isinstance(port, int) or obj.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return []
    out: list[tuple[str, str]] = []
    endpoints = obj.get("endpoints")
    for ep in endpoints if isinstance(endpoints, list) else ():
        if not isinstance(ep, Mapping) or not _ready(ep):
            continue
        addresses = ep.get("addresses")
        if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
            continue
        ref = ep.get("targetRef")
        pod = ref.get("name") if isinstance(ref, Mapping) else None
        out.append((str(pod or addresses[0]), _host_port(addresses[0], port)))
    return out


def simulated(
    endpoints: Sequence[tuple[str, str]], annotations: Mapping[str, str]
) -> tuple[Backend, ...]:
    """Dev/test on a simulated cluster (env MODELFLEET_SIMULATED_METRICS=1): the i-th ready
    endpoint by pod name is reached at the i-th address of the activator slice's
    ``modelfleet.io/simulated-metrics-addresses`` (space separated); past the list's end an
    endpoint is unreachable. Without the annotation, the endpoints' own addresses (as the
    operator's autoscaler does, ``autoscale.loop.simulated_addresses``)."""
    listed = annotations.get(SIMULATED_ADDRESSES_ANNOTATION, "").split()
    ordered = sorted(dict(endpoints).items())
    if not listed:
        return tuple(Backend(pod, address) for pod, address in ordered)
    return tuple(
        Backend(pod, listed[i] if i < len(listed) else None) for i, (pod, _) in enumerate(ordered)
    )


def build_table(
    slices: Iterable[Mapping[str, Any]],
    *,
    simulate: bool = False,
    reserved_ports: Iterable[int] = (),
) -> Table:
    """The table for these slices. ``reserved_ports`` (the process's own) and ports below
    1024 are refused; two ModelDeployments on one port: the first by namespace/name keeps it."""
    problems: list[str] = []
    ours: dict[Key, list[Mapping[str, Any]]] = {}
    theirs: dict[Key, list[Mapping[str, Any]]] = {}
    for obj in slices:
        if not isinstance(obj, Mapping):
            problems.append(f"not an EndpointSlice object: {type(obj).__name__}")
            continue
        meta = _meta(obj)
        labels = _str_map(meta.get("labels"))
        namespace, service = meta.get("namespace"), labels.get(SERVICE_NAME_LABEL)
        if not isinstance(namespace, str) or not namespace or not service:
            problems.append(f"{_ref(obj)}: no namespace or no {SERVICE_NAME_LABEL} label")
            continue
        into = ours if labels.get(SLICE_MANAGED_BY_LABEL) == SLICE_MANAGER else theirs
        into.setdefault((namespace, service), []).append(obj)

    reserved = set(reserved_ports)
    routes: dict[Key, Route] = {}
    by_port: dict[int, Key] = {}
    for key in sorted(ours):
        candidates = sorted(ours[key], key=lambda o: str(_meta(o).get("name")))
        preferred = [o for o in candidates if _meta(o).get("name") == key[1]]
        obj = (preferred or candidates)[0]
        ref = _ref(obj)
        if len(candidates) > 1:
            problems.append(
                f"ModelDeployment {key[0]}/{key[1]} has {len(candidates)} activator slices; "
                f"using {ref}"
            )
        port = _named_port(obj)
        if port is None:
            problems.append(f"{ref}: no port named {PORT_NAME!r}; not listening for it")
            continue
        if isinstance(port, str):
            problems.append(f"{ref}: {port}; not listening for it")
            continue
        if port < MIN_PORT or port in reserved:
            problems.append(
                f"{ref}: port {port} is refused (below {MIN_PORT} or the activator's own)"
            )
            continue
        if port in by_port:
            other = by_port[port]
            problems.append(
                f"{ref}: port {port} is already {other[0]}/{other[1]}'s; not listening for it"
            )
            continue
        annotations = _str_map(_meta(obj).get("annotations"))
        max_held = _whole(
            annotations.get(MAX_HELD_ANNOTATION), DEFAULT_MAX_HELD, MAX_HELD_ANNOTATION,
            problems, ref,
        )  # fmt: skip
        hold = _seconds(
            annotations.get(HOLD_TIMEOUT_ANNOTATION), DEFAULT_HOLD_TIMEOUT_S,
            HOLD_TIMEOUT_ANNOTATION, problems, ref,
        )  # fmt: skip
        endpoints = [e for s in theirs.get(key, ()) for e in ready_endpoints(s)]
        if simulate:
            backends = simulated(endpoints, annotations)
        else:
            # one replica may be listed by two slices while the controller moves it
            unique = dict(sorted({address: pod for pod, address in endpoints}.items()))
            backends = tuple(Backend(pod, address) for address, pod in unique.items())
        routes[key] = Route(key, port, max_held, hold, backends)
        by_port[port] = key
    return Table(routes=routes, by_port=by_port, problems=tuple(problems))
