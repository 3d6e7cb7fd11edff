"""What the operator reads from the activator Service's EndpointSlices (Kubernetes'
EndpointSlice controller owns them, so they are not children to stub)."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.observe import (
    activator_endpoints,
    activator_metrics_port,
    trim_activator_slice,
    trim_child,
)
from modelfleet_operator.render.activator import ActivatorEndpoint

SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "modelfleet-activator-x7k2p",
        "namespace": "modelfleet-system",
        "generateName": "modelfleet-activator-",
        "labels": {"kubernetes.io/service-name": "modelfleet-activator"},
        "ownerReferences": [
            {"kind": "Service", "name": "modelfleet-activator", "uid": "s", "controller": True}
        ],
        "managedFields": [{"manager": "endpointslice-controller"}],
    },
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
    "endpoints": [
        {
            "addresses": ["10.0.0.7"],
            "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "name": "act-1", "namespace": "modelfleet-system"},
        },
        {"addresses": ["10.0.0.8"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.9"], "conditions": {"ready": True, "terminating": True}},
    ],
}


def test_the_trimmed_slice_keeps_the_ready_activator_pods_and_metrics_port() -> None:
    trimmed = trim_activator_slice(SLICE)
    assert activator_endpoints(trimmed) == [
        ActivatorEndpoint(ip="10.0.0.7", pod="act-1", namespace="modelfleet-system")
    ]
    assert activator_metrics_port(trimmed) == 9090
    assert "managedFields" not in trimmed["metadata"]


def test_trim_child_would_have_lost_the_endpoints_of_a_controller_owned_slice() -> None:
    # the bug this guards against: the index used trim_child, which keeps a stub of
    # objects another controller owns, so the operator saw no ready activator
    assert activator_endpoints(trim_child(SLICE)) == []


def test_a_malformed_slice_yields_nothing_rather_than_raising() -> None:
    odd: dict[str, Any] = {"metadata": {}, "ports": ["x", {"name": "metrics", "port": "9090"}]}
    odd["endpoints"] = ["10.0.0.7", {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Node"}}]
    trimmed = trim_activator_slice(odd)
    assert activator_metrics_port(trimmed) is None
    assert activator_endpoints(trimmed) == [
        ActivatorEndpoint(ip="10.0.0.1", pod=None, namespace=None)
    ]
