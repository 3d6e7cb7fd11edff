"""GPU capacity from node and pod objects (pure): what fits where, and which products exist."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .spec import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GPUSpec

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class GPUCapacity:
    nodes: int  # all nodes seen
    offering: int  # nodes with this resource and an accepted product
    spare_pods: int  # extra pods of this shape that fit right now
    free_max: int  # most free units of the resource on one accepted node


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def node_offers(node: Mapping[str, Any], gpu: GPUSpec) -> bool:
    """Whether a node has the resource and the product/memory the spec accepts."""
    meta = node.get("metadata") or {}
    node_labels = meta.get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    if _int(allocatable.get(gpu.resource)) <= 0:
        return False
    if gpu.products and node_labels.get(GPU_PRODUCT_LABEL) not in gpu.products:
        return False
    return not (gpu.min_memory_mib and _int(node_labels.get(GPU_MEMORY_LABEL)) < gpu.min_memory_mib)


def _schedulable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return True


def pod_usage(pod: Mapping[str, Any], resource: str) -> int:
    """Units of an extended resource a pod holds (limits; init containers count at most)."""
    spec = pod.get("spec") or {}

    def amount(c: Mapping[str, Any]) -> int:
        res = c.get("resources") or {}
        return _int(
            (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource)
        )

    main = sum(amount(c) for c in spec.get("containers") or [])
    init = max((amount(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def gpu_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], gpu: GPUSpec
) -> GPUCapacity:
    node_list = list(nodes)
    used: dict[str, int] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        used[node_name] = used.get(node_name, 0) + pod_usage(pod, gpu.resource)
    offering = 0
    spare = 0
    free_max = 0
    for node in node_list:
        if not node_offers(node, gpu):
            continue
        offering += 1
        if not _schedulable(node):
            continue
        name = (node.get("metadata") or {}).get("name", "")
        alloc = _int(((node.get("status") or {}).get("allocatable") or {}).get(gpu.resource))
        free = max(0, alloc - used.get(name, 0))
        free_max = max(free_max, free)
        spare += free // max(1, gpu.quantity)
    return GPUCapacity(nodes=len(node_list), offering=offering, spare_pods=spare, free_max=free_max)
