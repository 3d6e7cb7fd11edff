"""What every rendered child shares: the owner, labels, owner reference, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec import API_VERSION, KIND, ModelDeploymentSpec

MANAGER = "modelfleet-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# Pod annotations copied from the ModelDeployment (dev/test knobs such as kwok's load delay).
PASSTHROUGH_ANNOTATION_PREFIXES = ("modelfleet.io/simulated-",)
TEMPLATE_HASH_ANNOTATION = "modelfleet.io/template-hash"
STRATEGY_ANNOTATION = "modelfleet.io/rollout-strategy"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/modelfleet/runtime:0.1.0"
DEFAULT_WARM_PRIORITY_CLASS = "modelfleet-warm-capacity"
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment as the renderers need it."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
            annotations=dict(meta.get("annotations") or {}),
        )


@dataclass(frozen=True)
class RenderConfig:
    """Operator-wide settings the renderers read."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # spec.warmCapacity's placeholder pods: their PriorityClass (the chart makes it, value
    # -1) and their image (what kubelets already hold: the pod sandbox's own pause image).
    warm_capacity_priority_class: str = DEFAULT_WARM_PRIORITY_CLASS
    warm_capacity_image: str = DEFAULT_PAUSE_IMAGE


def selector_labels(owner: Owner) -> dict[str, str]:
    # Immutable in a Deployment: never add to this set.
    return {INSTANCE_LABEL: owner.name, MANAGED_BY_LABEL: MANAGER}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def labels(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "modelfleet-runtime",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "modelfleet",
        "app.kubernetes.io/version": _label_value(spec.model.version),
        "modelfleet.io/model": _label_value(spec.model.name),
    }
    out.update(selector_labels(owner))
    return out


def _label_value(value: str) -> str:
    # Label values: <=63 chars, alphanumeric at both ends; model names are already close.
    return value[:63].strip("-_.") or "none"


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, spec: ModelDeploymentSpec, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or owner.name,
        "namespace": owner.namespace,
        "labels": labels(owner, spec),
        "ownerReferences": [owner_reference(owner)],
    }


def passthrough_annotations(owner: Owner) -> dict[str, str]:
    return {
        k: v for k, v in owner.annotations.items() if k.startswith(PASSTHROUGH_ANNOTATION_PREFIXES)
    }
