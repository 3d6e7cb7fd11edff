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


def test_hpa_scales_up_on_simulated_cpu(kube_cluster: KubeCluster, namespace: str) -> None:
    # The pod "uses" 900m of a 500m request = 180% against a 50% target: the HPA wants
    # ceil(1 * 180 / 50) = 4 replicas, which its default scale-up policy allows in one step.
    kube_cluster.apply(
        deployment_manifest(
            "web", replicas=1, requests={"cpu": "500m"}, pod_annotations={USAGE_CPU: "900m"}
        ),
        namespace,
    )
    wait_ready(kube_cluster, namespace, "web", 1)

    # First the metrics API itself: metrics-server scrapes kwok's simulated kubelet endpoint.
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
        usage, timeout=120, interval=1, what="metrics-server to report the pod's CPU usage"
    )
    assert 800 <= cpu <= 1000, f"expected ~900m CPU from the annotation, got {cpu}m"
    # Every node reports (kwok adds a 250m system baseline), so `kubectl top nodes` is complete.
    node_metrics = json.loads(
        kube_cluster.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes").stdout
    )
    reporting = {item["metadata"]["name"] for item in node_metrics["items"]}
    assert {"gpu-h100-0", "gpu-a100-mig-0", "gpu-l4-0", "cpu-0"} <= reporting, reporting
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
    assert 150 <= int(current["averageUtilization"]) <= 200, status
    wait_ready(kube_cluster, namespace, "web", 4, timeout=60)
