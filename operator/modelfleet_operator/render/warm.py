"""Warm capacity (spec.warmCapacity): placeholder pods that hold room for more replicas.

Each placeholder asks for exactly what one serving pod asks for (its containers' requests and
limits, GPUs included) and is placed by the same rules (node selector, affinity, tolerations,
runtime class), so where a placeholder fits, a replica fits. They run a pause container at a
negative priority: a serving pod (priority 0 or more) that finds no room preempts one at
once, and the displaced placeholder, Pending now, is what asks a node autoscaler for a new
node. This is Cluster Autoscaler's documented overprovisioning pattern; its priority (-1 by
default) stays above CA's expendable cut-off (-10), below which CA would ignore the pods.

The placeholders carry none of the serving pods' selector labels: the Service, the PDB, the
builtin autoscaler and status never count them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec import ModelDeploymentSpec
from .common import MANAGED_BY_LABEL, MANAGER, Owner, RenderConfig, owner_reference

KIND = "WarmCapacity"  # the child's kind in plans; on the API it is a Deployment
NAME_SUFFIX = "-warm"
FOR_LABEL = "modelfleet.io/warm-capacity-for"
COMPONENT = "warm-capacity"
PAUSE_USER = 65535  # the pause image's own user
# What a placeholder copies from a serving pod: what decides where it fits.
_PLACEMENT = ("nodeSelector", "affinity", "tolerations", "runtimeClassName")


def child_kind(manifest: dict[str, Any]) -> str:
    """The kind a plan files a rendered child under: the placeholder Deployment is not the
    serving one."""
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    component = labels.get("app.kubernetes.io/component")
    if manifest.get("kind") == "Deployment" and component == COMPONENT:
        return KIND
    return str(manifest.get("kind"))


def warm_name(md_name: str) -> str:
    return md_name + NAME_SUFFIX


def warm_selector(owner: Owner) -> dict[str, str]:
    # Immutable in a Deployment: never add to this set.
    return {FOR_LABEL: owner.name, MANAGED_BY_LABEL: MANAGER}


def warm_labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelfleet-warm-capacity",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "modelfleet",
        **warm_selector(owner),
    }


def _placeholder(index: int, container: Mapping[str, Any], image: str) -> dict[str, Any]:
    return {
        "name": f"placeholder-{index}",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": container.get("resources") or {},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": PAUSE_USER,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def render_warm_capacity(
    owner: Owner, spec: ModelDeploymentSpec, config: RenderConfig, serving: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The placeholder Deployment, None without spec.warmCapacity. ``serving`` is the
    serving pod's spec as rendered (the Deployment's template): what to ask and where."""
    if spec.warm_capacity is None:
        return None
    pod: dict[str, Any] = {
        "priorityClassName": config.warm_capacity_priority_class,
        # A placeholder gives way in an instant: nothing in it needs a grace period.
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": PAUSE_USER,
            "runAsGroup": PAUSE_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # One pause container per serving container, each asking what that one asks: the
        # pod's total is the serving pod's (its init containers ask no more than these).
        "containers": [
            _placeholder(i, c, config.warm_capacity_image)
            for i, c in enumerate(serving["containers"])
        ],
        **{k: serving[k] for k in _PLACEMENT if k in serving},
    }
    labels = warm_labels(owner)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": warm_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "replicas": spec.warm_capacity.replicas,
            "selector": {"matchLabels": warm_selector(owner)},
            "strategy": {"type": "Recreate"},  # room, not service: no surge needed
            "revisionHistoryLimit": 1,
            "template": {
                "metadata": {
                    "labels": labels,
                    # Nothing on it to keep: a node holding only placeholders may go.
                    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
                },
                "spec": pod,
            },
        },
    }
