"""Pods go Running, then Ready after their simulated model load; rollouts and GC are real."""

from __future__ import annotations

import json
import time
from datetime import datetime

from kube_harness import (
    KubeCluster,
    condition,
    deployment_manifest,
    is_ready,
    pod_summary,
    pods,
    wait_for,
    wait_ready,
)

LOAD_ANNOTATION = "modelfleet.io/simulated-load-seconds"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_pod_is_running_but_not_ready_until_its_model_loaded(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    kube_cluster.apply(
        deployment_manifest("slow", pod_annotations={LOAD_ANNOTATION: "6"}), namespace
    )
    running = wait_for(
        lambda: next(
            (
                p
                for p in pods(kube_cluster, namespace, "app=slow")
                if p["status"].get("phase") == "Running"
            ),
            None,
        ),
        timeout=30,
        what="the pod to be Running",
        describe=lambda: pod_summary(kube_cluster, namespace),
    )
    seen_running = time.monotonic()
    assert not is_ready(running), "pod was Ready as soon as it ran; the load delay is ignored"
    assert running["status"]["podIP"], "a Running pod has an IP"
    ready = wait_ready(kube_cluster, namespace, "slow", 1, timeout=30)[0]
    waited = time.monotonic() - seen_running
    started = _ts(ready["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    ready_cond = condition(ready, "Ready")
    assert ready_cond is not None
    became_ready = _ts(ready_cond["lastTransitionTime"])
    # Timestamps have 1s resolution: allow that much slack below the 6s delay.
    assert (became_ready - started).total_seconds() >= 5, (started, became_ready)
    assert waited >= 4, f"Ready only {waited:.1f}s after Running was observed"


def test_default_load_delay_is_short(kube_cluster: KubeCluster, namespace: str) -> None:
    start = time.monotonic()
    kube_cluster.apply(deployment_manifest("plain", replicas=2), namespace)
    wait_ready(kube_cluster, namespace, "plain", 2, timeout=30)
    assert time.monotonic() - start < 20


def test_rolling_update_waits_for_readiness(kube_cluster: KubeCluster, namespace: str) -> None:
    # maxSurge=1/maxUnavailable=0 with a 3s load: each of the 2 replicas is replaced only after
    # its successor is Ready, so the rollout cannot finish in less than ~2 x 3s.
    manifest = deployment_manifest(
        "roll",
        replicas=2,
        pod_annotations={LOAD_ANNOTATION: "3", "rev": "1"},
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )
    kube_cluster.apply(manifest, namespace)
    kube_cluster.kubectl("-n", namespace, "rollout", "status", "deployment/roll", "--timeout=60s")
    manifest["spec"]["template"]["metadata"]["annotations"]["rev"] = "2"
    start = time.monotonic()
    kube_cluster.apply(manifest, namespace)
    # While the rollout runs, the Deployment never has fewer than 2 available replicas.
    min_available = 2
    while True:
        dep = kube_cluster.kubectl_json("-n", namespace, "get", "deployment", "roll")
        status = dep["status"]
        min_available = min(min_available, int(status.get("availableReplicas", 0)))
        done = (
            status.get("observedGeneration", 0) >= dep["metadata"]["generation"]
            and status.get("updatedReplicas") == 2
            and status.get("availableReplicas") == 2
            and status.get("replicas") == 2
        )
        if done:
            break
        assert time.monotonic() - start < 60, f"rollout stuck: {json.dumps(status)}"
        time.sleep(0.2)
    took = time.monotonic() - start
    assert took >= 5, f"rollout of 2 pods with a 3s load finished in {took:.1f}s"
    assert min_available == 2, "maxUnavailable=0 was violated"
    revs = {p["metadata"]["annotations"]["rev"] for p in pods(kube_cluster, namespace, "app=roll")}
    assert revs == {"2"}, pod_summary(kube_cluster, namespace)


def test_garbage_collector_deletes_dependents(kube_cluster: KubeCluster, namespace: str) -> None:
    owner = kube_cluster.kubectl(
        "-n", namespace, "create", "configmap", "owner", "-o", "json"
    ).stdout
    uid = json.loads(owner)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
        "data": {"k": "v"},
    }
    kube_cluster.apply(child, namespace)
    kube_cluster.apply(deployment_manifest("gc", replicas=2), namespace)
    wait_ready(kube_cluster, namespace, "gc", 2)
    assert kube_cluster.kubectl_json("-n", namespace, "get", "replicasets", "-l", "app=gc")["items"]

    kube_cluster.kubectl("-n", namespace, "delete", "configmap", "owner", "--wait=false")
    kube_cluster.kubectl(
        "-n", namespace, "delete", "deployment", "gc", "--cascade=background", "--wait=false"
    )
    wait_for(
        lambda: (
            kube_cluster.kubectl(
                "-n", namespace, "get", "configmap", "child", check=False
            ).returncode
            != 0
        ),
        timeout=60,
        what="the garbage collector to delete the owned ConfigMap",
    )
    wait_for(
        lambda: (
            not kube_cluster.kubectl_json(
                "-n", namespace, "get", "replicasets,pods", "-l", "app=gc"
            )["items"]
        ),
        timeout=60,
        what="the Deployment's ReplicaSet and pods to be garbage collected",
        describe=lambda: pod_summary(kube_cluster, namespace),
    )


def test_job_pods_complete(kube_cluster: KubeCluster, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "template": {
                "metadata": {"annotations": {LOAD_ANNOTATION: "0.5"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.invalid/job:1"}],
                },
            }
        },
    }
    kube_cluster.apply(job, namespace)
    kube_cluster.kubectl(
        "-n", namespace, "wait", "job/once", "--for=condition=Complete", "--timeout=60s"
    )
