"""What the operator keeps of each watched object, and what one reconcile reads (pure).

The watches (handlers.py) feed kopf indexes with these trimmed copies: only the fields a plan
or a status reads, so 1000 ModelDeployments with their pods and children stay small in
memory, and a reconcile reads the cluster's state without a single GET or LIST.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .nodescale import NodeScaleEvent
from .render.activator import ActivatorEndpoint, ActivatorRoute
from .render.common import INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER
from .render.deployment import API_KEYS_REVISION_ANNOTATION
from .render.warm import COMPONENT as WARM_COMPONENT
from .render.warm import KIND as WARM_KIND
from .render.warm import NAME_SUFFIX as WARM_SUFFIX
from .spec import GROUP, KIND, InvalidSpec, ModelDeploymentSpec, parse_spec

Obj = Mapping[str, Any]

# Children, by kind; each is named after its ModelDeployment.
CHILD_KINDS = (
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ScaledObject",  # KEDA's (engine keda); unwatched where KEDA's CRD is not installed
    "EndpointSlice",  # the activator's, with scale to zero (render/activator.py)
    WARM_KIND,  # spec.warmCapacity's placeholder Deployment, named <name>-warm (render/warm.py)
)
# Kinds only some ModelDeployments want: a stranger holding the name conflicts only then.
OPTIONAL_KINDS = ("EndpointSlice", WARM_KIND)
GPU_RESOURCE_PREFIX = "nvidia.com/"
TERMINAL_PHASES = ("Succeeded", "Failed")


def _meta(body: Obj, *extra: str) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    out = {
        k: meta[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            *extra,
        )
        if meta.get(k) is not None
    }
    return out


def md_key(body: Obj) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def trim_md(body: Obj) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": _meta(body, "annotations", "labels"),
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


def controller_ref(body: Obj) -> Mapping[str, Any] | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _md_owner(body: Obj) -> str | None:
    ref = controller_ref(body)
    if ref and ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/"):
        return str(ref.get("name"))
    return None


def _applied_by_us(body: Obj) -> bool:
    return any(
        m.get("manager") == MANAGER and m.get("operation") == "Apply"
        for m in (body.get("metadata") or {}).get("managedFields") or []
    )


def trim_child(body: Obj) -> dict[str, Any]:
    """A child-kind object: whole (less managedFields) when it may be ours, else a stub that
    only says a stranger holds the name."""
    ref = controller_ref(body)
    maybe_ours = _md_owner(body) is not None or (ref is None and _applied_by_us(body))
    meta = _meta(body, "labels", "annotations", "ownerReferences")
    meta["appliedByUs"] = _applied_by_us(body)
    if not maybe_ours:
        return {
            "kind": body.get("kind"),
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "ownerReferences") if k in meta
            },
        }
    out = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": meta,
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }
    if body.get("kind") == "EndpointSlice":  # no spec: its fields are at the top
        out.pop("spec")
        out.pop("status")
        out.update({k: body.get(k) for k in ("addressType", "ports", "endpoints")})
    return out


def trim_activator_slice(body: Obj) -> dict[str, Any]:
    """One of the activator Service's EndpointSlices (Kubernetes' controller owns them, so
    ``trim_child`` would keep a stranger's stub): what ``activator_endpoints`` and
    ``activator_metrics_port`` read."""
    return {
        "kind": "EndpointSlice",
        "metadata": _meta(body, "labels"),
        **{k: body.get(k) for k in ("addressType", "ports", "endpoints")},
    }


def is_generated_slice(body: Obj) -> bool:
    """An EndpointSlice made by a controller (named from generateName, as Kubernetes'
    EndpointSlice controller does): never a child's name holder."""
    return bool((body.get("metadata") or {}).get("generateName"))


def activator_endpoints(body: Obj) -> list[ActivatorEndpoint]:
    """The ready activator pods one of the activator Service's EndpointSlices lists."""
    out = []
    for ep in body.get("endpoints") or []:
        if not isinstance(ep, Mapping):
            continue
        conditions = ep.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating"):
            continue
        ref = ep.get("targetRef") or {}
        for address in ep.get("addresses") or []:
            out.append(
                ActivatorEndpoint(
                    ip=str(address),
                    pod=ref.get("name") if ref.get("kind") == "Pod" else None,
                    namespace=ref.get("namespace") if ref.get("kind") == "Pod" else None,
                )
            )
    return out


def activator_metrics_port(body: Obj, name: str = "metrics") -> int | None:
    for port in body.get("ports") or []:
        if isinstance(port, Mapping) and port.get("name") == name:
            value = port.get("port")
            return value if isinstance(value, int) else None
    return None


def warm_key(body: Obj) -> tuple[str, str] | None:
    """The ModelDeployment a Deployment named ``<name>-warm`` would be the placeholder
    Deployment of, whoever holds it (a stranger's is a conflict, so it is filed too)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    if len(name) <= len(WARM_SUFFIX) or not name.endswith(WARM_SUFFIX):
        return None
    return (str(meta.get("namespace") or ""), name.removesuffix(WARM_SUFFIX))


def child_object(kind: str, md_name: str) -> tuple[str, str]:
    """The API kind and the name of a ModelDeployment's child of plan kind ``kind``."""
    if kind == WARM_KIND:
        return ("Deployment", md_name + WARM_SUFFIX)
    return (kind, md_name)


def is_placeholder(body: Obj) -> bool:
    """A warm-capacity placeholder pod: room held, not a GPU in use."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(MANAGED_BY_LABEL) == MANAGER
        and labels.get("app.kubernetes.io/component") == WARM_COMPONENT
    )


def owner_of_child(body: Obj) -> str | None:
    """The ModelDeployment a child event concerns: its controller, or the name it holds."""
    return _md_owner(body) or (body.get("metadata") or {}).get("name")


def is_ours(child: Obj, md_uid: str) -> bool:
    """Ours: controlled by this ModelDeployment (uid), or applied by us and controlled by
    nobody (someone stripped the owner reference). Labels do not decide: a removed
    managed-by label is drift to restore, not a stranger."""
    meta = child.get("metadata") or {}
    ref = controller_ref(child)
    if ref is not None:
        return bool(ref.get("uid") == md_uid and ref.get("kind") == KIND)
    return bool(meta.get("appliedByUs"))


def pod_owner(body: Obj) -> str | None:
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGER:
        return None
    return labels.get(INSTANCE_LABEL)


def pod_name(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("name"))


class ParsedSpecs:
    """Each ModelDeployment's parsed spec, parsed again only when its generation moves: the
    loops that visit every object every tick (autoscaler, usage) share this. Parsing every
    object every tick cost ~3.5% CPU at 300 objects with none autoscaled (py-spy, idle
    operator)."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], tuple[Any, ModelDeploymentSpec | None]] = {}

    def live(self, mds: Any) -> list[tuple[tuple[str, str], Obj, ModelDeploymentSpec]]:
        """(key, body, spec) of each ModelDeployment in the index that is not being deleted
        and whose spec is valid; entries of objects gone from the index are dropped."""
        out = []
        keys = list(mds)
        for key in keys:
            md = next(iter(mds.get(key) or ()), None)
            if md is None or (md.get("metadata") or {}).get("deletionTimestamp"):
                continue
            generation = (md.get("metadata") or {}).get("generation")
            cached = self._specs.get(key)
            if cached is None or cached[0] != generation or generation is None:
                try:
                    cached = (generation, parse_spec(md.get("spec"), name=key[1]))
                except InvalidSpec:
                    cached = (generation, None)
                self._specs[key] = cached
            if cached[1] is not None:
                out.append((key, md, cached[1]))
        present = set(keys)
        for gone in [k for k in self._specs if k not in present]:
            del self._specs[gone]
        return out


def pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_live(pod: Obj) -> bool:
    """Not on its way out: not deleting, not finished."""
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def trim_pod(body: Obj) -> dict[str, Any]:
    status = body.get("status") or {}
    meta = _meta(body, "labels", "creationTimestamp")
    told = ((body.get("metadata") or {}).get("annotations") or {}).get(API_KEYS_REVISION_ANNOTATION)
    if told is not None:  # the only annotation read (apikeys.pods_to_tell)
        meta["annotations"] = {API_KEYS_REVISION_ANNOTATION: told}
    return {
        "metadata": meta,
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            k: status[k]
            # podIP: where the builtin autoscaler scrapes the runtime's /metrics.
            for k in ("phase", "conditions", "containerStatuses", "initContainerStatuses", "podIP")
            if k in status
        },
    }


def _gpu_limits(container: Obj) -> dict[str, str]:
    res = container.get("resources") or {}
    merged = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    return {k: str(v) for k, v in merged.items() if k.startswith(GPU_RESOURCE_PREFIX)}


def trim_gpu_pod(body: Obj) -> dict[str, Any] | None:
    """A pod holding GPUs (or MIG slices) on a node: what capacity.py counts. None else."""
    spec = body.get("spec") or {}
    phase = (body.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in TERMINAL_PHASES:
        return None
    if is_placeholder(body):
        return None  # a serving pod takes its room at once (it preempts it): free for plans
    containers = [{"resources": {"limits": _gpu_limits(c)}} for c in spec.get("containers") or []]
    inits = [{"resources": {"limits": _gpu_limits(c)}} for c in spec.get("initContainers") or []]
    if not any(c["resources"]["limits"] for c in containers + inits):
        return None
    return {
        "metadata": _meta(body),
        "spec": {"nodeName": spec["nodeName"], "containers": containers, "initContainers": inits},
        "status": {"phase": phase},
    }


def trim_node(body: Obj) -> dict[str, Any]:
    status = body.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return {
        "metadata": {
            "name": (body.get("metadata") or {}).get("name"),
            "labels": (body.get("metadata") or {}).get("labels") or {},
            # a node newer than a pod is one the pod waited for (coldstart.py)
            "creationTimestamp": (body.get("metadata") or {}).get("creationTimestamp"),
        },
        "spec": {"unschedulable": bool((body.get("spec") or {}).get("unschedulable"))},
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [{"type": "Ready", "status": c.get("status")} for c in ready],
        },
    }


def trim_pvc(body: Obj) -> dict[str, Any]:
    return {"metadata": _meta(body), "status": {"phase": (body.get("status") or {}).get("phase")}}


@dataclass(frozen=True)
class Facts:
    """Everything one reconcile reads, as the watches last saw it.

    ``nodes``/``gpu_pods`` are None when the operator cannot see them (no RBAC):
    capacity is then unknown and rollouts stay conservative."""

    md: Obj
    children: Mapping[str, Obj]  # kind -> the live object holding the child's name
    pods: Sequence[Obj] = ()
    pvc: Obj | None = None
    nodes: Sequence[Obj] | None = None
    gpu_pods: Sequence[Obj] | None = None
    # With scale to zero: the activator's port for this ModelDeployment and its ready pods
    # (None: no activator configured, or no port left in its range)
    activator: ActivatorRoute | None = None
    # pod name -> the newest node autoscaler Event on it (only pods that wait for a node)
    node_events: Mapping[str, NodeScaleEvent] = field(default_factory=dict)
    # spec.auth's Secret as apikeys.trim_secret keeps it (None: no spec.auth, or not found)
    api_key_secret: Obj | None = None
    api_key_secret_found: bool = True
