"""The operator tried as a hostile user on the real control plane: inputs the CRD lets through
end in a status that names them, strangers' objects are never touched, every hand edit of a
field the operator sets is put back, and the status tells apart what the cluster lacks."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import (
    A100,
    OperatorProcess,
    apply_as_user,
    cond,
    describe,
    get,
    manifest,
    running_operator,
    wait_condition,
)


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kube_cluster, log, 300) as proc:
        yield proc


@pytest.fixture
def k(kube_cluster: KubeCluster, operator: OperatorProcess) -> KubeCluster:
    return kube_cluster


CPU = {"gpu": None, "runtime": {"device": "cpu", "resources": {"cpu": "1", "memory": "1Gi"}}}


# --- inputs the CRD accepts but the operator must answer ---------------------------------------

# (id, spec patch, reason, words in the Ready message)
BAD_INPUTS = [
    (
        "negative cpu as an integer",
        {"runtime": {"resources": {"cpu": -1}}},
        "InvalidSpec",
        ["spec.runtime.resources.cpu", "negative"],
    ),
    (
        "affinity a string where an object belongs",
        {"scheduling": {"affinity": {"nodeAffinity": "junk"}}},
        "InvalidSpec",
        ["spec.scheduling.affinity.nodeAffinity", "must be an object"],
    ),
    (
        "node selector terms a string",
        {
            "scheduling": {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}
                    }
                }
            }
        },
        "InvalidSpec",
        ["nodeSelectorTerms", "must be a list"],
    ),
    (
        "1k cpu is a real quantity no node has",
        {"runtime": {"resources": {"cpu": "1k"}}},
        "Unschedulable",
        ["Insufficient cpu"],
    ),
    (
        "a MIG profile no node offers",
        {"gpu": {"count": None, "mig": "7g.80gb", "products": [A100]}},
        "GPUProductUnavailable",
        ["nvidia.com/mig-7g.80gb", A100],
    ),
    (
        "more GPU memory than any node",
        {"gpu": {"minMemoryMiB": 500000}},
        "GPUProductUnavailable",
        ["at least 500000 MiB"],
    ),
    (
        "a PriorityClass that does not exist",
        {"scheduling": {"priorityClassName": "no-such"}},
        "PriorityClassNotFound",
        ["'no-such'", "no pod can be created"],
    ),
    (
        "a claim that does not exist",
        {"model": {"uri": "pvc://nosuchclaim/m/1"}},
        "ModelPVCNotFound",
        ["nosuchclaim"],
    ),
]


@pytest.mark.parametrize(
    ("label", "spec", "reason", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_ends_in_a_status_naming_it(  # noqa: PLR0917 (one row of BAD_INPUTS)
    k: KubeCluster, namespace: str, label: str, spec: dict[str, Any], reason: str, words: list[str]
) -> None:
    name = "bad"
    apply_as_user(k, namespace, manifest(name, spec))
    md = wait_condition(k, namespace, name, "Ready", "False", reason, timeout=60)
    message = cond(md, "Ready")["message"]
    for word in words:
        assert word in message, (label, message)


def test_an_unbound_claim_is_not_a_missing_one(k: KubeCluster, namespace: str) -> None:
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models"},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    apply_as_user(k, namespace, manifest("frompvc", {"model": {"uri": "pvc://models/resnet/1"}}))
    md = wait_condition(k, namespace, "frompvc", "Ready", "False", "ModelPVCNotBound", timeout=60)
    assert "'models'" in cond(md, "Ready")["message"]


def test_non_ascii_values_reach_the_pods(k: KubeCluster, namespace: str) -> None:
    note = "模型 🚀 ünïcödé"
    body = manifest("unicode", CPU)
    body["metadata"]["annotations"]["modelfleet.io/simulated-note"] = note
    apply_as_user(k, namespace, body)
    wait_condition(k, namespace, "unicode", "Ready", "True", timeout=60)
    dep = get(k, namespace, "deployment", "unicode")
    assert dep is not None
    assert dep["spec"]["template"]["metadata"]["annotations"]["modelfleet.io/simulated-note"] == (
        note
    )


# --- strangers ---------------------------------------------------------------------------------

STRANGERS: dict[str, dict[str, Any]] = {
    "Service": {
        "apiVersion": "v1",
        "kind": "Service",
        "spec": {"selector": {"app": "theirs"}, "ports": [{"name": "web", "port": 80}]},
    },
    "PodDisruptionBudget": {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "theirs"}}},
    },
    "HorizontalPodAutoscaler": {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "theirs"},
            "minReplicas": 1,
            "maxReplicas": 2,
        },
    },
    "Deployment": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "theirs:1"}]},
            },
        },
    },
}


@pytest.mark.parametrize("kind", list(STRANGERS))
def test_a_strangers_object_is_never_touched(k: KubeCluster, namespace: str, kind: str) -> None:
    name = "taken"
    stranger = {**STRANGERS[kind], "metadata": {"name": name, "labels": {"app": "theirs"}}}
    k.apply(stranger, namespace)
    before = get(k, namespace, kind.lower(), name)
    assert before is not None
    spec = {
        **CPU,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "cpu", "target": 80},
        "replicas": None,
    }
    apply_as_user(k, namespace, manifest(name, spec))
    md = wait_condition(k, namespace, name, "Ready", "False", "ChildConflict", timeout=60)
    assert f"{kind} {name}" in cond(md, "Ready")["message"]
    after = get(k, namespace, kind.lower(), name)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    # Deleting the ModelDeployment leaves the stranger's object alone (no garbage collection).
    k.kubectl("-n", namespace, "delete", "mdep", name, "--wait=true")
    kept = get(k, namespace, kind.lower(), name)
    assert kept is not None and kept["metadata"]["uid"] == before["metadata"]["uid"]


# --- drift ---------------------------------------------------------------------------------------


def _dep_spec(k: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    dep = get(k, namespace, "deployment", name) or {}
    return dict(dep.get("spec", {}))


# (id, kind, kubectl patch args, probe that the operator's value is back)
DRIFT: list[tuple[str, str, list[str], Any]] = [
    (
        "service port (the list-map key)",
        "service",
        [
            "--type=json",
            "-p",
            json.dumps([{"op": "replace", "path": "/spec/ports/0/port", "value": 9090}]),
        ],
        lambda svc: [p["port"] for p in svc["spec"]["ports"]] == [8080],
    ),
    (
        "service targetPort",
        "service",
        [
            "--type=json",
            "-p",
            json.dumps([{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9999}]),
        ],
        lambda svc: svc["spec"]["ports"][0]["targetPort"] == "http",
    ),
    (
        "hostNetwork turned on",
        "deployment",
        ["--type=merge", "-p", json.dumps({"spec": {"template": {"spec": {"hostNetwork": True}}}})],
        lambda d: not d["spec"]["template"]["spec"].get("hostNetwork"),
    ),
    (
        "managed-by label removed",
        "deployment",
        [
            "--type=json",
            "-p",
            json.dumps(
                [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}]
            ),
        ],
        lambda d: (
            d["metadata"]["labels"].get("app.kubernetes.io/managed-by") == ("modelfleet-operator")
        ),
    ),
    (
        "container image",
        "deployment",
        [
            "--type=json",
            "-p",
            json.dumps(
                [
                    {
                        "op": "replace",
                        "path": "/spec/template/spec/containers/0/image",
                        "value": "evil:1",
                    }
                ]
            ),
        ],
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["image"] != "evil:1",
    ),
    (
        "pdb maxUnavailable",
        "pdb",
        ["--type=merge", "-p", json.dumps({"spec": {"maxUnavailable": 5}})],
        lambda p: p["spec"]["maxUnavailable"] == 1,
    ),
]


@pytest.mark.parametrize(("label", "kind", "patch", "restored"), DRIFT, ids=[d[0] for d in DRIFT])
def test_drift_on_a_field_the_operator_sets_is_restored(  # noqa: PLR0917 (one DRIFT row)
    k: KubeCluster, namespace: str, label: str, kind: str, patch: list[str], restored: Any
) -> None:
    name = "drift"
    apply_as_user(k, namespace, manifest(name, CPU))
    wait_condition(k, namespace, name, "Ready", "True", timeout=60)
    k.kubectl("-n", namespace, "patch", kind, name, *patch)

    def back() -> bool:
        obj = get(k, namespace, kind, name)
        return obj is not None and bool(restored(obj))

    # Seconds, not a resync period (300 s in this module): the watch sees the edit.
    wait_for(
        back, timeout=30, what=f"{label} to be restored", describe=lambda: describe(k, namespace)
    )
    md = wait_condition(k, namespace, name, "Ready", "True", timeout=60)
    assert cond(md, "Degraded")["status"] == "False"


def test_operator_log_has_no_tracebacks(k: KubeCluster, operator: OperatorProcess) -> None:
    text = pathlib.Path(operator.log_path).read_text(errors="replace")
    assert "Traceback" not in text, operator.log_tail(80)
