"""The real kube-scheduler places pods on the simulated GPU nodes the way it would on real ones."""

from __future__ import annotations

from kube_harness import (
    GPU_TOLERATION,
    KubeCluster,
    condition,
    deployment_manifest,
    nodes_with,
    pod_summary,
    pods,
    product_affinity,
    wait_for,
    wait_ready,
    wait_scheduled,
)

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"


def node_of(pod: dict[str, object]) -> str:
    spec = pod["spec"]
    assert isinstance(spec, dict)
    return str(spec.get("nodeName", ""))


def test_simulated_nodes_look_like_a_gpu_cluster(kube_cluster: KubeCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube_cluster.kubectl_json("get", "nodes")["items"]}
    assert {"gpu-h100-0", "gpu-h100-1", "gpu-a100-mig-0", "gpu-l4-0", "cpu-0", "cpu-1"} <= set(
        nodes
    )
    h100 = nodes["gpu-h100-0"]
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in h100["spec"][
        "taints"
    ]
    mig = nodes["gpu-a100-mig-0"]
    assert mig["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"
    assert mig["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "32"
    assert "nvidia.com/gpu" not in mig["status"]["allocatable"]
    assert "taints" not in nodes["cpu-0"]["spec"]
    for name, node in nodes.items():
        ready = condition(node, "Ready")
        assert ready and ready["status"] == "True", f"node {name} is not Ready: {ready}"


def test_gpu_pods_land_only_on_gpu_nodes(kube_cluster: KubeCluster, namespace: str) -> None:
    gpu_nodes = nodes_with(kube_cluster, "nvidia.com/gpu")
    assert gpu_nodes == {"gpu-h100-0", "gpu-h100-1", "gpu-l4-0"}
    kube_cluster.apply(
        deployment_manifest(
            "gpu", replicas=6, limits={"nvidia.com/gpu": "1"}, tolerations=[GPU_TOLERATION]
        ),
        namespace,
    )
    placed = wait_ready(kube_cluster, namespace, "gpu", 6)
    assert {node_of(p) for p in placed} <= gpu_nodes, pod_summary(kube_cluster, namespace)


def test_cpu_pods_avoid_tainted_gpu_nodes(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.apply(
        deployment_manifest("cpu", replicas=6, requests={"cpu": "100m", "memory": "64Mi"}),
        namespace,
    )
    placed = wait_ready(kube_cluster, namespace, "cpu", 6)
    assert {node_of(p) for p in placed} <= {"cpu-0", "cpu-1"}, pod_summary(kube_cluster, namespace)


def test_gpu_pod_without_toleration_is_refused_by_the_taint(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    kube_cluster.apply(deployment_manifest("notol", limits={"nvidia.com/gpu": "1"}), namespace)
    message = wait_for(
        lambda: _unschedulable_message(kube_cluster, namespace, "notol"),
        timeout=60,
        what="the scheduler to report the pod unschedulable",
        describe=lambda: pod_summary(kube_cluster, namespace),
    )
    assert "untolerated taint" in message and "nvidia.com/gpu" in message, message


def test_product_affinity_picks_the_product(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.apply(
        [
            deployment_manifest(
                "h100",
                replicas=4,
                limits={"nvidia.com/gpu": "1"},
                tolerations=[GPU_TOLERATION],
                affinity=product_affinity(H100),
            ),
            deployment_manifest(
                "l4",
                replicas=1,
                limits={"nvidia.com/gpu": "1"},
                tolerations=[GPU_TOLERATION],
                affinity=product_affinity(L4),
            ),
        ],
        namespace,
    )
    h100 = wait_ready(kube_cluster, namespace, "h100", 4)
    l4 = wait_ready(kube_cluster, namespace, "l4", 1)
    assert {node_of(p) for p in h100} <= {"gpu-h100-0", "gpu-h100-1"}
    assert [node_of(p) for p in l4] == ["gpu-l4-0"]


def test_more_gpus_than_any_node_has_stays_pending(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    kube_cluster.apply(
        deployment_manifest("huge", limits={"nvidia.com/gpu": "9"}, tolerations=[GPU_TOLERATION]),
        namespace,
    )
    message = wait_for(
        lambda: _unschedulable_message(kube_cluster, namespace, "huge"),
        timeout=60,
        what="the scheduler to report Insufficient nvidia.com/gpu",
        describe=lambda: pod_summary(kube_cluster, namespace),
    )
    assert "Insufficient nvidia.com/gpu" in message, message
    (pod,) = pods(kube_cluster, namespace, "app=huge")
    assert pod["status"]["phase"] == "Pending"
    assert not node_of(pod)


def test_scheduler_never_overcommits_gpus(kube_cluster: KubeCluster, namespace: str) -> None:
    # 17 one-GPU pods pinned to H100s: 16 fit on the two 8-GPU nodes, the 17th cannot.
    kube_cluster.apply(
        deployment_manifest(
            "fill",
            replicas=17,
            limits={"nvidia.com/gpu": "1"},
            tolerations=[GPU_TOLERATION],
            affinity=product_affinity(H100),
        ),
        namespace,
    )
    all_pods = wait_scheduled(kube_cluster, namespace, "fill", 16)
    message = wait_for(
        lambda: _unschedulable_message(kube_cluster, namespace, "fill"),
        timeout=60,
        what="the 17th pod to be reported unschedulable",
        describe=lambda: pod_summary(kube_cluster, namespace),
    )
    assert "Insufficient nvidia.com/gpu" in message
    per_node: dict[str, int] = {}
    for pod in pods(kube_cluster, namespace, "app=fill"):
        if node_of(pod):
            per_node[node_of(pod)] = per_node.get(node_of(pod), 0) + 1
    assert per_node == {"gpu-h100-0": 8, "gpu-h100-1": 8}, (per_node, len(all_pods))


def test_mig_slices_land_on_the_mig_node(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.apply(
        [
            deployment_manifest(
                "mig1g",
                replicas=3,
                limits={"nvidia.com/mig-1g.10gb": "1"},
                tolerations=[GPU_TOLERATION],
            ),
            deployment_manifest(
                "mig3g",
                replicas=2,
                limits={"nvidia.com/mig-3g.40gb": "1"},
                tolerations=[GPU_TOLERATION],
            ),
        ],
        namespace,
    )
    placed = wait_ready(kube_cluster, namespace, "mig1g", 3) + wait_ready(
        kube_cluster, namespace, "mig3g", 2
    )
    assert {node_of(p) for p in placed} == {"gpu-a100-mig-0"}


def _unschedulable_message(cluster: KubeCluster, namespace: str, app: str) -> str | None:
    """The PodScheduled=False message of app's unscheduled pod, once the scheduler wrote it."""
    for pod in pods(cluster, namespace, f"app={app}"):
        cond = condition(pod, "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message", ""))
    return None
