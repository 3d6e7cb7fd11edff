"""What a node autoscaler says of pending replicas reaches the ModelDeployment's status, read
through the real API server's Event field selectors.

Here the Events are posted by the test in the exact form Cluster Autoscaler's and Karpenter's
recorders post them (reason, source component, message): it checks the operator's selectors,
its polling only while a pod waits, and the status it writes. test_cluster_autoscaling.py
runs the real Karpenter.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import KubeCluster
from operator_support import (
    OperatorProcess,
    apply_as_user,
    cond,
    manifest,
    pods_of,
    running_operator,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kube_cluster, log, 600) as proc:
        yield proc


def post_event(
    k: KubeCluster, namespace: str, pod: str, reason: str, message: str, *, by: str
) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
        "reason": reason,
        "message": message,
        "type": "Normal" if reason in ("TriggeredScaleUp", "Nominated") else "Warning",
        "source": {"component": by},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    k.kubectl("create", "-f", "-", input=json.dumps(body))


def pending_pod(k: KubeCluster, namespace: str, name: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pod in pods_of(k, namespace, name):
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    return str(pod["metadata"]["name"])
        time.sleep(0.5)
    raise AssertionError(f"no unschedulable pod of {name}")


def test_node_autoscaler_events_become_waiting_for_node_then_no_node_group_fits(
    kube_cluster: KubeCluster, operator: OperatorProcess, namespace: str
) -> None:
    k = kube_cluster
    # 16 H100s in one pod: no node of the cluster has them (8 at most)
    apply_as_user(k, namespace, manifest("big", {"replicas": 1, "gpu": {"count": 16}}))
    wait_condition(k, namespace, "big", "Ready", "False", "InsufficientGPU", timeout=120)
    pod = pending_pod(k, namespace, "big")

    # The scheduler's own FailedScheduling and another pod's news change nothing.
    post_event(k, namespace, pod, "FailedScheduling", "0/6 nodes", by="default-scheduler")
    other = "pod triggered scale-up: [{other 0->1 (max: 2)}]"
    post_event(k, namespace, "someone-else", "TriggeredScaleUp", other, by="cluster-autoscaler")
    time.sleep(7)  # more than the operator's 5 s between Event LISTs
    md = wait_condition(k, namespace, "big", "Ready", "False", timeout=10)
    assert cond(md, "Ready")["reason"] == "InsufficientGPU", cond(md, "Ready")

    posted = time.monotonic()
    up = "pod triggered scale-up: [{gpu-h100-8 0->1 (max: 4)}]"
    post_event(k, namespace, pod, "TriggeredScaleUp", up, by="cluster-autoscaler")
    md = wait_condition(k, namespace, "big", "Ready", "False", "WaitingForNode", timeout=30)
    took = time.monotonic() - posted
    message = cond(md, "Ready")["message"]
    assert message.startswith(
        "cluster-autoscaler is adding a node: node group gpu-h100-8 0 -> 1 (max 4)"
    ), message
    assert cond(md, "Degraded")["status"] == "False"
    row = k.kubectl("-n", namespace, "get", "mdep", "big", "--no-headers").stdout
    assert "WaitingForNode" in row

    time.sleep(1.1)  # a later second: the newest Event wins
    refused = "Failed to schedule pod, no instance type has enough resources (NodePool=gpu)"
    post_event(k, namespace, pod, "FailedScheduling", refused, by="karpenter")
    md = wait_condition(k, namespace, "big", "Ready", "False", "NoNodeGroupFits", timeout=30)
    assert cond(md, "Ready")["message"].startswith(
        "karpenter: Failed to schedule pod, no instance type has enough resources"
    )
    assert cond(md, "Degraded")["status"] == "True"
    events = k.kubectl(
        "-n", namespace, "get", "events", "--field-selector",
        "involvedObject.name=big,involvedObject.kind=ModelDeployment,type=Warning",
    ).stdout  # fmt: skip
    assert "NoNodeGroupFits" in events
    print(f"\n[node autoscaler] Event posted -> status WaitingForNode in {took:.1f}s")
