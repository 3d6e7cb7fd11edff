"""The operator against the real control plane: children, scheduling, status, rollouts,
drift, scale, autoscaling, garbage collection, and what only the operator can judge."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import (
    A100,
    H100,
    TEST_IMAGE,
    OperatorProcess,
    apply_as_user,
    cond,
    describe,
    get,
    manifest,
    node_product,
    pods_of,
    running_operator,
    wait_condition,
)


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kube_cluster, log, 15) as proc:
        yield proc


@pytest.fixture
def k(kube_cluster: KubeCluster, operator: OperatorProcess) -> KubeCluster:
    return kube_cluster


def test_create_makes_children_schedules_on_h100_and_reports_ready(
    k: KubeCluster, namespace: str
) -> None:
    apply_as_user(k, namespace, manifest("resnet", {"replicas": 2, "model": {"version": "3"}}))
    md = wait_condition(k, namespace, "resnet", "Ready", "True", "AllReplicasReady")
    uid = md["metadata"]["uid"]
    st = md["status"]
    assert st["observedGeneration"] == md["metadata"]["generation"]
    assert (st["replicas"], st["readyReplicas"], st["updatedReplicas"]) == (2, 2, 2)
    assert st["url"] == f"http://resnet.{namespace}.svc:8080/v2/models/resnet"
    assert st["selector"] == (
        "app.kubernetes.io/instance=resnet,app.kubernetes.io/managed-by=modelfleet-operator"
    )
    assert st["model"]["version"] == "3"
    assert st["rolloutStrategy"].startswith("RollingUpdate(maxSurge=1")
    for t in ("Available", "Progressing", "Degraded"):
        assert (
            cond(md, t)["status"]
            == {"Available": "True", "Progressing": "False", "Degraded": "False"}[t]
        )

    dep = get(k, namespace, "deployment", "resnet")
    assert dep is not None
    assert dep["metadata"]["ownerReferences"][0]["uid"] == uid
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == TEST_IMAGE  # the operator's configured default
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    svc = get(k, namespace, "service", "resnet")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 8080
    assert svc["metadata"]["ownerReferences"][0]["uid"] == uid
    pdb = get(k, namespace, "pdb", "resnet")
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    # Children are written with server-side apply by one field manager.
    full = k.kubectl_json("-n", namespace, "get", "deployment", "resnet", "--show-managed-fields")
    managers = {
        m["manager"] for m in full["metadata"]["managedFields"] if m.get("operation") == "Apply"
    }
    assert managers == {"modelfleet-operator"}

    pods = pods_of(k, namespace, "resnet")
    assert len(pods) == 2
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert all(node_product(k, n) == H100 for n in nodes)
    assert len(nodes) == 2, "topology spread puts the two replicas on different nodes"

    row = k.kubectl("-n", namespace, "get", "mdep", "resnet", "--no-headers").stdout.split()
    assert row[:5] == ["resnet", "True", "2/2", "1x", "H100-80GB-HBM3"], row
    assert "resnet:3" in row and "AllReplicasReady" in row
    events = k.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=resnet,involvedObject.kind=ModelDeployment",
    ).stdout
    assert "AllReplicasReady" in events


def test_mig_slice_lands_on_the_mig_node(k: KubeCluster, namespace: str) -> None:
    apply_as_user(
        k,
        namespace,
        manifest("bert", {"gpu": {"count": None, "mig": "1g.10gb", "products": [A100]}}),
    )
    wait_condition(k, namespace, "bert", "Ready", "True")
    (pod,) = pods_of(k, namespace, "bert")
    assert pod["spec"]["nodeName"] == "gpu-a100-mig-0"
    row = k.kubectl("-n", namespace, "get", "mdep", "bert", "--no-headers").stdout
    assert "mig-1g.10gb" in row


def test_update_rolls_out_and_observed_generation_follows(k: KubeCluster, namespace: str) -> None:
    apply_as_user(k, namespace, manifest("roll", {"replicas": 2}))
    before = wait_condition(k, namespace, "roll", "Ready", "True")
    old_pods = {p["metadata"]["name"] for p in pods_of(k, namespace, "roll")}
    apply_as_user(
        k, namespace, manifest("roll", {"replicas": 2, "model": {"version": "2"}}, load_seconds=3)
    )
    wait_condition(k, namespace, "roll", "Progressing", "True", "RolloutInProgress", timeout=30)
    after = wait_condition(k, namespace, "roll", "Ready", "True", timeout=120)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
    assert after["status"]["model"]["version"] == "2"
    new_pods = {p["metadata"]["name"] for p in pods_of(k, namespace, "roll")}
    assert len(new_pods) == 2 and not new_pods & old_pods
    dep = get(k, namespace, "deployment", "roll")
    assert dep is not None and "2" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_no_spare_gpu_rollout_replaces_in_place_instead_of_deadlocking(
    k: KubeCluster, namespace: str
) -> None:
    # 2 pods x 8 GPUs fill both H100 nodes: a surge pod could never schedule.
    apply_as_user(k, namespace, manifest("big", {"replicas": 2, "gpu": {"count": 8}}))
    wait_condition(k, namespace, "big", "Ready", "True", timeout=120)
    apply_as_user(
        k,
        namespace,
        manifest("big", {"replicas": 2, "gpu": {"count": 8}, "model": {"version": "2"}}),
    )
    md = wait_condition(k, namespace, "big", "Ready", "True", timeout=180)
    assert md["status"]["rolloutStrategy"].startswith(
        "RollingUpdate(maxSurge=0,maxUnavailable=1)"
    ), md["status"]["rolloutStrategy"]
    assert "no free nvidia.com/gpu" in md["status"]["rolloutStrategy"]
    assert md["status"]["model"]["version"] == "2"


def test_gpus_exhausted_reports_insufficient_gpu(k: KubeCluster, namespace: str) -> None:
    apply_as_user(k, namespace, manifest("huge", {"replicas": 3, "gpu": {"count": 8}}))
    md = wait_condition(k, namespace, "huge", "Ready", "False", "InsufficientGPU", timeout=120)
    msg = cond(md, "Ready")["message"]
    assert msg.startswith(f"0/6 nodes have 8 free nvidia.com/gpu of product {H100}"), msg
    assert cond(md, "Degraded")["status"] == "True"
    # Two of three fit and serve once loaded: Available, not Ready.
    md = wait_condition(k, namespace, "huge", "Available", "True", timeout=60)
    assert cond(md, "Ready")["reason"] == "InsufficientGPU"
    row = k.kubectl("-n", namespace, "get", "mdep", "huge", "--no-headers").stdout
    assert "InsufficientGPU" in row and "2/3" in row
    events = k.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge,type=Warning",
    ).stdout
    assert "InsufficientGPU" in events


def test_gpu_product_no_node_offers_is_judged_by_the_operator(
    k: KubeCluster, namespace: str
) -> None:
    apply_as_user(k, namespace, manifest("b200", {"gpu": {"products": ["NVIDIA-B200"]}}))
    md = wait_condition(k, namespace, "b200", "Ready", "False", "GPUProductUnavailable")
    assert "NVIDIA-H100-80GB-HBM3" in cond(md, "Ready")["message"]  # lists what exists


def test_missing_pvc_is_reported(k: KubeCluster, namespace: str) -> None:
    apply_as_user(
        k, namespace, manifest("frompvc", {"model": {"uri": "pvc://nosuchclaim/resnet/1"}})
    )
    md = wait_condition(k, namespace, "frompvc", "Ready", "False", "ModelPVCNotFound")
    assert "nosuchclaim" in cond(md, "Ready")["message"]


def test_hand_edited_children_are_restored(k: KubeCluster, namespace: str) -> None:
    apply_as_user(k, namespace, manifest("drift"))
    wait_condition(k, namespace, "drift", "Ready", "True")
    k.kubectl("-n", namespace, "set", "image", "deployment/drift", "runtime=evil:latest")
    k.kubectl(
        "-n",
        namespace,
        "patch",
        "deployment",
        "drift",
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/template/spec/tolerations"}]),
    )

    def restored() -> bool:
        dep = get(k, namespace, "deployment", "drift")
        pod = (dep or {}).get("spec", {}).get("template", {}).get("spec", {})
        return bool(
            pod.get("containers", [{}])[0].get("image") == TEST_IMAGE and pod.get("tolerations")
        )

    wait_for(
        restored,
        timeout=30,
        what="the Deployment to be restored",
        describe=lambda: describe(k, namespace),
    )
    k.kubectl("-n", namespace, "delete", "service", "drift")
    wait_for(
        lambda: get(k, namespace, "service", "drift"),
        timeout=30,
        what="the deleted Service to come back",
    )


def test_kubectl_scale_mdep(k: KubeCluster, namespace: str) -> None:
    apply_as_user(k, namespace, manifest("scaled", {"gpu": None, "runtime": {"device": "cpu"}}))
    wait_condition(k, namespace, "scaled", "Ready", "True")
    k.kubectl("-n", namespace, "scale", "mdep", "scaled", "--replicas=3")
    md = wait_condition(k, namespace, "scaled", "Ready", "True", timeout=60)
    assert md["status"]["readyReplicas"] == 3
    dep = get(k, namespace, "deployment", "scaled")
    assert dep is not None and dep["spec"]["replicas"] == 3
    scale = json.loads(
        k.kubectl(
            "get",
            "--raw",
            f"/apis/modelfleet.io/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale",
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/instance=scaled" in scale["status"]["selector"]


def test_autoscaling_hpa_targets_the_scale_subresource_and_is_pruned(
    k: KubeCluster, namespace: str
) -> None:
    # No replicas in the applied manifest: the HPA owns spec.replicas (via /scale), and an
    # apply that sets it conflicts with the HPA, as it should.
    spec = {
        "gpu": None,
        "runtime": {"device": "cpu"},
        "replicas": None,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "metric": "cpu", "target": 60},
    }
    apply_as_user(k, namespace, manifest("auto", spec))
    md = wait_condition(k, namespace, "auto", "Ready", "True", timeout=60)
    assert md["status"]["replicas"] == 2  # min applies before the HPA's first decision
    hpa = get(k, namespace, "hpa", "auto")
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "auto",
    }

    def hpa_reads_scale() -> bool:
        h = get(k, namespace, "hpa", "auto") or {}
        able = cond(h, "AbleToScale")
        return able.get("status") == "True"

    wait_for(
        hpa_reads_scale,
        timeout=90,
        what="the HPA to read the mdep scale subresource",
        describe=lambda: json.dumps(get(k, namespace, "hpa", "auto"), indent=1),
    )
    spec["autoscaling"] = None  # type: ignore[assignment]
    apply_as_user(k, namespace, manifest("auto", spec))
    wait_for(
        lambda: get(k, namespace, "hpa", "auto") is None, timeout=30, what="the HPA to be pruned"
    )


def test_delete_garbage_collects_children(k: KubeCluster, namespace: str) -> None:
    apply_as_user(k, namespace, manifest("gone"))
    wait_condition(k, namespace, "gone", "Ready", "True")
    k.kubectl("-n", namespace, "delete", "mdep", "gone", "--wait=true")
    for kind in ("deployment", "service", "pdb"):
        wait_for(
            lambda kind=kind: get(k, namespace, kind, "gone") is None,
            timeout=60,
            what=f"{kind} gone to be garbage-collected",
        )
    wait_for(lambda: not pods_of(k, namespace, "gone"), timeout=60, what="pods gone")


def test_status_is_not_rewritten_when_nothing_changes(
    k: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_as_user(k, namespace, manifest("quiet"))
    md = wait_condition(k, namespace, "quiet", "Ready", "True")
    rv = md["metadata"]["resourceVersion"]
    # Two resync periods: reconciles run, but nothing changes, so nothing is written.
    wait_for(lambda: _resynced(operator), timeout=60, what="resync reconciles")
    time.sleep(operator.resync * 2)
    again = get(k, namespace, "mdep", "quiet")
    assert again is not None and again["metadata"]["resourceVersion"] == rv
    metrics = operator.metrics()
    assert "modelfleet_operator_reconciles_total" in metrics
    assert "modelfleet_operator_reconcile_duration_seconds_bucket" in metrics


def _resynced(operator: OperatorProcess) -> bool:
    return 'trigger="resync"' in operator.metrics()


def test_operator_log_has_no_tracebacks(k: KubeCluster, operator: OperatorProcess) -> None:
    text = pathlib.Path(operator.log_path).read_text(errors="replace")
    assert "Traceback" not in text, operator.log_tail(80)


def test_crashing_runtime_termination_message_reaches_status(
    k: KubeCluster, namespace: str
) -> None:
    # kwok runs no containers, so play the kubelet: report the runtime container crashing
    # with the message the runtime writes to /dev/termination-log.
    apply_as_user(k, namespace, manifest("crashy"))
    wait_condition(k, namespace, "crashy", "Ready", "True")
    (pod,) = pods_of(k, namespace, "crashy")
    message = "model load failed: digest mismatch: expected sha256:aa.., got sha256:bb.."
    status = {
        "status": {
            "containerStatuses": [
                {
                    "name": "runtime",
                    "ready": False,
                    "restartCount": 3,
                    "image": TEST_IMAGE,
                    "imageID": "",
                    "started": False,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": message,
                            "startedAt": "2026-01-01T00:00:00Z",
                            "finishedAt": "2026-01-01T00:00:05Z",
                        }
                    },
                }
            ]
        }
    }
    k.kubectl(
        "-n",
        namespace,
        "patch",
        "pod",
        pod["metadata"]["name"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    md = wait_condition(k, namespace, "crashy", "Degraded", "True", "ModelLoadFailed", timeout=30)
    assert "digest mismatch" in cond(md, "Degraded")["message"]
    assert cond(md, "Ready")["reason"] == "ModelLoadFailed"
