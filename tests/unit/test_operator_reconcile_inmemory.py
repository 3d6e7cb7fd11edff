"""reconcile.Reconciler against an in-memory API (the real one is in tests/integration):
what gets applied, pruned, written and posted, and how concurrent requests collapse."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_operator.kube import KubeError
from modelfleet_operator.reconcile import KeyedRunner, Reconciler, Resyncer
from modelfleet_operator.spec import parse_spec
from operator_samples import H100, md, node

ROOT = Path(__file__).resolve().parents[2]


class FakeKube:
    """Just enough of kube.Kube: objects by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.status_writes = 0
        self.events: list[tuple[str, str]] = []
        self.fail_apply: KubeError | None = None

    def add(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(kind, meta.get("namespace"), meta["name"])] = obj

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        want = dict(kv.split("=") for kv in labels.split(",")) if labels else {}
        out = []
        for (k, ns, _), obj in self.objects.items():
            have = obj["metadata"].get("labels") or {}
            if k == kind and (namespace is None or ns == namespace) and all(
                    have.get(a) == b for a, b in want.items()):
                out.append(copy.deepcopy(obj))
        return out

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.fail_apply:
            raise self.fail_apply
        self.applied.append(obj["kind"])
        stored = copy.deepcopy(obj)
        old = self.get(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        stored["metadata"]["uid"] = f"uid-{obj['kind']}"
        stored["status"] = (old or {}).get("status", {})
        self.add(obj["kind"], stored)
        return copy.deepcopy(stored)

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        self.deleted.append(kind)
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_writes += 1
        self.objects[("ModelDeployment", namespace, name)]["status"] = copy.deepcopy(status)

    def event(self, owner: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason))


def cluster(spec: dict[str, Any] | None = None) -> tuple[FakeKube, Reconciler]:
    kube = FakeKube()
    kube.add("ModelDeployment", md(spec))
    for n in (node("h100-0", gpus=8, product=H100), node("cpu-0")):
        kube.add("Node", n)
    kube.add("PersistentVolumeClaim", {"metadata": {"name": "models", "namespace": "ml"}})
    return kube, Reconciler(kube, cluster_ttl=0)  # type: ignore[arg-type]


def ready_deployment(kube: FakeKube, replicas: int = 2) -> None:
    dep = kube.objects[("Deployment", "ml", "resnet")]
    dep["metadata"]["generation"] = 1
    dep["status"] = {"replicas": replicas, "readyReplicas": replicas, "availableReplicas":
                     replicas, "updatedReplicas": replicas, "observedGeneration": 1}


def test_first_reconcile_applies_children_and_writes_status_once() -> None:
    kube, rec = cluster()
    out = rec.reconcile("ml", "resnet")
    assert kube.applied == ["Deployment", "Service", "PodDisruptionBudget"]
    assert out.status_written and not out.ready
    status = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]
    assert status["observedGeneration"] == 1
    assert status["rolloutStrategy"].startswith("RollingUpdate(maxSurge=1")
    ready_deployment(kube)
    out = rec.reconcile("ml", "resnet")
    assert out.ready and kube.status_writes == 2
    assert ("Normal", "AllReplicasReady") in kube.events
    writes, events = kube.status_writes, len(kube.events)
    rec.reconcile("ml", "resnet")
    rec.reconcile("ml", "resnet", full=False)
    assert (kube.status_writes, len(kube.events)) == (writes, events)  # nothing changed


def test_autoscaling_off_prunes_the_hpa() -> None:
    kube, rec = cluster({"autoscaling": {"maxReplicas": 4, "target": 2}})
    rec.reconcile("ml", "resnet")
    assert ("HorizontalPodAutoscaler", "ml", "resnet") in kube.objects
    body = kube.objects[("ModelDeployment", "ml", "resnet")]
    del body["spec"]["autoscaling"]
    rec.reconcile("ml", "resnet")
    assert ("HorizontalPodAutoscaler", "ml", "resnet") not in kube.objects
    assert kube.deleted == ["HorizontalPodAutoscaler"]


def test_invalid_spec_applies_nothing_and_says_why() -> None:
    kube, rec = cluster({"gpu": {"mig": "1g.10gb"}})  # count and mig: CRD would refuse
    out = rec.reconcile("ml", "resnet")
    assert out.invalid is not None and kube.applied == []
    ready = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]["conditions"][0]
    assert (ready["type"], ready["reason"]) == ("Ready", "InvalidSpec")
    assert ("Warning", "InvalidSpec") in kube.events


def test_operator_judged_problems() -> None:
    kube, rec = cluster({"gpu": {"products": ["NVIDIA-B200"]},
                         "model": {"uri": "pvc://missing/m"}})
    rec.reconcile("ml", "resnet")
    degraded = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]["conditions"][3]
    assert degraded["reason"] == "GPUProductUnavailable"
    assert "ModelPVCNotFound" in degraded["message"]
    assert kube.applied  # still applied: it starts by itself once the GPUs/PVC appear


def test_no_spare_gpu_means_no_surge_and_strategy_is_kept_per_template() -> None:
    kube, rec = cluster({"gpu": {"count": 8}})
    kube.add("Pod", {"metadata": {"name": "other", "namespace": "x"}, "spec": {
        "nodeName": "h100-0", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
        "status": {"phase": "Running"}})
    rec.reconcile("ml", "resnet")
    strategy = kube.objects[("Deployment", "ml", "resnet")]["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    del kube.objects[("Pod", "x", "other")]  # GPUs free up, but the template is unchanged
    rec.reconcile("ml", "resnet")
    assert kube.objects[("Deployment", "ml", "resnet")]["spec"]["strategy"] == strategy


def test_stuck_surge_pod_switches_to_in_place() -> None:
    kube, rec = cluster()
    rec.reconcile("ml", "resnet")
    assert kube.objects[("Deployment", "ml", "resnet")]["spec"]["strategy"][
        "rollingUpdate"]["maxSurge"] == 1
    labels = kube.objects[("Deployment", "ml", "resnet")]["spec"]["template"]["metadata"][
        "labels"]
    kube.add("Pod", {"metadata": {"name": "surge", "namespace": "ml", "labels": labels},
                     "status": {"phase": "Pending", "conditions": [{
                         "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": "0/2 nodes are available: 1 Insufficient nvidia.com/gpu"}]}})
    rec.reconcile("ml", "resnet")
    assert kube.objects[("Deployment", "ml", "resnet")]["spec"]["strategy"][
        "rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_retryable_apply_error_is_reported_then_raised() -> None:
    kube, rec = cluster()
    kube.fail_apply = KubeError(500, "InternalError", "etcd timeout")
    with pytest.raises(KubeError):
        rec.reconcile("ml", "resnet")
    ready = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]["conditions"][0]
    assert ready["reason"] == "ApplyFailed" and "etcd timeout" in ready["message"]
    kube.fail_apply = KubeError(422, "Invalid", "bad affinity")
    out = rec.reconcile("ml", "resnet")  # permanent: not raised, status says so
    assert out.error is not None


def test_status_refresh_keeps_reporting_a_failed_apply_until_one_succeeds() -> None:
    # A pod event triggers a status-only refresh; it must not turn Ready over a child
    # (here: every child after the Deployment) that could not be written.
    kube, rec = cluster()
    rec.reconcile("ml", "resnet")
    ready_deployment(kube)
    assert rec.reconcile("ml", "resnet").ready  # remembers the Deployment as applied
    kube.fail_apply = KubeError(403, "Forbidden", "services \"resnet\" is forbidden")
    rec.reconcile("ml", "resnet")
    out = rec.reconcile("ml", "resnet", full=False)
    ready = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]["conditions"][0]
    assert not out.ready
    assert ready["reason"] == "ApplyFailed" and "forbidden" in ready["message"]
    kube.fail_apply = None
    assert rec.reconcile("ml", "resnet").ready
    assert rec.reconcile("ml", "resnet", full=False).ready


def test_deleted_object_is_a_no_op() -> None:
    kube, rec = cluster()
    del kube.objects[("ModelDeployment", "ml", "resnet")]
    assert not rec.reconcile("ml", "resnet").found
    assert kube.applied == []


def test_foreign_deployment_with_the_same_name_is_not_taken_over() -> None:
    kube, rec = cluster()
    kube.add("Deployment", {"metadata": {"name": "resnet", "namespace": "ml", "labels": {}}})
    rec.reconcile("ml", "resnet")
    assert kube.applied == []
    ready = kube.objects[("ModelDeployment", "ml", "resnet")]["status"]["conditions"][0]
    assert ready["reason"] == "ChildConflict"


def test_keyed_runner_collapses_concurrent_requests() -> None:
    runner = KeyedRunner()
    calls: list[bool] = []
    gate = threading.Event()

    def work(full: bool) -> int:
        calls.append(full)
        gate.wait(2)
        return len(calls)

    first = threading.Thread(target=runner.run, args=(("ns", "a"), False, work))
    first.start()
    time.sleep(0.05)
    # Five requests while the first runs: all fold into one re-run (full wins).
    assert [runner.run(("ns", "a"), i == 2, work) for i in range(5)] == [None] * 5
    assert runner.run(("ns", "b"), True, lambda f: "other key runs at once") == (
        "other key runs at once")
    gate.set()
    first.join(5)
    assert calls == [False, True]


def test_resyncer_reconciles_every_object_in_scope() -> None:
    kube, rec = cluster()
    other = md(name="other", namespace="team-b")
    kube.add("ModelDeployment", other)
    assert sorted(Resyncer(rec, 60, None).targets()) == [("ml", "resnet"), ("team-b", "other")]
    assert Resyncer(rec, 60, ["ml"]).targets() == [("ml", "resnet")]
    assert Resyncer(rec, 60, ["team-*"]).targets() == [("team-b", "other")]
    assert Resyncer(rec, 60, ["ml"]).resync_once() == 1


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    assert body["kind"] == "ModelDeployment"
    parse_spec(body["spec"], name=body["metadata"]["name"])


def test_child_events_tell_our_echoes_from_drift() -> None:
    kube, rec = cluster()
    rec.reconcile("ml", "resnet")
    calls: list[bool] = []
    rec.request = lambda ns, name, *, full=True, trigger="": calls.append(full)  # type: ignore[method-assign,assignment,misc]
    svc = kube.get("Service", "ml", "resnet")
    dep = kube.get("Deployment", "ml", "resnet")
    assert svc is not None and dep is not None
    assert rec.child_event("Service", "MODIFIED", svc, "resnet") is None and calls == []
    rec.child_event("Deployment", "MODIFIED", dep, "resnet")  # status churn: refresh only
    assert calls == [False]
    rec.child_event("Service", "DELETED", svc, "resnet")  # gone: put it back
    edited = copy.deepcopy(svc)
    edited["metadata"]["resourceVersion"] = "999"  # a hand edit (Services have no generation)
    rec.child_event("Service", "MODIFIED", edited, "resnet")
    assert calls == [False, True, True]


def test_status_refresh_escalates_to_full_reconcile_on_deployment_drift() -> None:
    kube, rec = cluster()
    rec.reconcile("ml", "resnet")
    applied = len(kube.applied)
    rec.reconcile("ml", "resnet", full=False)  # unchanged: status only
    assert len(kube.applied) == applied
    dep = kube.objects[("Deployment", "ml", "resnet")]
    dep["metadata"]["generation"] = 7  # someone edited the spec
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    rec.reconcile("ml", "resnet", full=False)
    assert len(kube.applied) > applied
    assert kube.objects[("Deployment", "ml", "resnet")]["spec"]["template"]["spec"][
        "containers"][0]["image"] != "evil:1"
