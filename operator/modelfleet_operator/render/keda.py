"""The KEDA ScaledObject (engine keda): KEDA's own HPA then targets the ModelDeployment's
scale subresource. Validated against KEDA's CRD schema in tests/integration/test_keda_crd.py."""

from __future__ import annotations

from typing import Any

from ..spec import API_VERSION, KIND, ModelDeploymentSpec
from .common import Owner, metadata
from .hpa import CONCURRENCY_METRIC, format_target

KEDA_API_VERSION = "keda.sh/v1alpha1"
SCALED_OBJECT = "ScaledObject"
QUEUE_METRIC = "modelfleet_queue_depth"
REQUESTS_METRIC = "modelfleet_requests_total"
# How often KEDA asks the trigger (its default is 30 s; serving load moves faster).
POLLING_INTERVAL_S = 5


def default_query(owner: Owner, spec: ModelDeploymentSpec) -> str:
    """Total demand of this model in this namespace, as Prometheus scraped it: in-flight
    requests (which include the queued ones) or requests per second."""
    auto = spec.autoscaling
    assert auto is not None
    where = f'namespace="{owner.namespace}",model="{spec.model.name}"'
    if auto.metric == "rps":
        return f"sum(rate({REQUESTS_METRIC}{{{where}}}[1m]))"
    return f"sum({CONCURRENCY_METRIC}{{{where}}})"


def _trigger(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    auto = spec.autoscaling
    assert auto is not None
    if auto.metric == "cpu":
        return {
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": str(int(auto.target))},
        }
    return {
        "type": "prometheus",
        # AverageValue: the HPA divides the total by the replicas, so desired replicas =
        # ceil(total / target), the builtin engine's rule.
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": auto.keda.server_address or "",
            "query": auto.keda.query or default_query(owner, spec),
            "threshold": format_target(auto.target),
        },
    }


def render_scaled_object(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    auto = spec.autoscaling
    assert auto is not None
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": SCALED_OBJECT,
        "metadata": metadata(owner, spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name},
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "pollingInterval": POLLING_INTERVAL_S,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {"stabilizationWindowSeconds": auto.scale_up_window_s},
                        "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_window_s},
                    }
                }
            },
            "triggers": [_trigger(owner, spec)],
        },
    }
