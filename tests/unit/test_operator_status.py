"""status.compute_status: conditions, reasons, transitions; capacity: free GPUs per product."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.capacity import gpu_capacity
from modelfleet_operator.render.deployment import Strategy
from modelfleet_operator.spec import GPUSpec, InvalidSpec, parse_spec
from modelfleet_operator.status import (
    Observed,
    Problem,
    Reason,
    compute_status,
    diagnose_pods,
    status_changed,
)
from operator_samples import A100, H100, L4, md, node, pod_on

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
SPEC = parse_spec(md()["spec"], name="resnet")  # 2 replicas, 1x H100


def dep(
    replicas: int = 2,
    ready: int = 2,
    updated: int = 2,
    *,
    available: int | None = None,
    generation: int = 1,
    observed: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 2},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": ready if available is None else available,
            "observedGeneration": observed,
            "conditions": conditions or [],
        },
    }


def observe(**kw: Any) -> Observed:
    base: dict[str, Any] = {
        "generation": 3,
        "selector": "a=b",
        "spec": SPEC,
        "url": "http://resnet.ml.svc:8080/v2/models/resnet",
        "deployment": dep(),
        "strategy": Strategy("RollingUpdate", 1, 0, "spare GPU"),
    }
    base.update(kw)
    return Observed(**base)


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def pending_pod(message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        },
    }


def crashing_pod(message: str, init: bool = False) -> dict[str, Any]:
    cs = {
        "name": "fetch-model" if init else "runtime",
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
    }
    key = "initContainerStatuses" if init else "containerStatuses"
    return {
        "metadata": {"name": "p"},
        "status": {"phase": "Pending" if init else "Running", key: [cs]},
    }


def test_all_ready() -> None:
    status, transitions = compute_status(observe(), None, NOW)
    c = conds(status)
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == Reason.ALL_READY
    assert c["Available"]["status"] == "True"
    assert c["Progressing"]["status"] == "False"
    assert c["Progressing"]["reason"] == Reason.ROLLOUT_COMPLETE
    assert c["Degraded"]["status"] == "False"
    assert status["observedGeneration"] == 3
    assert all(x["observedGeneration"] == 3 for x in status["conditions"])
    assert status["summary"] == {"replicas": "2/2", "gpu": "1x H100-80GB-HBM3", "model": "resnet:3"}
    assert status["url"].endswith("/v2/models/resnet")
    assert status["model"] == {"name": "resnet", "version": "3", "digest": None}
    assert status["rolloutStrategy"] == "RollingUpdate(maxSurge=1,maxUnavailable=0): spare GPU"
    # Events: Ready changes and Degraded turning True (Available/Progressing live in status).
    assert {t.type for t in transitions} == {"Ready"}


def test_last_transition_time_moves_only_on_flip() -> None:
    first, _ = compute_status(observe(), None, NOW)
    same, transitions = compute_status(observe(), first, LATER)
    assert same == first and transitions == []
    assert not status_changed(first, same)
    rolling = observe(deployment=dep(replicas=3, updated=1, ready=2))
    second, transitions = compute_status(rolling, first, LATER)
    c = conds(second)
    assert c["Ready"]["status"] == "False" and c["Ready"]["lastTransitionTime"] == LATER
    assert c["Ready"]["reason"] == Reason.ROLLOUT_IN_PROGRESS
    assert "RollingUpdate(maxSurge=1" in c["Ready"]["message"]
    assert c["Available"]["lastTransitionTime"] == NOW  # still True: unchanged
    assert c["Progressing"]["status"] == "True"
    assert {t.type for t in transitions} == {"Ready"}
    assert status_changed(first, second)


def test_insufficient_gpu_message_names_count_resource_and_product() -> None:
    msg = (
        "0/6 nodes are available: 2 Insufficient nvidia.com/gpu, 4 node(s) didn't match "
        "Pod's node affinity/selector. preemption: 0/6 nodes are available"
    )
    status, transitions = compute_status(
        observe(deployment=dep(replicas=3, updated=1, ready=2), pods=[pending_pod(msg)]), None, NOW
    )
    ready = conds(status)["Ready"]
    assert ready["reason"] == Reason.INSUFFICIENT_GPU
    assert ready["message"].startswith(f"0/6 nodes have 1 free nvidia.com/gpu of product {H100}")
    assert conds(status)["Degraded"]["status"] == "True"
    assert any(t.type == "Degraded" and t.event_type == "Warning" for t in transitions)


def test_crash_termination_message_reaches_ready() -> None:
    pod = crashing_pod("digest mismatch: expected sha256:aaa, got sha256:bbb")
    status, _ = compute_status(observe(deployment=dep(ready=1), pods=[pod, pod]), None, NOW)
    ready = conds(status)["Ready"]
    assert ready["reason"] == Reason.MODEL_LOAD_FAILED
    assert "digest mismatch" in ready["message"] and ready["message"].startswith("2 pods:")


def test_init_container_failure_is_fetch_failure() -> None:
    problems = diagnose_pods([crashing_pod("HTTP 404 for https://x/m", init=True)], SPEC)
    assert problems == [Problem(Reason.MODEL_FETCH_FAILED, problems[0].message)]
    assert "HTTP 404" in problems[0].message


def test_image_pull_and_missing_pvc() -> None:
    pull = {
        "metadata": {},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "runtime",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        },
    }
    pvc = pending_pod('persistentvolumeclaim "models" not found')
    reasons = {p.reason for p in diagnose_pods([pull, pvc], SPEC)}
    assert reasons == {Reason.IMAGE_PULL_FAILED, Reason.MODEL_PVC_NOT_FOUND}


def test_unbound_claim_message_with_a_stray_not_found_is_not_a_missing_claim() -> None:
    # Seen in CI: the scheduler appends an unrelated "not found" to the unbound-claim message.
    pod = pending_pod(
        "0/6 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
    )
    assert [p.reason for p in diagnose_pods([pod], SPEC)] == [Reason.MODEL_PVC_NOT_BOUND]


def test_operator_view_of_the_claim_replaces_the_scheduler_words() -> None:
    status, _ = compute_status(
        observe(
            deployment=dep(ready=0, available=0),
            problems=[
                Problem(Reason.MODEL_PVC_NOT_BOUND, "PersistentVolumeClaim 'models' is Pending")
            ],
            pods=[pending_pod('persistentvolumeclaim "models" not found')],
        ),
        None,
        NOW,
    )
    c = conds(status)
    assert c["Ready"]["reason"] == Reason.MODEL_PVC_NOT_BOUND
    assert Reason.MODEL_PVC_NOT_FOUND not in c["Degraded"]["message"]


def test_terminating_pods_are_ignored() -> None:
    p = crashing_pod("boom")
    p["metadata"]["deletionTimestamp"] = NOW
    assert diagnose_pods([p], SPEC) == []


def test_operator_judged_problem_wins_over_pod_symptoms() -> None:
    status, _ = compute_status(
        observe(
            deployment=dep(ready=0, available=0),
            problems=[Problem(Reason.GPU_PRODUCT_UNAVAILABLE, "no node offers NVIDIA-B200")],
            pods=[pending_pod("0/6 nodes are available: 6 node(s) didn't match")],
        ),
        None,
        NOW,
    )
    c = conds(status)
    assert c["Ready"]["reason"] == Reason.GPU_PRODUCT_UNAVAILABLE
    assert c["Available"]["status"] == "False"
    assert "Unschedulable" in c["Degraded"]["message"]


def test_invalid_spec_keeps_describing_what_still_runs() -> None:
    good, _ = compute_status(observe(), None, NOW)
    bad, transitions = compute_status(
        observe(spec=None, invalid=InvalidSpec("spec.gpu", "set count or mig, not both")),
        good,
        LATER,
    )
    c = conds(bad)
    assert c["Ready"]["reason"] == Reason.INVALID_SPEC
    assert "spec.gpu" in c["Ready"]["message"]
    assert c["Available"]["status"] == "True"  # the old pods still serve
    assert bad["url"] == good["url"] and bad["summary"] == good["summary"]
    assert any(t.reason == Reason.INVALID_SPEC for t in transitions)


def test_scaled_to_zero_and_waiting_for_deployment() -> None:
    zero = parse_spec(md({"replicas": 0})["spec"], name="resnet")
    status, _ = compute_status(observe(spec=zero, deployment=dep(0, 0, 0)), None, NOW)
    assert conds(status)["Ready"]["reason"] == Reason.SCALED_TO_ZERO
    status, _ = compute_status(observe(deployment=None), None, NOW)
    assert conds(status)["Ready"]["reason"] == Reason.WAITING_FOR_DEPLOYMENT


def test_deployment_not_yet_observed_is_not_ready() -> None:
    status, _ = compute_status(observe(deployment=dep(generation=2, observed=1)), None, NOW)
    assert conds(status)["Ready"]["status"] == "False"


def test_progress_deadline() -> None:
    d = dep(
        ready=1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            }
        ],
    )
    status, _ = compute_status(observe(deployment=d), None, NOW)
    c = conds(status)
    assert c["Progressing"]["reason"] == Reason.PROGRESS_DEADLINE_EXCEEDED
    assert c["Degraded"]["status"] == "True"


def test_waiting_for_model_load() -> None:
    status, _ = compute_status(observe(deployment=dep(ready=1)), None, NOW)
    assert conds(status)["Ready"]["reason"] == Reason.REPLICAS_NOT_READY


CLUSTER = [
    node("h100-0", gpus=8, product=H100, memory_mib=81559),
    node("h100-1", gpus=8, product=H100, memory_mib=81559),
    node(
        "a100-mig",
        product=A100,
        resources={"nvidia.com/mig-1g.10gb": "14", "nvidia.com/mig-3g.40gb": "2"},
    ),
    node("l4", gpus=1, product=L4, memory_mib=23034),
    node("cpu-0"),
    node("cpu-1"),
]


def test_capacity_counts_free_gpus_of_accepted_products() -> None:
    h100 = GPUSpec(count=2, products=(H100,))
    cap = gpu_capacity(CLUSTER, [], h100)
    assert (cap.nodes, cap.offering, cap.spare_pods, cap.free_max) == (6, 2, 8, 8)
    busy = [
        pod_on("h100-0", gpus=7),
        pod_on("h100-1", gpus=8),
        pod_on("h100-1", gpus=8, phase="Succeeded"),
    ]
    cap = gpu_capacity(CLUSTER, busy, h100)
    assert (cap.spare_pods, cap.free_max) == (0, 1)
    any_gpu = gpu_capacity(CLUSTER, busy, GPUSpec(count=1))
    assert any_gpu.offering == 3 and any_gpu.spare_pods == 2  # h100-0 (1) + l4 (1)


def test_capacity_mig_memory_and_missing_products() -> None:
    mig = gpu_capacity(
        CLUSTER,
        [pod_on("a100-mig", gpus=2, resource="nvidia.com/mig-3g.40gb")],
        GPUSpec(count=0, mig="3g.40gb"),
    )
    assert (mig.offering, mig.spare_pods) == (1, 0)
    assert gpu_capacity(CLUSTER, [], GPUSpec(count=1, products=("NVIDIA-B200",))).offering == 0
    assert gpu_capacity(CLUSTER, [], GPUSpec(count=1, min_memory_mib=40000)).offering == 2
    cordoned = [node("h", gpus=8, product=H100, unschedulable=True)]
    cap = gpu_capacity(cordoned, [], GPUSpec(count=1, products=(H100,)))
    assert (cap.offering, cap.spare_pods) == (1, 0)
