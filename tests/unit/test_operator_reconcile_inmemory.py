"""reconcile.Reconciler and WorkQueue against an in-memory API and watch view (the real ones
are in tests/integration): what gets written, and above all what does not."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from modelfleet_operator import reconcile as reconcile_module
from modelfleet_operator.kube import KubeError
from modelfleet_operator.metrics import OperatorMetrics
from modelfleet_operator.observe import (
    CHILD_KINDS,
    trim_child,
    trim_gpu_pod,
    trim_md,
    trim_node,
    trim_pod,
    trim_pvc,
)
from modelfleet_operator.reconcile import Key, Reconciler, View, WorkQueue
from modelfleet_operator.spec import parse_spec
from operator_samples import H100, md, node

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
KEY = ("ml", "resnet")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class FakeCluster:
    """Objects by kind and key, the way the watches would show them, and the writes made.

    ``echo`` False holds writes back from the view, as while their watch events are still
    on the way."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[Any, dict[str, Any]]] = {
            k: {} for k in ("ModelDeployment", *CHILD_KINDS, "Pod", "Node", "PVC")
        }
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.fail: dict[str, KubeError] = {}
        self.echo = True
        self.rv = itertools.count(100)
        self.metrics = OperatorMetrics()

    # --- the view ---------------------------------------------------------------------------

    def _index(
        self, kind: str, trim: Callable[[dict[str, Any]], Any], key: Callable[[dict[str, Any]], Any]
    ) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        for obj in self.objects[kind].values():
            value = trim(obj)
            if value is not None:
                out.setdefault(key(obj), []).append(value)
        return out

    def view(self) -> View:
        def by_name(o: Mapping[str, Any]) -> Key:
            return (o["metadata"]["namespace"], o["metadata"]["name"])

        def pod_key(o: Mapping[str, Any]) -> Key:
            return (
                o["metadata"]["namespace"],
                o["metadata"]["labels"]["app.kubernetes.io/instance"],
            )

        return View(
            mds=self._index("ModelDeployment", trim_md, by_name),
            children={k: self._index(k, trim_child, by_name) for k in CHILD_KINDS},
            pods=self._index("Pod", trim_pod, pod_key),
            gpu_pods=self._index("Pod", trim_gpu_pod, lambda _: None),
            nodes=self._index("Node", trim_node, lambda _: None),
            pvcs=self._index("PVC", trim_pvc, by_name),
        )

    def add(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        meta.setdefault("namespace", "ml")
        meta.setdefault("resourceVersion", str(next(self.rv)))
        self.objects[kind][(meta["namespace"], meta["name"])] = obj

    def get(self, kind: str, name: str = "resnet") -> dict[str, Any] | None:
        return self.objects[kind].get(("ml", name))

    # --- the API (what kube.Kube offers) ----------------------------------------------------

    def _store(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        if self.echo:
            self.objects[kind][(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(f"apply {obj['kind']}")
        if obj["kind"] in self.fail:
            raise self.fail[obj["kind"]]
        old = self.get(obj["kind"], obj["metadata"]["name"]) or {}
        new = copy.deepcopy(dict(obj))
        new["metadata"]["uid"] = f"uid-{obj['kind']}"
        new["metadata"]["managedFields"] = [
            {"manager": "modelfleet-operator", "operation": "Apply"}
        ]
        new["status"] = old.get("status", {})
        return self._store(obj["kind"], new)

    async def replace_lists(
        self, kind: str, namespace: str, name: str, rv: str, values: list[tuple[str, Any]]
    ) -> dict[str, Any]:
        self.writes.append(f"replace {kind} {','.join(p for p, _ in values)}")
        return copy.deepcopy(self.get(kind, name) or {})

    async def delete(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        self.writes.append(f"delete {kind}")
        return self.objects[kind].pop((namespace, name), None) is not None

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.writes.append("status")
        if "status" in self.fail:
            raise self.fail["status"]
        body = copy.deepcopy(self.objects["ModelDeployment"][(namespace, name)])
        body["status"] = copy.deepcopy(dict(status))
        return self._store("ModelDeployment", body)

    async def event(
        self, owner: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((event_type, reason))

    async def close(self) -> None:
        pass


def cluster(spec: dict[str, Any] | None = None) -> FakeCluster:
    c = FakeCluster()
    c.add("ModelDeployment", md(spec))
    for n in (node("h100-0", gpus=8, product=H100), node("cpu-0")):
        c.add("Node", n)
    c.add("PVC", {"metadata": {"name": "models"}, "status": {"phase": "Bound"}})
    return c


async def reconcile(c: FakeCluster, key: Key = KEY) -> None:
    await Reconciler(c, c.view(), metrics=c.metrics).reconcile(key)  # type: ignore[arg-type]


def status(c: FakeCluster) -> dict[str, Any]:
    body = c.get("ModelDeployment")
    assert body is not None
    return dict(body["status"])


def ready_reason(c: FakeCluster) -> tuple[str, str]:
    ready = next(x for x in status(c)["conditions"] if x["type"] == "Ready")
    return ready["reason"], ready["message"]


def make_ready(c: FakeCluster, replicas: int = 2) -> None:
    dep = c.get("Deployment")
    assert dep is not None
    dep["metadata"]["generation"] = 1
    dep["status"] = {
        "replicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "updatedReplicas": replicas,
        "observedGeneration": 1,
    }
    dep["metadata"]["resourceVersion"] = str(next(c.rv))


def test_first_reconcile_creates_children_and_status_then_converged_writes_nothing() -> None:
    c = cluster()
    run(reconcile(c))
    assert c.writes == ["apply Deployment", "apply Service", "apply PodDisruptionBudget", "status"]
    assert status(c)["observedGeneration"] == 1
    assert status(c)["rolloutStrategy"].startswith("RollingUpdate(maxSurge=1")
    assert c.events == []  # "not ready yet" at creation is no news
    make_ready(c)
    c.writes.clear()
    run(reconcile(c))
    assert c.writes == ["status"] and ready_reason(c)[0] == "AllReplicasReady"
    assert ("Normal", "AllReplicasReady") in c.events
    c.writes.clear()
    for _ in range(3):
        run(reconcile(c))
    assert c.writes == []  # converged: zero API requests


def test_a_restart_changes_nothing() -> None:
    # A fresh Reconciler (no memory) over a converged cluster writes nothing.
    c = cluster()
    run(reconcile(c))
    make_ready(c)
    run(reconcile(c))
    c.writes.clear()
    run(reconcile(c))
    assert c.writes == []


def test_writes_in_flight_are_not_sent_twice() -> None:
    c = cluster()
    c.echo = False  # the watch has not shown our writes yet
    rec = Reconciler(c, c.view(), metrics=c.metrics)  # type: ignore[arg-type]
    run(rec.reconcile(KEY))
    first = list(c.writes)
    run(rec.reconcile(KEY))
    assert c.writes == first


def test_drift_on_a_rendered_field_is_restored() -> None:
    c = cluster()
    run(reconcile(c))
    svc = c.get("Service")
    assert svc is not None
    svc["spec"]["ports"][0]["port"] = 9090  # a hand edit of the list-map key
    dep = c.get("Deployment")
    assert dep is not None
    dep["spec"]["template"]["spec"]["hostNetwork"] = True
    del dep["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    c.writes.clear()
    run(reconcile(c))
    assert "replace Service /spec/ports" in c.writes
    assert "apply Service" in c.writes and "apply Deployment" in c.writes
    assert ready_reason(c)[0] != "ChildConflict"


def test_defaults_and_other_managers_fields_are_not_drift() -> None:
    c = cluster()
    run(reconcile(c))
    dep = c.get("Deployment")
    svc = c.get("Service")
    assert dep is not None and svc is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"  # an API server default
    container["resources"]["requests"]["cpu"] = "2000m"  # the same quantity, other spelling
    del dep["spec"]["template"]["spec"]["hostNetwork"]  # false is omitted when stored
    dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    svc["spec"]["clusterIP"] = "10.0.0.7"
    c.writes.clear()
    run(reconcile(c))
    assert c.writes == []


@pytest.mark.parametrize(
    "kind", ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
)
def test_a_strangers_child_is_never_written(kind: str) -> None:
    c = cluster({"autoscaling": {"maxReplicas": 4, "target": 2}})
    c.add(
        kind,
        {
            "kind": kind,
            "metadata": {"name": "resnet", "uid": "theirs", "labels": {"app": "theirs"}},
            "spec": {"x": 1},
        },
    )
    run(reconcile(c))
    assert not any(w.endswith(kind) for w in c.writes)
    reason, message = ready_reason(c)
    assert reason == "ChildConflict" and f"{kind} resnet" in message
    stranger = c.get(kind)
    assert stranger is not None and stranger["spec"] == {"x": 1}


def test_autoscaling_off_prunes_our_hpa_only() -> None:
    c = cluster({"autoscaling": {"maxReplicas": 4, "target": 2, "engine": "hpa"}})
    run(reconcile(c))
    assert c.get("HorizontalPodAutoscaler") is not None
    body = c.get("ModelDeployment")
    assert body is not None
    del body["spec"]["autoscaling"]
    run(reconcile(c))
    assert c.get("HorizontalPodAutoscaler") is None and "delete HorizontalPodAutoscaler" in (
        c.writes
    )


def test_invalid_spec_applies_nothing_and_says_why() -> None:
    c = cluster({"runtime": {"resources": {"cpu": "-1"}}})
    run(reconcile(c))
    assert c.writes == ["status"]
    reason, message = ready_reason(c)
    assert reason == "InvalidSpec" and "spec.runtime.resources.cpu" in message
    assert ("Warning", "InvalidSpec") in c.events


def test_pvc_not_found_and_not_bound_are_told_apart() -> None:
    c = cluster({"model": {"uri": "pvc://missing/m"}})
    run(reconcile(c))
    assert ready_reason(c)[0] == "ModelPVCNotFound"
    c.add("PVC", {"metadata": {"name": "missing"}, "status": {"phase": "Pending"}})
    run(reconcile(c))
    reason, message = ready_reason(c)
    assert reason == "ModelPVCNotBound" and "Pending" in message


def test_gpu_nobody_offers_names_what_was_asked() -> None:
    c = cluster(
        {
            "gpu": {
                "count": None,
                "mig": "1g.10gb",
                "products": ["NVIDIA-B200"],
                "minMemoryMiB": 90000,
            }
        }
    )
    run(reconcile(c))
    reason, message = ready_reason(c)
    assert reason == "GPUProductUnavailable"
    assert "nvidia.com/mig-1g.10gb" in message and "NVIDIA-B200" in message
    assert "90000 MiB" in message and H100 in message  # what exists
    assert c.writes[:1] == ["apply Deployment"]  # it starts by itself once such GPUs appear


def test_missing_priority_class_is_named() -> None:
    c = cluster({"scheduling": {"priorityClassName": "nope"}})
    run(reconcile(c))
    dep = c.get("Deployment")
    assert dep is not None
    dep["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": (
                    'pods "resnet-1" is forbidden: no PriorityClass with name nope was found'
                ),
            }
        ]
    }
    dep["metadata"]["resourceVersion"] = "999"
    run(reconcile(c))
    reason, message = ready_reason(c)
    assert reason == "PriorityClassNotFound" and "'nope'" in message


def test_apply_error_is_reported_and_raised_for_retry() -> None:
    c = cluster()
    c.fail["Service"] = KubeError(422, "Invalid", "spec.ports[0].name: Duplicate value")
    with pytest.raises(KubeError):
        run(reconcile(c))
    reason, message = ready_reason(c)
    assert reason == "ApplyFailed" and "Service resnet: 422" in message
    assert "apply PodDisruptionBudget" in c.writes  # one failed child stops no other


def test_no_spare_gpu_means_no_surge_and_the_strategy_is_kept_per_template() -> None:
    c = cluster({"gpu": {"count": 8}})
    c.add(
        "Pod",
        {
            "metadata": {
                "name": "other",
                "namespace": "x",
                "labels": {"app.kubernetes.io/instance": "other"},
            },
            "spec": {
                "nodeName": "h100-0",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}],
            },
            "status": {"phase": "Running"},
        },
    )
    run(reconcile(c))
    dep = c.get("Deployment")
    assert dep is not None
    strategy = dep["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    del c.objects["Pod"][("x", "other")]  # GPUs free up, but the template is unchanged
    run(reconcile(c))
    assert c.get("Deployment")["spec"]["strategy"] == strategy  # type: ignore[index]


def test_deleted_object_is_a_no_op() -> None:
    c = cluster()
    del c.objects["ModelDeployment"][KEY]
    run(reconcile(c))
    assert c.writes == []


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    assert body["kind"] == "ModelDeployment"
    parse_spec(body["spec"], name=body["metadata"]["name"])


# --- the work queue --------------------------------------------------------------------------


def test_queue_runs_one_reconcile_per_key_and_folds_requests() -> None:
    calls: list[Key] = []
    gate = asyncio.Event()

    async def main() -> None:
        async def handler(key: Key, why: str) -> None:
            calls.append(key)
            if key == ("a", "1"):
                await gate.wait()

        q = WorkQueue(handler, workers=4)
        q.start()
        q.add(("a", "1"))
        await asyncio.sleep(0.01)
        for _ in range(5):  # while the first runs: all fold into one re-run
            q.add(("a", "1"))
        q.add(("b", "2"))  # another key runs at once
        await asyncio.sleep(0.01)
        assert calls == [("a", "1"), ("b", "2")]
        gate.set()
        while not q.idle():
            await asyncio.sleep(0.01)
        await q.stop()

    run(main())
    assert calls == [("a", "1"), ("b", "2"), ("a", "1")]


def test_queue_retries_failures_with_exponential_backoff_and_isolates_them() -> None:
    done: list[Key] = []

    async def main() -> WorkQueue:
        async def handler(key: Key, why: str) -> None:
            if key == ("bad", "x"):
                raise ValueError("boom")  # any exception, not only API errors
            done.append(key)

        q = WorkQueue(handler, workers=1, backoff=0.01, max_backoff=0.04)
        q.start()
        q.add(("bad", "x"))
        q.add(("ok", "y"))
        await asyncio.sleep(0.3)
        await q.stop()
        return q

    q = run(main())
    assert done == [("ok", "y")]
    assert q.failures(("bad", "x")) >= 4  # retried, and capped delays kept it coming


def test_a_deleted_child_comes_back_after_it_was_converged() -> None:
    c = cluster()
    rec = Reconciler(c, c.view(), metrics=c.metrics)  # type: ignore[arg-type]
    run(rec.reconcile(KEY))
    rec.view = c.view()
    run(rec.reconcile(KEY))  # converged: nothing in flight any more
    del c.objects["Service"][KEY]
    rec.view = c.view()
    c.writes.clear()
    run(rec.reconcile(KEY))
    assert c.writes == ["apply Service"]


def test_queue_gives_memory_back_once_after_a_burst_not_while_busy_or_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    seen: list[Key] = []
    monkeypatch.setattr(reconcile_module, "release_freed_memory", lambda: trims.append(len(seen)))

    async def main() -> None:
        async def handler(key: Key, why: str) -> None:
            seen.append(key)
            await asyncio.sleep(0)

        q = WorkQueue(handler, workers=4)
        q.start()
        for i in range(reconcile_module.TRIM_AFTER + 20):
            q.add(("ns", str(i)))
        while not q.idle():
            await asyncio.sleep(0.01)
        for i in range(5):  # a few more: below the threshold, no second trim
            q.add(("ns", f"late-{i}"))
        while not q.idle():
            await asyncio.sleep(0.01)
        await q.stop()

    run(main())
    assert trims == [reconcile_module.TRIM_AFTER + 20]  # once, when the burst had drained
