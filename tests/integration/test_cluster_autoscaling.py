"""A real node autoscaler on the simulated nodes: Karpenter's kwok provider (hack/karpenter).

Karpenter creates NodeClaims and kwok Nodes for pods nothing can hold, the cluster's
kwok-controller makes those nodes Ready, kube-scheduler binds the pods, and an empty node is
removed after the NodePool's consolidateAfter. The cluster's own nodes (hack/cluster/nodes.yaml)
are not Karpenter's and must survive it untouched.

Plain Deployments show Karpenter's own behaviour; the last test runs the operator with it
(status from Karpenter's real Events).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import kube_harness
import pytest
from kube_harness import GPU_TOLERATION, KubeCluster
from operator_support import (
    OperatorProcess,
    apply_as_user,
    cond,
    manifest,
    running_operator,
    wait_condition,
)

KARPENTER_DIR = kube_harness.REPO_ROOT / "hack" / "karpenter"
H100 = "NVIDIA-H100-80GB-HBM3"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
# hack/karpenter/nodepools.yaml: consolidationPolicy WhenEmpty, consolidateAfter 20s.
CONSOLIDATE_AFTER_S = 20
WARM_CLASS = "mf-test-warm-karpenter"
WARM_PRIORITY_CLASS = {
    "apiVersion": "scheduling.k8s.io/v1",
    "kind": "PriorityClass",
    "metadata": {"name": WARM_CLASS},
    "value": -1,
    "preemptionPolicy": "Never",
}


def _script(*args: str, timeout: float) -> str:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kube_harness.REPO_ROOT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout + proc.stderr


def _nodes(cluster: KubeCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "nodes")["items"]
    return items


def _karpenter_nodes(cluster: KubeCluster) -> list[dict[str, Any]]:
    return [n for n in _nodes(cluster) if NODEPOOL_LABEL in n["metadata"].get("labels", {})]


def _nodeclaims(cluster: KubeCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "nodeclaims.karpenter.sh")["items"]
    return items


def _node_ready(node: dict[str, Any]) -> bool:
    cond = kube_harness.condition(node, "Ready")
    return bool(cond and cond.get("status") == "True")


def _describe(cluster: KubeCluster, namespace: str) -> str:
    nodes = "\n".join(
        f"  {n['metadata']['name']} ready={_node_ready(n)} "
        f"taints={[t['key'] for t in n['spec'].get('taints', [])]}"
        for n in _karpenter_nodes(cluster)
    )
    claims = "\n".join(
        f"  {c['metadata']['name']} "
        f"{[(x['type'], x['status']) for x in c.get('status', {}).get('conditions', [])]}"
        for c in _nodeclaims(cluster)
    )
    return (
        f"karpenter nodes:\n{nodes or '  none'}\nnodeclaims:\n{claims or '  none'}\n"
        f"pods:\n{kube_harness.pod_summary(cluster, namespace)}"
    )


def _gpu_deployment(name: str, replicas: int, product: str, gpus: str) -> dict[str, Any]:
    manifest = kube_harness.deployment_manifest(
        name,
        replicas=replicas,
        limits={"nvidia.com/gpu": gpus},
        requests={"nvidia.com/gpu": gpus, "cpu": "1", "memory": "1Gi"},
        tolerations=[GPU_TOLERATION],
    )
    manifest["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return manifest


@pytest.fixture(scope="module")
def karpenter(kube_cluster: KubeCluster) -> Iterator[set[str]]:
    """karpenter-kwok running against the session cluster; yields the cluster's own node names.

    Afterwards the NodePools are deleted while Karpenter still runs (it removes its nodes), the
    process stops, the CRDs go, and the cluster's own nodes must all still be there.
    """
    check = subprocess.run(
        [str(kube_harness.HACK_DIR / "build"), "--check-karpenter"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        pytest.fail(
            "karpenter-kwok is not built; run `make cluster-build` (hack/cluster/build):\n"
            + check.stderr,
            pytrace=False,
        )
    own = {n["metadata"]["name"] for n in _nodes(kube_cluster)}
    kubeconfig = str(kube_cluster.kubeconfig)
    crds = kube_cluster.bin_dir.parent / "karpenter-crds"
    try:
        print("\n" + _script(str(KARPENTER_DIR / "up"), kubeconfig, timeout=180).strip())
        yield own
    finally:
        print(_script(str(KARPENTER_DIR / "down"), kubeconfig, timeout=240).strip())
        kube_cluster.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", str(crds))
    left = {n["metadata"]["name"] for n in _nodes(kube_cluster)}
    assert left == own, f"nodes after Karpenter: {sorted(left)}; before: {sorted(own)}"


def test_karpenter_reports_product_no_instance_type_offers(
    kube_cluster: KubeCluster, namespace: str, karpenter: set[str]
) -> None:
    kube_cluster.apply(_gpu_deployment("b200", 1, "NVIDIA-B200", "1"), namespace)

    def karpenter_event() -> dict[str, Any] | None:
        events = kube_cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        for ev in events:
            component = ev.get("source", {}).get("component") or ev.get("reportingComponent")
            involved = ev.get("involvedObject", {})
            if component == "karpenter" and involved.get("kind") == "Pod":
                return dict(ev)
        return None

    event = kube_harness.wait_for(
        karpenter_event,
        timeout=120,
        what="an Event from Karpenter about the pod no instance type fits",
        describe=lambda: kube_cluster.kubectl("get", "events", "-n", namespace).stdout,
        interval=0.5,
    )
    print(f"\nkarpenter event {event['reason']}: {event['message']}")
    assert event["reason"] == "FailedScheduling"
    assert "instance type" in event["message"], event["message"]
    assert not _nodeclaims(kube_cluster)
    assert not _karpenter_nodes(kube_cluster)


# Karpenter's kwok provider makes its Nodes with a Hostname address only: the cluster's
# kwok-controller gives their pods its --node-ip as host IP (hack/cluster/up); without it kwok
# patched hostIPs [""], the API server refused it, and the pod stayed Pending on a Ready node.
def test_karpenter_adds_h100_node_and_removes_it_when_empty(
    kube_cluster: KubeCluster, namespace: str, karpenter: set[str]
) -> None:
    own_h100 = [
        n
        for n in _nodes(kube_cluster)
        if n["metadata"]["name"] in karpenter
        and n["metadata"].get("labels", {}).get("nvidia.com/gpu.product") == H100
    ]
    # One pod (8 GPUs, a whole node) more than the cluster's own H100 nodes hold.
    replicas = len(own_h100) + 1
    start = time.monotonic()
    kube_cluster.apply(_gpu_deployment("h100", replicas, H100, "8"), namespace)

    node = kube_harness.wait_for(
        lambda: next((n for n in _karpenter_nodes(kube_cluster) if _node_ready(n)), None),
        timeout=180,
        what="a Ready node made by Karpenter",
        describe=lambda: _describe(kube_cluster, namespace),
    )
    node_ready_s = time.monotonic() - start
    pods = kube_harness.wait_ready(kube_cluster, namespace, "h100", replicas, timeout=90)
    pods_ready_s = time.monotonic() - start
    name = node["metadata"]["name"]
    labels = node["metadata"]["labels"]
    print(
        f"\nkarpenter node {name} ({labels.get('node.kubernetes.io/instance-type')}): "
        f"apply->Node Ready {node_ready_s:.1f}s, apply->{replicas} pods Ready {pods_ready_s:.1f}s"
    )
    assert labels.get(NODEPOOL_LABEL) == "gpu"
    assert labels.get("node.kubernetes.io/instance-type") == "gpu-h100-8"
    assert labels.get("nvidia.com/gpu.product") == H100
    assert node["status"]["allocatable"].get("nvidia.com/gpu") == "8"
    assert node["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"
    karpenter_nodes = [n["metadata"]["name"] for n in _karpenter_nodes(kube_cluster)]
    assert karpenter_nodes == [name], _describe(kube_cluster, namespace)
    assert len(_nodeclaims(kube_cluster)) == 1
    on_node = [p for p in pods if p["spec"]["nodeName"] == name]
    assert len(on_node) == 1, kube_harness.pod_summary(kube_cluster, namespace)

    kube_cluster.kubectl("scale", "deployment/h100", "--replicas=0", "-n", namespace)
    scaled = time.monotonic()
    kube_harness.wait_for(
        lambda: not _karpenter_nodes(kube_cluster) and not _nodeclaims(kube_cluster),
        timeout=CONSOLIDATE_AFTER_S + 60,
        what=f"Karpenter to remove the empty node {name}",
        describe=lambda: _describe(kube_cluster, namespace),
        interval=0.5,
    )
    print(f"scale to 0 -> karpenter node gone {time.monotonic() - scaled:.1f}s")
    # The cluster's own nodes are not Karpenter's: none was removed or marked for disruption.
    own_now = {n["metadata"]["name"]: n for n in _nodes(kube_cluster)}
    assert set(own_now) == karpenter
    for n in own_now.values():
        taints = [t["key"] for t in n["spec"].get("taints", [])]
        assert "karpenter.sh/disrupted" not in taints, (n["metadata"]["name"], taints)


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, karpenter: set[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(WARM_PRIORITY_CLASS))
    try:
        with running_operator(kube_cluster, log, 600, start=False) as proc:
            proc.extra_args = ("--warm-capacity-priority-class", WARM_CLASS)
            yield proc.start()
    finally:
        kube_cluster.kubectl("delete", "priorityclass", WARM_CLASS, "--ignore-not-found")


def test_modeldeployment_status_follows_karpenter(
    kube_cluster: KubeCluster, namespace: str, karpenter: set[str], operator: OperatorProcess
) -> None:
    """Status from the real Karpenter's Events: a product no instance type offers is
    NoNodeGroupFits; one H100 node more than the cluster has is WaitingForNode, naming the pool."""
    k = kube_cluster
    apply_as_user(k, namespace, manifest("b200", {"gpu": {"products": ["NVIDIA-B200"]}}))
    md = wait_condition(k, namespace, "b200", "Ready", "False", "NoNodeGroupFits", timeout=120)
    message = cond(md, "Ready")["message"]
    assert message.startswith("karpenter: Failed to schedule pod,"), message
    assert "instance type" in message and "GPUProductUnavailable" not in message
    print(f"\n[karpenter] NoNodeGroupFits: {message[:200]}")

    # Every H100 node there is (the cluster's, and one an earlier test's Karpenter may still
    # hold before it is consolidated), and one pod of 8 GPUs more.
    labels = [n["metadata"].get("labels", {}) for n in _nodes(k)]
    h100_nodes = sum(1 for lab in labels if lab.get("nvidia.com/gpu.product") == H100)
    applied = time.monotonic()
    apply_as_user(
        k, namespace, manifest("h100x", {"replicas": h100_nodes + 1, "gpu": {"count": 8}})
    )
    md = wait_condition(k, namespace, "h100x", "Ready", "False", "WaitingForNode", timeout=120)
    message = cond(md, "Ready")["message"]
    assert message.startswith("karpenter is launching a node: node pool gpu (nodeclaim gpu-"), (
        message
    )
    assert cond(md, "Degraded")["status"] == "False"
    print(f"[karpenter] apply -> WaitingForNode {time.monotonic() - applied:.1f}s: {message[:160]}")

    # The node comes, the replica on it loads, and the ModelDeployment turns Ready.
    wait_condition(k, namespace, "h100x", "Ready", "True", timeout=240)
    ready_s = time.monotonic() - applied
    [node] = [n for n in _karpenter_nodes(k) if _node_ready(n)] or [None]
    assert node is not None, _describe(k, namespace)
    name = node["metadata"]["name"]
    line = next(
        (
            ln
            for ln in operator.log_path.read_text(errors="replace").splitlines()
            if "/h100x: pod " in ln and " ready: " in ln and _on_node(k, namespace, ln, name)
        ),
        None,
    )
    assert line is not None and "node 0s" not in line, operator.log_tail(40)
    print(
        f"[karpenter] apply -> Ready through a scale-up {ready_s:.1f}s; the replica on {name}: "
        + line.split(" ready: ", 1)[1]
    )

    # Gone: the empty node is removed after consolidateAfter.
    k.kubectl("-n", namespace, "delete", "mdep", "h100x", "--wait=true", "--timeout=60s")
    deleted = time.monotonic()
    kube_harness.wait_for(
        lambda: not any(n["metadata"]["name"] == name for n in _karpenter_nodes(k)),
        timeout=CONSOLIDATE_AFTER_S + 60,
        what=f"Karpenter to remove the empty node {name}",
        describe=lambda: _describe(k, namespace),
        interval=0.5,
    )
    print(f"[karpenter] ModelDeployment deleted -> node gone {time.monotonic() - deleted:.1f}s")


def _on_node(k: KubeCluster, namespace: str, line: str, node: str) -> bool:
    """Whether the pod a cold-start log line names runs on ``node``."""
    pod = line.split(": pod ", 1)[1].split(" ", 1)[0]
    got = k.kubectl("-n", namespace, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}",
                    check=False)  # fmt: skip
    return got.stdout.strip() == node


def test_warm_capacity_holds_a_node_so_a_scale_up_does_not_wait_for_one(
    kube_cluster: KubeCluster, namespace: str, karpenter: set[str], operator: OperatorProcess
) -> None:
    """spec.warmCapacity with a real node autoscaler: the placeholder that finds no room gets a
    node from Karpenter; a scale-up takes that room at once (preemption), and the displaced
    placeholder gets Karpenter to bring the next node."""
    k = kube_cluster
    own_h100 = sum(
        1
        for n in _nodes(k)
        if n["metadata"]["name"] in karpenter
        and n["metadata"].get("labels", {}).get("nvidia.com/gpu.product") == H100
    )
    spec: dict[str, Any] = {
        "replicas": own_h100,  # one whole node each: the cluster's own H100 nodes are full
        "gpu": {"count": 8},
        "warmCapacity": {"replicas": 1},
    }
    apply_as_user(k, namespace, manifest("warmx", spec))
    wait_condition(k, namespace, "warmx", "Ready", "True", timeout=120)

    def held() -> bool:
        md = k.kubectl_json("-n", namespace, "get", "mdep", "warmx")
        return bool((md.get("status") or {}).get("warmCapacity", {}).get("readyReplicas") == 1)

    kube_harness.wait_for(
        held, timeout=180, what="the placeholder on a node Karpenter brought",
        describe=lambda: _describe(k, namespace),
    )  # fmt: skip
    [first] = [n["metadata"]["name"] for n in _karpenter_nodes(k)] or [""]
    assert first, _describe(k, namespace)

    scaled = time.monotonic()
    apply_as_user(k, namespace, manifest("warmx", {**spec, "replicas": own_h100 + 1}))
    wait_condition(k, namespace, "warmx", "Ready", "True", timeout=120)
    took = time.monotonic() - scaled
    serving = kube_harness.pods(k, namespace, "app.kubernetes.io/instance=warmx")
    on_first = [p for p in serving if p["spec"].get("nodeName") == first]
    assert len(on_first) == 1, kube_harness.pod_summary(k, namespace)
    print(f"\n[karpenter] warm capacity: scale-up -> Ready {took:.1f}s on the held node {first}")
    # The displaced placeholder asks for the next node, and holds it.
    kube_harness.wait_for(
        lambda: held() and len(_karpenter_nodes(k)) == 2, timeout=180,
        what="a second node for the displaced placeholder",
        describe=lambda: _describe(k, namespace),
    )  # fmt: skip
    k.kubectl("-n", namespace, "delete", "mdep", "warmx", "--wait=true", "--timeout=60s")
    kube_harness.wait_for(
        lambda: not _karpenter_nodes(k), timeout=CONSOLIDATE_AFTER_S + 90,
        what="Karpenter to remove both nodes", describe=lambda: _describe(k, namespace),
        interval=0.5,
    )  # fmt: skip
