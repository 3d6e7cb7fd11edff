"""spec.warmCapacity: the placeholder Deployment (render), what the plan writes and leaves
alone, the status it reports, and that placeholders count as free room for plans."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modelfleet_operator.capacity import gpu_capacity
from modelfleet_operator.observe import (
    Facts,
    child_object,
    trim_child,
    trim_gpu_pod,
    trim_md,
    trim_node,
    warm_key,
)
from modelfleet_operator.plan import APPLY, DELETE, plan
from modelfleet_operator.render import Owner, RenderConfig
from modelfleet_operator.render.common import selector_labels
from modelfleet_operator.render.deployment import render_pod_template
from modelfleet_operator.render.warm import KIND, render_warm_capacity
from modelfleet_operator.spec import InvalidSpec, parse_spec
from modelfleet_operator.status import Reason, compute_status
from operator_samples import H100, md, node
from test_operator_status import conds, observe

CONFIG = RenderConfig(warm_capacity_priority_class="warm", warm_capacity_image="pause:1")
NODES = [trim_node(node("h100-0", gpus=8, product=H100, memory_mib=81559))]
WARM = {
    "warmCapacity": {"replicas": 2},
    "runtime": {"resources": {"cpu": "3", "memory": "12Gi"}},
    "gpu": {"count": 2, "products": [H100]},
    "scheduling": {
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def owner() -> Owner:
    return Owner.from_body(md(WARM))


def facts(spec: dict[str, Any] | None, children: dict[str, Any] | None = None) -> Facts:
    return Facts(
        md=trim_md(md(spec)),
        children=children or {},
        nodes=NODES,
        gpu_pods=[],
        pvc={"metadata": {"name": "models"}, "status": {"phase": "Bound"}},
    )


def serving_pod(spec: Any) -> dict[str, Any]:
    return dict(render_pod_template(owner(), spec, CONFIG)["spec"])


def live(manifest: dict[str, Any], uid: str = "uid-warm") -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["metadata"]["uid"] = uid
    out["metadata"]["resourceVersion"] = "7"
    return trim_child(out)


def test_placeholders_ask_for_what_a_serving_pod_asks_and_go_where_it_would() -> None:
    spec = parse_spec(md(WARM)["spec"], name="resnet")
    serving = render_pod_template(owner(), spec, CONFIG)["spec"]
    warm = render_warm_capacity(owner(), spec, CONFIG, serving)
    assert warm is not None
    pod = warm["spec"]["template"]["spec"]
    assert warm["kind"] == "Deployment" and warm["metadata"]["name"] == "resnet-warm"
    assert warm["spec"]["replicas"] == 2
    assert [c["resources"] for c in pod["containers"]] == [
        c["resources"] for c in serving["containers"]
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["image"] == "pause:1"
    assert pod["priorityClassName"] == "warm"
    for key in ("nodeSelector", "affinity", "tolerations"):
        assert pod[key] == serving[key]
    assert "volumes" not in pod and "initContainers" not in pod
    assert warm["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"


def test_placeholders_carry_none_of_the_serving_selector() -> None:
    """Else the Service would route callers to a pause container and the PDB, the builtin
    autoscaler and status would count it as a replica."""
    spec = parse_spec(md(WARM)["spec"], name="resnet")
    warm = render_warm_capacity(owner(), spec, CONFIG, serving_pod(spec))
    assert warm is not None
    labels = warm["spec"]["template"]["metadata"]["labels"]
    serving = selector_labels(owner())
    assert not all(labels.get(k) == v for k, v in serving.items())
    assert warm["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_no_warm_capacity_renders_none() -> None:
    spec = parse_spec(md()["spec"], name="resnet")
    assert render_warm_capacity(owner(), spec, CONFIG, serving_pod(spec)) is None
    zero = parse_spec(md({"warmCapacity": {"replicas": 0}})["spec"], name="resnet")
    assert zero.warm_capacity is None


@pytest.mark.parametrize("bad", [-1, 65, "2", True, 1.5])
def test_bad_replicas_are_named(bad: Any) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(md({"warmCapacity": {"replicas": bad}})["spec"], name="resnet")
    assert err.value.field == "spec.warmCapacity.replicas"


def test_plan_applies_it_then_leaves_it_then_prunes_it() -> None:
    p = plan(facts(WARM), CONFIG)
    warm = [a for a in p.actions if a.kind == KIND]
    assert [(a.kind, a.op) for a in warm] == [(KIND, APPLY)]
    assert warm[0].desired is not None
    kids = {a.kind: live(dict(a.desired or {}), f"uid-{a.kind}") for a in p.actions}
    assert plan(facts(WARM, kids), CONFIG).actions == ()
    gone = plan(facts({**WARM, "warmCapacity": None}, kids), CONFIG)
    assert [(a.kind, a.op) for a in gone.actions] == [(KIND, DELETE)]


def test_a_strangers_deployment_named_like_it_is_a_conflict_never_written() -> None:
    stranger = trim_child(
        {
            "kind": "Deployment",
            "metadata": {"name": "resnet-warm", "namespace": "ml", "uid": "other"},
            "spec": {"replicas": 9},
        }
    )
    p = plan(facts(WARM, {KIND: stranger}), CONFIG)
    assert all(a.kind != KIND for a in p.actions)
    conflicts = [pr for pr in p.problems if pr.reason == Reason.CHILD_CONFLICT]
    assert len(conflicts) == 1 and "Deployment resnet-warm exists" in conflicts[0].message
    # Without warm capacity wanted, someone's "resnet-warm" is none of our business.
    quiet = plan(facts(None, {KIND: stranger}), CONFIG)
    assert all(pr.reason != Reason.CHILD_CONFLICT for pr in quiet.problems)


def test_warm_key_and_child_object_name_the_placeholder_deployment() -> None:
    body = {"metadata": {"name": "resnet-warm", "namespace": "ml"}}
    assert warm_key(body) == ("ml", "resnet")
    assert warm_key({"metadata": {"name": "resnet", "namespace": "ml"}}) is None
    assert warm_key({"metadata": {"name": "-warm", "namespace": "ml"}}) is None
    assert child_object(KIND, "resnet") == ("Deployment", "resnet-warm")
    assert child_object("Service", "resnet") == ("Service", "resnet")


def warm_dep(ready: int, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"status": {"replicas": 2, "readyReplicas": ready, "conditions": conditions or []}}


SPEC = parse_spec(md(WARM)["spec"], name="resnet")


def test_status_reports_held_room_and_ready_is_the_serving_pods_alone() -> None:
    status, _ = compute_status_of(warm=warm_dep(1))
    assert status["warmCapacity"]["replicas"] == 2
    assert status["warmCapacity"]["readyReplicas"] == 1
    assert "1 of 2 placeholder pods" in status["warmCapacity"]["message"]
    assert conds(status)["Ready"]["status"] == "True"
    assert conds(status)["Degraded"]["status"] == "False"
    status, _ = compute_status_of(warm=warm_dep(2))
    assert status["warmCapacity"]["message"] is None  # a stale message is removed


def test_placeholders_that_cannot_be_created_degrade_but_do_not_unready() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "resnet-warm-x" is forbidden: no PriorityClass with name warm was found',
    }
    status, transitions = compute_status_of(warm=warm_dep(0, [failure]))
    c = conds(status)
    assert c["Ready"]["status"] == "True"
    assert c["Degraded"]["status"] == "True"
    assert c["Degraded"]["reason"] == Reason.WARM_CAPACITY_UNAVAILABLE
    assert "no PriorityClass with name warm" in c["Degraded"]["message"]
    assert any(t.type == "Degraded" for t in transitions)


def test_status_drops_warm_capacity_when_the_spec_does() -> None:
    plain = parse_spec(md()["spec"], name="resnet")
    previous = {"warmCapacity": {"replicas": 2, "readyReplicas": 2}}
    status, _ = compute_status(observe(spec=plain), previous, "2026-01-01T00:00:00Z")
    assert status["warmCapacity"] is None  # merge-patch null: removed


def compute_status_of(**kw: Any) -> tuple[dict[str, Any], Any]:
    return compute_status(observe(spec=SPEC, **kw), None, "2026-01-01T00:00:00Z")


def test_placeholder_gpus_are_free_room_for_plans() -> None:
    """A serving pod preempts a placeholder at once: its GPUs count as spare (a surge
    rollout, an InsufficientGPU judgement), not as used."""

    def gpu_pod(labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": "p", "namespace": "ml", "labels": labels},
            "spec": {
                "nodeName": "h100-0",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "8"}}}],
            },
            "status": {"phase": "Running"},
        }

    placeholder = gpu_pod(
        {"app.kubernetes.io/managed-by": "modelfleet-operator",
         "app.kubernetes.io/component": "warm-capacity"}
    )  # fmt: skip
    assert trim_gpu_pod(placeholder) is None
    busy = trim_gpu_pod(gpu_pod({"app": "training"}))
    assert busy is not None
    gpu = SPEC.gpu
    assert gpu is not None
    assert gpu_capacity(NODES, [], gpu).spare_pods == 4
    assert gpu_capacity(NODES, [busy], gpu).spare_pods == 0
