"""Sample ModelDeployment bodies and cluster objects for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"


def md(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "resnet",
    namespace: str = "ml",
    annotations: dict[str, str] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/resnet50/3", "format": "torchscript", "version": "3"},
        "gpu": {"count": 1, "products": [H100]},
        "replicas": 2,
    }
    if spec is not None:
        base = deep_merge(base, spec)
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "uid-1234",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": base,
    }


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``; a None value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def node(
    name: str,
    *,
    gpus: int = 0,
    product: str | None = None,
    resources: dict[str, str] | None = None,
    unschedulable: bool = False,
    memory_mib: int | None = None,
) -> dict[str, Any]:
    alloc = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    alloc.update(resources or {})
    labels: dict[str, str] = {"kubernetes.io/hostname": name}
    if product:
        labels["nvidia.com/gpu.product"] = product
    if memory_mib:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod_on(
    node_name: str, *, gpus: int = 0, resource: str = "nvidia.com/gpu", phase: str = "Running"
) -> dict[str, Any]:
    limits = {resource: str(gpus)} if gpus else {}
    return {
        "metadata": {"name": f"p-{node_name}"},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }
