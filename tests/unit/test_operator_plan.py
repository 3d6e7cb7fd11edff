"""plan.plan and diff.differences, table by table: what the operator decides to write (and
not write) from what the watches show, for every input the issue and the findings list."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modelfleet_operator.diff import differences, list_paths
from modelfleet_operator.observe import Facts, trim_child, trim_md, trim_node
from modelfleet_operator.plan import APPLY, DELETE, REPLACE, plan
from modelfleet_operator.reconcile import PortBook
from modelfleet_operator.render import RenderConfig
from modelfleet_operator.render.activator import ActivatorEndpoint, ActivatorRoute
from modelfleet_operator.status import Reason
from operator_samples import A100, H100, md, node

CONFIG = RenderConfig()
NODES = [
    trim_node(node("h100-0", gpus=8, product=H100, memory_mib=81559)),
    trim_node(node("a100-mig", product=A100, resources={"nvidia.com/mig-1g.10gb": "7"})),
    trim_node(node("cpu-0")),
]
PVC_BOUND = {"metadata": {"name": "models"}, "status": {"phase": "Bound"}}


def facts(
    spec: dict[str, Any] | None = None, children: dict[str, Any] | None = None, **kw: Any
) -> Facts:
    base: dict[str, Any] = {"nodes": NODES, "gpu_pods": [], "pvc": PVC_BOUND}
    base.update(kw)
    return Facts(md=trim_md(md(spec)), children=children or {}, **base)


def converged(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The children as the API server would hold them after our apply."""
    out = {}
    for action in plan(facts(spec), CONFIG).actions:
        assert action.desired is not None
        live = copy.deepcopy(dict(action.desired))
        live["metadata"]["uid"] = f"uid-{action.kind}"
        live["metadata"]["resourceVersion"] = "7"
        out[action.kind] = trim_child(live)
    return out


def test_nothing_exists_yet_apply_every_child() -> None:
    p = plan(facts(), CONFIG)
    assert [(a.kind, a.op) for a in p.actions] == [
        ("Deployment", APPLY),
        ("Service", APPLY),
        ("PodDisruptionBudget", APPLY),
    ]
    assert p.problems == ()


def test_converged_means_no_action() -> None:
    assert plan(facts(children=converged()), CONFIG).actions == ()


def test_autoscaling_adds_the_hpa_and_removing_it_prunes_ours() -> None:
    auto = {"autoscaling": {"maxReplicas": 4, "target": 2, "engine": "hpa"}}
    kids = converged(auto)
    assert "HorizontalPodAutoscaler" in kids
    assert plan(facts(auto, children=kids), CONFIG).actions == ()
    p = plan(facts(children=kids), CONFIG)  # autoscaling removed from the spec
    assert [(a.kind, a.op) for a in p.actions] == [("HorizontalPodAutoscaler", DELETE)]


KEDA = {"serverAddress": "http://prometheus.monitoring:9090"}
ENGINE_CHILDREN = [
    # (autoscaling, the one scale-owning child rendered or None for the builtin engine)
    ({"maxReplicas": 4, "target": 2}, None),  # concurrency defaults to builtin
    ({"maxReplicas": 4, "target": 2, "metric": "rps"}, None),
    ({"maxReplicas": 4, "target": 70, "metric": "cpu"}, "HorizontalPodAutoscaler"),
    ({"maxReplicas": 4, "target": 2, "engine": "hpa"}, "HorizontalPodAutoscaler"),
    ({"maxReplicas": 4, "target": 2, "engine": "keda", "keda": KEDA}, "ScaledObject"),
    ({"maxReplicas": 4, "target": 70, "metric": "cpu", "engine": "keda"}, "ScaledObject"),
]


@pytest.mark.parametrize(("auto", "owner"), ENGINE_CHILDREN)
def test_exactly_one_engine_owns_the_scale_subresource(
    auto: dict[str, Any], owner: str | None
) -> None:
    kinds = {a.kind for a in plan(facts({"autoscaling": auto}), CONFIG).actions}
    scalers = kinds & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert scalers == ({owner} if owner else set())


@pytest.mark.parametrize(
    ("before", "after", "pruned"),
    [
        ("hpa", "builtin", "HorizontalPodAutoscaler"),
        ("hpa", "keda", "HorizontalPodAutoscaler"),
        ("keda", "hpa", "ScaledObject"),
        ("keda", "builtin", "ScaledObject"),
    ],
)
def test_switching_engines_deletes_the_child_that_no_longer_applies(
    before: str, after: str, pruned: str
) -> None:
    def auto(engine: str) -> dict[str, Any]:
        a: dict[str, Any] = {"maxReplicas": 4, "target": 2, "engine": engine}
        if engine == "keda":
            a["keda"] = KEDA
        return {"autoscaling": a}

    kids = converged(auto(before))
    p = plan(facts(auto(after), children=kids), CONFIG)
    ops = {(a.kind, a.op) for a in p.actions}
    assert (pruned, DELETE) in ops
    if after != "builtin":
        other = "ScaledObject" if after == "keda" else "HorizontalPodAutoscaler"
        assert (other, APPLY) in ops


def _edit(kids: dict[str, Any], kind: str, path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(kids)
    node: Any = out[kind]
    for part in path[:-1]:
        node = node[part]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


# (id, kind, path, new value (None: delete), expected op, expected list replaced)
DRIFT = [
    ("service port", "Service", ["spec", "ports", 0, "port"], 9090, REPLACE, "/spec/ports"),
    ("target port", "Service", ["spec", "ports", 0, "targetPort"], 9999, REPLACE, "/spec/ports"),
    (
        "service selector",
        "Service",
        ["spec", "selector", "app.kubernetes.io/instance"],
        "x",
        APPLY,
        None,
    ),
    (
        "image",
        "Deployment",
        ["spec", "template", "spec", "containers", 0, "image"],
        "evil:1",
        REPLACE,
        "/spec/template/spec/containers",
    ),
    ("hostNetwork", "Deployment", ["spec", "template", "spec", "hostNetwork"], True, APPLY, None),
    (
        "tolerations removed",
        "Deployment",
        ["spec", "template", "spec", "tolerations"],
        None,
        REPLACE,
        "/spec/template/spec/tolerations",
    ),
    (
        "managed-by label removed",
        "Deployment",
        ["metadata", "labels", "app.kubernetes.io/managed-by"],
        None,
        APPLY,
        None,
    ),
    ("replicas", "Deployment", ["spec", "replicas"], 9, APPLY, None),
    ("pdb", "PodDisruptionBudget", ["spec", "maxUnavailable"], 3, APPLY, None),
]


@pytest.mark.parametrize(
    ("label", "kind", "path", "value", "op", "replaced"), DRIFT, ids=[d[0] for d in DRIFT]
)
def test_drift_on_a_rendered_field_is_put_back(  # noqa: PLR0917 (one row of DRIFT)
    label: str, kind: str, path: list[Any], value: Any, op: str, replaced: str | None
) -> None:
    kids = _edit(converged(), kind, path, value)
    p = plan(facts(children=kids), CONFIG)
    assert [(a.kind, a.op) for a in p.actions] == [(kind, op)], label
    assert p.actions[0].lists == ((replaced,) if replaced else ())
    assert p.problems == ()  # ours, even without the label: no ChildConflict


# What the API server or other controllers add: never drift, never a write.
NOT_DRIFT = [
    (
        "api default in a container",
        "Deployment",
        ["spec", "template", "spec", "containers", 0, "terminationMessagePath"],
        "/dev/x",
    ),
    (
        "quantity respelled",
        "Deployment",
        ["spec", "template", "spec", "containers", 0, "resources", "requests", "memory"],
        "2048Mi",
    ),
    ("false omitted", "Deployment", ["spec", "template", "spec", "hostPID"], None),
    ("cluster ip", "Service", ["spec", "clusterIP"], "10.0.0.1"),
    ("someone's annotation", "Service", ["metadata", "annotations"], {"x": "y"}),
    ("status", "Deployment", ["status"], {"replicas": 2}),
]


@pytest.mark.parametrize(
    ("label", "kind", "path", "value"), NOT_DRIFT, ids=[d[0] for d in NOT_DRIFT]
)
def test_what_others_add_is_not_drift(label: str, kind: str, path: list[Any], value: Any) -> None:
    kids = converged({"runtime": {"resources": {"memory": "2Gi"}}})
    kids = _edit(kids, kind, path, value)
    assert (
        plan(facts({"runtime": {"resources": {"memory": "2Gi"}}}, children=kids), CONFIG).actions
        == ()
    ), label


@pytest.mark.parametrize(
    "kind",
    ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject"],
)
def test_a_strangers_child_is_reported_and_left_alone(kind: str) -> None:
    auto = {"autoscaling": {"maxReplicas": 4, "target": 2}}
    stranger = trim_child({"kind": kind, "metadata": {"name": "resnet", "uid": "x"}, "spec": {}})
    p = plan(facts(auto, children={kind: stranger}), CONFIG)
    assert kind not in {a.kind for a in p.actions}
    assert [x.reason for x in p.problems] == [Reason.CHILD_CONFLICT]
    assert f"{kind} resnet" in p.problems[0].message


def test_a_child_of_another_modeldeployment_uid_is_a_stranger() -> None:
    kids = converged()
    old = copy.deepcopy(kids["Service"])
    old["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-one"
    p = plan(facts(children={**kids, "Service": old}), CONFIG)
    assert p.actions == () and p.problems[0].reason == Reason.CHILD_CONFLICT


def test_an_applied_child_whose_owner_reference_was_stripped_is_still_ours() -> None:
    kids = converged()
    svc = copy.deepcopy(kids["Service"])
    svc["metadata"]["ownerReferences"] = []
    svc["metadata"]["appliedByUs"] = True
    p = plan(facts(children={**kids, "Service": svc}), CONFIG)
    assert [(a.kind, a.op) for a in p.actions] == [("Service", APPLY)] and p.problems == ()


# (id, spec patch, facts overrides, reason, words the message must hold)
JUDGED = [
    (
        "no such product",
        {"gpu": {"products": ["NVIDIA-B200"]}},
        {},
        Reason.GPU_PRODUCT_UNAVAILABLE,
        ["1 nvidia.com/gpu of product NVIDIA-B200", H100],
    ),
    (
        "no such mig",
        {"gpu": {"count": None, "mig": "2g.20gb"}},
        {},
        Reason.GPU_PRODUCT_UNAVAILABLE,
        ["nvidia.com/mig-2g.20gb", "spec.gpu.mig 2g.20gb", "nvidia.com/mig-1g.10gb"],
    ),
    (
        "not enough memory",
        {"gpu": {"minMemoryMiB": 100000}},
        {},
        Reason.GPU_PRODUCT_UNAVAILABLE,
        ["at least 100000 MiB", "81559 MiB"],
    ),
    (
        "pvc missing",
        {"model": {"uri": "pvc://models/m"}},
        {"pvc": None},
        Reason.MODEL_PVC_NOT_FOUND,
        ["'models'", "does not exist"],
    ),
    (
        "pvc pending",
        {"model": {"uri": "pvc://models/m"}},
        {"pvc": {"metadata": {"name": "models"}, "status": {"phase": "Pending"}}},
        Reason.MODEL_PVC_NOT_BOUND,
        ["'models'", "Pending"],
    ),
]


@pytest.mark.parametrize(
    ("label", "spec", "over", "reason", "words"), JUDGED, ids=[j[0] for j in JUDGED]
)
def test_cluster_facts_the_operator_judges(
    label: str, spec: dict[str, Any], over: dict[str, Any], reason: str, words: list[str]
) -> None:
    p = plan(facts(spec, **over), CONFIG)
    assert [x.reason for x in p.problems] == [reason], label
    for word in words:
        assert word in p.problems[0].message, (word, p.problems[0].message)
    assert p.actions  # still applied: it starts by itself once the cluster has it


def test_unknown_nodes_judge_nothing_and_roll_out_conservatively() -> None:
    p = plan(facts({"gpu": {"products": ["NVIDIA-B200"]}}, nodes=None, gpu_pods=None), CONFIG)
    assert p.problems == ()
    assert p.strategy is not None and p.strategy.max_surge == 0


# CRD-valid inputs that used to crash the operator: each is now a clear answer.
@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"runtime": {"resources": {"cpu": "-1"}}}, "spec.runtime.resources.cpu"),
        ({"runtime": {"resources": {"cpu": -1}}}, "spec.runtime.resources.cpu"),
        ({"runtime": {"resources": {"memory": "1e3"}}}, "spec.runtime.resources.memory"),
        (
            {"scheduling": {"affinity": {"nodeAffinity": "junk"}}},
            "spec.scheduling.affinity.nodeAffinity",
        ),
        (
            {
                "scheduling": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": "x"
                            }
                        }
                    }
                }
            },
            "nodeSelectorTerms",
        ),
        ({"scheduling": {"affinity": "junk"}}, "spec.scheduling.affinity"),
        ({"scheduling": {"tolerations": ["x"]}}, "spec.scheduling.tolerations[0]"),
    ],
)
def test_bad_inputs_are_invalid_specs_naming_the_field(patch: dict[str, Any], field: str) -> None:
    p = plan(facts(patch), CONFIG)
    assert p.invalid is not None and field in str(p.invalid)
    assert p.actions == ()


@pytest.mark.parametrize("cpu", ["1k", "2Gi", "1M", "0.5", "250m", 4])
def test_valid_quantities_are_accepted(cpu: str | int) -> None:
    p = plan(facts({"runtime": {"resources": {"cpu": cpu}}}), CONFIG)
    assert p.invalid is None
    dep = next(a.desired for a in p.actions if a.kind == "Deployment")
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert 1 <= int(args[args.index("--threads") + 1]) <= 256


def test_non_ascii_values_reach_the_children_unchanged() -> None:
    p = plan(facts({"scheduling": {"nodeSelector": {"team": "ml-🚀"}}}), CONFIG)
    dep = next(a.desired for a in p.actions if a.kind == "Deployment")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"team": "ml-🚀"}


def test_list_paths_take_the_outermost_list() -> None:
    desired = {"spec": {"a": [{"b": [1, 2]}], "c": {"d": 1}}}
    live = {"spec": {"a": [{"b": [1, 3]}], "c": {"d": 2}}}
    diffs = differences(desired, live)
    assert diffs == ["/spec/a/0/b/1", "/spec/c/d"]
    assert list_paths(desired, diffs) == ["/spec/a"]


def test_owner_references_are_compared_as_a_subset() -> None:
    ref = {"uid": "u", "kind": "ModelDeployment", "controller": True}
    desired = {"metadata": {"ownerReferences": [ref]}}
    live = {"metadata": {"ownerReferences": [{"uid": "other"}, {**ref, "apiVersion": "v"}]}}
    assert differences(desired, live) == []
    assert differences(desired, {"metadata": {"ownerReferences": [{"uid": "other"}]}}) == [
        "/metadata/ownerReferences"
    ]


# --- scale to zero: the activator's EndpointSlice ------------------------------------------

TO_ZERO = {"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": 2}}
ACTIVATOR = ActivatorRoute(
    port=20007, endpoints=(ActivatorEndpoint("10.1.0.5", "act-0", "modelfleet-system"),)
)


def _ready_pod(name: str = "p0", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def _slice(p: Any) -> Any:
    return next(a.desired for a in p.actions if a.kind == "EndpointSlice")


def test_at_zero_the_activator_slice_lists_the_activator_on_this_models_port() -> None:
    p = plan(facts({**TO_ZERO, "replicas": 0}, activator=ACTIVATOR), CONFIG)
    ep = _slice(p)
    assert ep["metadata"]["name"] == "resnet"  # never clashes with the controller's generated
    labels = ep["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "resnet"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "activator.modelfleet.io"
    assert ep["ports"] == [
        {"name": "http", "port": 20007, "protocol": "TCP", "appProtocol": "http"}
    ]
    assert ep["endpoints"][0]["addresses"] == ["10.1.0.5"]
    assert ep["metadata"]["annotations"]["modelfleet.io/max-held-requests"] == "100"
    assert ep["metadata"]["annotations"]["modelfleet.io/hold-timeout-seconds"] == "1200"


def test_a_ready_replica_takes_the_activator_out_of_the_path() -> None:
    cold = plan(facts(TO_ZERO, activator=ACTIVATOR, pods=[_ready_pod(ready=False)]), CONFIG)
    assert _slice(cold)["endpoints"] != []  # loading: callers still go to the activator
    warm = plan(facts(TO_ZERO, activator=ACTIVATOR, pods=[_ready_pod()]), CONFIG)
    assert _slice(warm)["endpoints"] == []
    leaving = _ready_pod()
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    going = plan(facts(TO_ZERO, activator=ACTIVATOR, pods=[leaving]), CONFIG)
    assert _slice(going)["endpoints"] != []


def test_an_empty_live_slice_is_converged_and_no_activator_prunes_ours() -> None:
    desired = copy.deepcopy(
        _slice(plan(facts(TO_ZERO, activator=ACTIVATOR, pods=[_ready_pod()]), CONFIG))
    )
    desired["metadata"]["uid"] = "u"
    desired["endpoints"] = None  # how the API server shows an empty list
    live = {**converged(TO_ZERO), "EndpointSlice": trim_child(desired)}
    p = plan(facts(TO_ZERO, children=live, activator=ACTIVATOR, pods=[_ready_pod()]), CONFIG)
    assert [a.kind for a in p.actions] == []
    gone = plan(facts(TO_ZERO, children=live, pods=[_ready_pod()]), CONFIG)
    assert [(a.kind, a.op) for a in gone.actions] == [("EndpointSlice", DELETE)]


def test_a_strangers_slice_with_our_name_conflicts_only_when_we_want_one() -> None:
    stranger = trim_child(
        {"kind": "EndpointSlice", "metadata": {"name": "resnet", "namespace": "ml", "uid": "x"}}
    )
    p = plan(facts(children={"EndpointSlice": stranger}), CONFIG)
    assert not [x for x in p.problems if x.reason == Reason.CHILD_CONFLICT]
    p = plan(facts(TO_ZERO, children={"EndpointSlice": stranger}, activator=ACTIVATOR), CONFIG)
    assert [x.reason for x in p.problems] == [Reason.CHILD_CONFLICT]
    assert "EndpointSlice" not in [a.kind for a in p.actions]


def test_port_book_keeps_ports_and_never_hands_one_out_twice() -> None:
    book = PortBook(port_range=(20000, 20002))
    a, b, c, d = ("ml", "a"), ("ml", "b"), ("ml", "c"), ("ml", "d")
    assert book.port_for(a, {}) == 20000
    assert book.port_for(b, {}) == 20001  # a's slice not seen yet: still taken
    assert book.port_for(a, {a: 20000}) == 20000
    assert book.port_for(c, {a: 20000, b: 20001}) == 20002
    assert book.port_for(d, {a: 20000, b: 20001, c: 20002}) is None  # range full
    book.release(b)
    assert book.port_for(d, {a: 20000, c: 20002}) == 20001
    # After a restart the live slices are the allocation; a clash keeps the first by name.
    fresh = PortBook(port_range=(20000, 20002))
    assert fresh.port_for(b, {a: 20000, b: 20000}) == 20001
    assert fresh.port_for(a, {a: 20000, b: 20000}) == 20000
