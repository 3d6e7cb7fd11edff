"""metrics-server serves kwok's simulated pod CPU usage, and a real HPA acts on it."""

from __future__ import annotations

import json
from typing import Any

from kube_harness import KubeCluster, deployment_manifest, pod_summary, wait_for, wait_ready

# kwok's ClusterResourceUsage "usage-from-annotation" reports this annotation as the pod's CPU.
USAGE_CPU = "kwok.x-k8s.io/usage-cpu"


def _millicores(quantity: str) -> float:
    if quantity.endswith("n"):
        return int(quantity[:-1]) / 1e6
    if quantity.endswith("u"):
        return int(quantity[:-1]) / 1e3
    if quantity.endswith("m"):
        return float(quantity[:-1])
    return float(quantity) * 1000


def test_metrics_api_reports_simulated_cpu(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.apply(
        deployment_manifest("busy", requests={"cpu": "500m"}, pod_annotations={USAGE_CPU: "400m"}),
        namespace,
    )
    wait_ready(kube_cluster, namespace, "busy", 1)

    def usage() -> float | None:
        proc = kube_cluster.kubectl(
            "get",
            "--raw",
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            check=False,
        )
        if proc.returncode != 0:
            return None
        items = json.loads(proc.stdout).get("items", [])
        if not items:
            return None
        return sum(_millicores(c["usage"]["cpu"]) for c in items[0]["containers"]) or None

    cpu = wait_for(
        usage, timeout=90, interval=1, what="metrics-server to report the pod's CPU usage"
    )
    assert 300 <= cpu <= 500, f"expected ~400m CPU from the annotation, got {cpu}m"


def test_hpa_scales_up_on_simulated_cpu(kube_cluster: KubeCluster, namespace: str) -> None:
    # Each pod "uses" 400m of a 500m request = 80% against a 50% target: the HPA must add pods
    # (1 -> 2 -> 4, capped by maxReplicas).
    kube_cluster.apply(
        deployment_manifest(
            "web", replicas=1, requests={"cpu": "500m"}, pod_annotations={USAGE_CPU: "400m"}
        ),
        namespace,
    )
    wait_ready(kube_cluster, namespace, "web", 1)
    hpa: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50},
                    },
                }
            ],
        },
    }
    kube_cluster.apply(hpa, namespace)

    def describe() -> str:
        return kube_cluster.kubectl(
            "-n", namespace, "describe", "hpa", "web", check=False
        ).stdout + pod_summary(kube_cluster, namespace)

    wait_for(
        lambda: (
            kube_cluster.kubectl_json("-n", namespace, "get", "deployment", "web")["spec"][
                "replicas"
            ]
            >= 4
        ),
        timeout=240,
        interval=2,
        what="the HPA to scale deployment/web to 4 replicas",
        describe=describe,
    )
    status = kube_cluster.kubectl_json("-n", namespace, "get", "hpa", "web")["status"]
    current = status["currentMetrics"][0]["resource"]["current"]
    assert 60 <= int(current["averageUtilization"]) <= 100, status
    wait_ready(kube_cluster, namespace, "web", 4, timeout=60)
