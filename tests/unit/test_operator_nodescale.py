"""A node autoscaler's Events on pending pods -> WaitingForNode / NoNodeGroupFits.

The Event texts are the ones Cluster Autoscaler (cluster-autoscaler/processors/status,
utils/errors) and Karpenter v1.15 (pkg/controllers/provisioning/scheduling/events.go) post.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelfleet_operator.nodescale import (
    NO_FIT,
    SELECTORS,
    WAITING,
    newest_by_pod,
    recognize,
)
from modelfleet_operator.nodewatch import NodeEventWatch, unschedulable
from modelfleet_operator.render import Owner, RenderConfig
from modelfleet_operator.render.deployment import SAFE_TO_EVICT_LOCAL_VOLUMES, render_pod_template
from modelfleet_operator.spec import parse_spec
from modelfleet_operator.status import Problem, Reason, compute_status
from operator_samples import md
from test_operator_status import NOW, conds, dep, observe, pending_pod

INSUFFICIENT = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def event(
    reason: str,
    message: str,
    component: str,
    *,
    pod: str = "p",
    at: str = "2026-01-01T00:00:10Z",
    kind: str = "Pod",
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{pod}.1", "namespace": "ml"},
        "involvedObject": {"kind": kind, "name": pod, "namespace": "ml"},
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "lastTimestamp": at,
    }


CA_UP = event(
    "TriggeredScaleUp",
    "pod triggered scale-up: [{gpu-h100-8 0->1 (max: 4)}]",
    "cluster-autoscaler",
)
CA_NO = event(
    "NotTriggerScaleUp",
    "pod didn't trigger scale-up: 2 Insufficient nvidia.com/gpu, 1 max node group size reached",
    "cluster-autoscaler",
)
KARP_UP = event("Nominated", "Pod should schedule on: nodeclaim/gpu-h100-x7k2p", "karpenter")
KARP_NO = event(
    "FailedScheduling",
    'Failed to schedule pod, incompatible with nodepool "gpu", daemonset overhead={...}, '
    "no instance type met the scheduling requirements or had enough resources",
    "karpenter",
)
SCHEDULER = event("FailedScheduling", INSUFFICIENT, "default-scheduler")


def test_the_node_autoscalers_events_are_recognized_and_the_schedulers_are_not() -> None:
    assert [recognize(e)[1].outcome for e in (CA_UP, CA_NO, KARP_UP, KARP_NO)] == [  # type: ignore[index]
        WAITING,
        NO_FIT,
        WAITING,
        NO_FIT,
    ]
    assert recognize(SCHEDULER) is None  # the scheduler's own FailedScheduling
    assert recognize(event("Nominated", "x", "default-scheduler")) is None
    assert recognize({**CA_UP, "involvedObject": {"kind": "Node", "name": "n"}}) is None
    assert recognize({}) is None and recognize({"involvedObject": {"kind": "Pod"}}) is None


def test_descriptions_name_the_node_group() -> None:
    assert recognize(CA_UP)[1].describe() == (  # type: ignore[index]
        "cluster-autoscaler is adding a node: node group gpu-h100-8 0 -> 1 (max 4)"
    )
    assert recognize(KARP_UP)[1].describe() == (  # type: ignore[index]
        "karpenter is launching a node: node pool gpu-h100 (nodeclaim gpu-h100-x7k2p)"
    )
    said = recognize(CA_NO)[1]  # type: ignore[index]
    assert said.describe().startswith("cluster-autoscaler: pod didn't trigger scale-up: 2")


def test_the_newest_event_per_pod_wins() -> None:
    later_no = {**CA_NO, "lastTimestamp": "2026-01-01T00:01:00Z"}
    assert newest_by_pod([CA_UP, later_no])["p"].outcome == NO_FIT
    assert newest_by_pod([later_no, CA_UP])["p"].outcome == NO_FIT
    series = {**CA_UP, "series": {"lastObservedTime": "2026-01-01T00:02:00Z"}}
    assert newest_by_pod([later_no, series])["p"].outcome == WAITING
    assert set(newest_by_pod([CA_UP, event("Nominated", "n", "karpenter", pod="q")])) == {"p", "q"}


def test_selectors_are_equality_only_and_cover_every_known_event() -> None:
    assert all("!" not in s and " " not in s for s in SELECTORS)
    assert "involvedObject.kind=Pod,reason=FailedScheduling,source=karpenter" in SELECTORS
    assert "involvedObject.kind=Pod,reason=TriggeredScaleUp" in SELECTORS


def test_waiting_for_a_node_is_ready_false_but_not_degraded() -> None:
    said = newest_by_pod([CA_UP])
    status, transitions = compute_status(
        observe(
            deployment=dep(replicas=2, updated=2, ready=1),
            pods=[pending_pod(INSUFFICIENT)],
            node_events=said,
        ),
        None,
        NOW,
    )
    ready = conds(status)["Ready"]
    assert ready["reason"] == Reason.WAITING_FOR_NODE
    assert ready["message"].startswith(
        "cluster-autoscaler is adding a node: node group gpu-h100-8 0 -> 1 (max 4) (scheduler: "
    )
    assert conds(status)["Degraded"]["status"] == "False"
    assert all(t.event_type == "Normal" for t in transitions)


def test_no_node_group_fits_is_degraded_and_replaces_the_operators_guess() -> None:
    guess = Problem(Reason.GPU_PRODUCT_UNAVAILABLE, "no node offers 1x nvidia.com/gpu of H100")
    status, transitions = compute_status(
        observe(
            deployment=dep(replicas=2, updated=2, ready=1),
            pods=[pending_pod(INSUFFICIENT)],
            problems=[guess],
            node_events=newest_by_pod([KARP_NO]),
        ),
        None,
        NOW,
    )
    ready, degraded = conds(status)["Ready"], conds(status)["Degraded"]
    assert ready["reason"] == Reason.NO_NODE_GROUP_FITS
    assert "no instance type met the scheduling requirements" in ready["message"]
    assert degraded["status"] == "True" and "GPUProductUnavailable" not in degraded["message"]
    assert any(t.type == "Ready" and t.event_type == "Warning" for t in transitions)


def test_without_events_the_schedulers_reason_stays_and_others_pods_do_not_count() -> None:
    other = newest_by_pod([event("TriggeredScaleUp", CA_UP["message"], "ca", pod="not-ours")])
    status, _ = compute_status(
        observe(deployment=dep(replicas=2, updated=2, ready=1), pods=[pending_pod(INSUFFICIENT)]),
        None,
        NOW,
    )
    assert conds(status)["Ready"]["reason"] == Reason.INSUFFICIENT_GPU
    status, _ = compute_status(
        observe(
            deployment=dep(replicas=2, updated=2, ready=1),
            pods=[pending_pod(INSUFFICIENT)],
            node_events={"q": next(iter(other.values()))},
        ),
        None,
        NOW,
    )
    assert conds(status)["Ready"]["reason"] == Reason.INSUFFICIENT_GPU


def test_a_scheduled_pod_ignores_a_stale_scale_up_event() -> None:
    running = {"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": []}}
    status, _ = compute_status(
        observe(deployment=dep(), pods=[running], node_events=newest_by_pod([CA_UP])), None, NOW
    )
    assert conds(status)["Ready"]["reason"] == Reason.ALL_READY


class Pods(dict[Any, list[dict[str, Any]]]):
    pass


def test_the_watch_lists_only_while_a_pod_waits_and_queues_what_changed() -> None:
    pods = Pods({("ml", "resnet"): [pending_pod(INSUFFICIENT)], ("ml", "ok"): []})
    asked: list[tuple[str, str]] = []
    answer: dict[str, list[dict[str, Any]]] = {}
    queued: list[tuple[str, str]] = []

    async def list_events(namespace: str, selector: str) -> list[dict[str, Any]]:
        asked.append((namespace, selector))
        return list(answer.get(selector, []))

    watch = NodeEventWatch(pods, list_events, queued.append)
    asyncio.run(watch.tick())
    assert {a[0] for a in asked} == {"ml"} and len(asked) == len(SELECTORS)
    assert queued == [] and watch.for_pods("ml", pods[("ml", "resnet")]) == {}

    answer["involvedObject.kind=Pod,reason=TriggeredScaleUp"] = [CA_UP]
    asyncio.run(watch.tick())
    assert queued == [("ml", "resnet")]
    assert watch.for_pods("ml", pods[("ml", "resnet")])["p"].outcome == WAITING
    asyncio.run(watch.tick())
    assert queued == [("ml", "resnet")]  # nothing new: not queued again

    pods[("ml", "resnet")] = [{"metadata": {"name": "p"}, "status": {"phase": "Running"}}]
    asked.clear()
    asyncio.run(watch.tick())
    assert asked == []  # nothing waits: no request at all
    assert queued == [("ml", "resnet"), ("ml", "resnet")]  # its news went away


def test_a_failed_list_keeps_what_was_known() -> None:
    pods = Pods({("ml", "resnet"): [pending_pod(INSUFFICIENT)]})
    fail = [False]

    async def list_events(namespace: str, selector: str) -> list[dict[str, Any]]:
        if fail[0]:
            raise RuntimeError("403 Forbidden")
        return [CA_UP] if "TriggeredScaleUp" in selector else []

    watch = NodeEventWatch(pods, list_events, lambda key: None)
    asyncio.run(watch.tick())
    fail[0] = True
    asyncio.run(watch.tick())
    assert watch.for_pods("ml", pods[("ml", "resnet")])["p"].outcome == WAITING


def test_unschedulable_means_pending_with_podscheduled_false() -> None:
    assert unschedulable(pending_pod(INSUFFICIENT))
    assert not unschedulable({"status": {"phase": "Pending", "conditions": []}})
    gone = pending_pod(INSUFFICIENT)
    gone["metadata"]["deletionTimestamp"] = NOW
    assert not unschedulable(gone)


def test_serving_pods_name_their_emptydir_volumes_safe_to_evict() -> None:
    owner = Owner.from_body(md())
    for uri, want in (("s3://b/m", "model,tmp,dshm"), ("pvc://models/m", "tmp,dshm")):
        raw = md()["spec"]
        raw["model"]["uri"] = uri
        spec = parse_spec(raw, name="resnet")
        template = render_pod_template(owner, spec, RenderConfig())
        assert template["metadata"]["annotations"][SAFE_TO_EVICT_LOCAL_VOLUMES] == want
