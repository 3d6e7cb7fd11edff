"""The HorizontalPodAutoscaler: targets the ModelDeployment's scale subresource."""

from __future__ import annotations

from typing import Any

from ..spec import API_VERSION, KIND, ModelDeploymentSpec
from .common import Owner, metadata

# Per-pod custom metrics the runtime exports (served to the HPA by a metrics adapter such
# as prometheus-adapter; see docs/operator.md for the rules).
CONCURRENCY_METRIC = "modelfleet_inflight_requests"
RPS_METRIC = "modelfleet_requests_per_second"


def format_target(value: float) -> str:
    # Quantities: 4.0 -> "4", 2.5 -> "2500m" (milli-units keep it integral).
    if value == int(value):
        return str(int(value))
    return f"{round(value * 1000)}m"


def render_hpa(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    auto = spec.autoscaling
    assert auto is not None
    metric: dict[str, Any]
    if auto.metric == "cpu":
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": int(auto.target)},
            },
        }
    else:
        name = CONCURRENCY_METRIC if auto.metric == "concurrency" else RPS_METRIC
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": name},
                "target": {"type": "AverageValue", "averageValue": format_target(auto.target)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [metric],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": auto.scale_up_window_s},
                "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_window_s},
            },
        },
    }
