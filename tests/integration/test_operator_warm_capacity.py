"""spec.warmCapacity on the real control plane: the placeholder pods hold a GPU, the real
kube-scheduler preempts one the moment a serving replica needs the room, and status says
what is held (and why nothing is, with the PriorityClass missing).

The cluster's only L4 GPU (node gpu-l4-0) is the room: one placeholder fits there, and a
scaled-up replica can run only by taking it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import (
    OperatorProcess,
    apply_as_user,
    cond,
    get,
    manifest,
    pods_of,
    running_operator,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

L4 = "NVIDIA-L4"
PRIORITY_CLASS = f"mf-test-warm-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kube_cluster, log, 600, start=False) as proc:
        proc.extra_args = ("--warm-capacity-priority-class", PRIORITY_CLASS)
        proc.start()
        yield proc
    kube_cluster.kubectl("delete", "priorityclass", PRIORITY_CLASS, "--ignore-not-found")


def placeholders(k: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    data = k.kubectl_json(
        "-n", namespace, "get", "pods", "-l", "app.kubernetes.io/component=warm-capacity"
    )
    return [p for p in data["items"] if not p["metadata"].get("deletionTimestamp")]


def warm_status(k: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    md = get(k, namespace, "mdep", name) or {}
    return dict((md.get("status") or {}).get("warmCapacity") or {})


def test_placeholder_holds_the_gpu_and_gives_it_to_a_replica_at_once(
    kube_cluster: KubeCluster, operator: OperatorProcess, namespace: str
) -> None:
    k = kube_cluster
    spec = {
        "replicas": 0,
        "gpu": {"count": 1, "products": [L4]},
        "warmCapacity": {"replicas": 1},
    }
    apply_as_user(k, namespace, manifest("warm", spec))

    # No PriorityClass yet: the placeholders cannot even be created; status names it.
    md = wait_condition(
        k, namespace, "warm", "Degraded", "True", "WarmCapacityUnavailable", timeout=90
    )
    assert PRIORITY_CLASS in cond(md, "Degraded")["message"]
    assert warm_status(k, namespace, "warm")["readyReplicas"] == 0

    k.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": PRIORITY_CLASS},
                "value": -1,
                "preemptionPolicy": "Never",
            }
        ),
    )
    wait_for(
        lambda: warm_status(k, namespace, "warm").get("readyReplicas") == 1,
        timeout=120,
        what="the placeholder holding room",
        describe=lambda: f"{warm_status(k, namespace, 'warm')}\n{operator.log_tail(20)}",
    )
    wait_condition(k, namespace, "warm", "Degraded", "False", timeout=60)
    [held] = placeholders(k, namespace)
    assert held["spec"]["nodeName"] == "gpu-l4-0"
    assert held["spec"]["priority"] == -1
    limits = held["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert pods_of(k, namespace, "warm") == []  # not a serving pod: Service and PDB skip it

    # A replica is wanted: the only L4 is the placeholder's, so the scheduler preempts it.
    asked = time.monotonic()
    apply_as_user(k, namespace, manifest("warm", {**spec, "replicas": 1}))

    def serving_scheduled() -> str | None:
        for pod in pods_of(k, namespace, "warm"):
            node = pod["spec"].get("nodeName")
            if node:
                return str(node)
        return None

    node = wait_for(serving_scheduled, timeout=90, what="the replica scheduled")
    took = time.monotonic() - asked
    print(f"\nreplica scheduled on {node} {took:.1f} s after the scale-up, by preemption")
    assert node == "gpu-l4-0"
    wait_condition(k, namespace, "warm", "Ready", "True", timeout=90)
    # The displaced placeholder waits for room (a node autoscaler would bring a node for it).
    wait_for(
        lambda: (
            warm_status(k, namespace, "warm").get("readyReplicas") == 0
            and "hold no room" in str(warm_status(k, namespace, "warm").get("message"))
        ),
        timeout=60,
        what="status saying the room is gone",
        describe=lambda: str(warm_status(k, namespace, "warm")),
    )
    [waiting] = placeholders(k, namespace)
    assert not waiting["spec"].get("nodeName")
    md = get(k, namespace, "mdep", "warm")
    assert cond(md, "Degraded")["status"] == "False"  # pending room is no fault

    # Warm capacity removed from the spec: the placeholder Deployment and status go.
    apply_as_user(k, namespace, manifest("warm", {**spec, "replicas": 1, "warmCapacity": None}))
    wait_for(
        lambda: get(k, namespace, "deployment", "warm-warm") is None,
        timeout=60,
        what="the placeholder Deployment pruned",
    )
    wait_for(
        lambda: not warm_status(k, namespace, "warm"),
        timeout=30,
        what="status.warmCapacity removed",
    )
