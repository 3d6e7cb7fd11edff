"""Operator killed (SIGKILL) at awkward moments and restarted: it converges, with no
duplicate or orphaned children."""

from __future__ import annotations

import pathlib
import random
import threading
import time
from collections.abc import Iterator

import kubernetes
import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import (
    OperatorProcess,
    apply_as_user,
    cond,
    get,
    manifest,
    running_operator,
    wait_condition,
)


@pytest.fixture
def operator(kube_cluster: KubeCluster, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    with running_operator(kube_cluster, tmp_path / "operator.log", 10, start=False) as proc:
        yield proc


def children(k: KubeCluster, namespace: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("deployments", "services", "poddisruptionbudgets", "replicasets"):
        data = k.kubectl_json("-n", namespace, "get", kind)
        out[kind] = sorted(i["metadata"]["name"] for i in data["items"])
    return out


def test_killed_mid_rollout_converges_after_restart(
    kube_cluster: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    k = kube_cluster
    operator.start()
    apply_as_user(k, namespace, manifest("phoenix", {"replicas": 3}, load_seconds=1))
    wait_condition(k, namespace, "phoenix", "Ready", "True", timeout=90)

    # Start a rollout with slow-loading pods, and kill the operator in the middle of it.
    apply_as_user(
        k,
        namespace,
        manifest("phoenix", {"replicas": 3, "model": {"version": "2"}}, load_seconds=4),
    )
    wait_condition(k, namespace, "phoenix", "Progressing", "True", timeout=30)
    operator.kill()

    # While it is down the spec changes again; nothing reacts.
    apply_as_user(
        k,
        namespace,
        manifest("phoenix", {"replicas": 2, "model": {"version": "3"}}, load_seconds=1),
    )
    time.sleep(2)
    md = get(k, namespace, "mdep", "phoenix")
    assert md is not None
    assert md["status"]["observedGeneration"] < md["metadata"]["generation"]

    operator.start()
    md = wait_condition(k, namespace, "phoenix", "Ready", "True", timeout=120)
    assert md["status"]["model"]["version"] == "3"
    assert md["status"]["readyReplicas"] == 2
    kids = children(k, namespace)
    assert kids["deployments"] == ["phoenix"]
    assert kids["services"] == ["phoenix"]
    assert kids["poddisruptionbudgets"] == ["phoenix"]
    dep = get(k, namespace, "deployment", "phoenix")
    assert dep is not None and dep["spec"]["replicas"] == 2
    refs = dep["metadata"]["ownerReferences"]
    assert len(refs) == 1 and refs[0]["uid"] == md["metadata"]["uid"]


def test_killed_right_after_create_converges(
    kube_cluster: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    k = kube_cluster
    # Created while no operator runs, then the operator starts, gets killed almost at once,
    # and starts again: resume handling alone must finish the job.
    for i in range(3):
        apply_as_user(k, namespace, manifest(f"m{i}", load_seconds=0.5))
    operator.start()
    time.sleep(0.5)
    operator.kill()
    operator.start()
    for i in range(3):
        md = wait_condition(k, namespace, f"m{i}", "Ready", "True", timeout=90)
        assert cond(md, "Degraded")["status"] == "False"
    kids = children(k, namespace)
    assert kids["deployments"] == ["m0", "m1", "m2"]
    assert kids["services"] == ["m0", "m1", "m2"]

    # Deleting while the operator is down still cleans up: no finalizer blocks deletion.
    operator.kill()
    k.kubectl("-n", namespace, "delete", "mdep", "m0", "--wait=true", "--timeout=30s")
    wait_for(
        lambda: get(k, namespace, "deployment", "m0") is None,
        timeout=60,
        what="m0's Deployment to be garbage-collected without the operator",
    )


# --- SIGKILL at random points during a storm of creates, updates and deletes ----------------

STORM_NAMES = [f"s{i}" for i in range(5)]
CPU_SPEC = {
    "gpu": None,
    "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}},
}


def _storm(
    k: KubeCluster, namespace: str, rng: random.Random, stop: threading.Event, done: list[str]
) -> None:
    api = k.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    while not stop.is_set():
        name = rng.choice(STORM_NAMES)
        op = rng.choice(["apply", "apply", "scale", "delete"])
        try:
            if op == "delete":
                custom.delete_namespaced_custom_object(
                    "modelfleet.io", "v1alpha1", namespace, "modeldeployments", name
                )
            else:
                spec = {
                    **CPU_SPEC,
                    "replicas": rng.randint(0, 2) if op == "scale" else 1,
                    "model": {"version": str(rng.randint(1, 3))},
                }
                body = manifest(name, spec, load_seconds=0.2)
                body["metadata"]["namespace"] = namespace
                custom.patch_namespaced_custom_object(
                    "modelfleet.io",
                    "v1alpha1",
                    namespace,
                    "modeldeployments",
                    name,
                    body,
                    field_manager="storm",
                    force=True,
                    _content_type="application/apply-patch+yaml",
                )
            done.append(f"{op} {name}")
        except kubernetes.client.ApiException as exc:
            if exc.status not in (404, 409):
                raise
        time.sleep(rng.uniform(0, 0.15))
    api.close()


def _converged(k: KubeCluster, namespace: str) -> str | None:
    """None when every ModelDeployment is reconciled and Ready-or-scaled-to-zero with exactly
    its own children, and no child is left whose owner is gone; else what is still off."""
    mds = {
        m["metadata"]["name"]: m
        for m in k.kubectl_json("-n", namespace, "get", "mdep")["items"]
        if not m["metadata"].get("deletionTimestamp")
    }
    for name, md in mds.items():
        st = md.get("status") or {}
        if st.get("observedGeneration") != md["metadata"]["generation"]:
            return f"{name}: status not observed for generation {md['metadata']['generation']}"
        ready = cond(md, "Ready")
        if ready.get("status") != "True" and ready.get("reason") != "ScaledToZero":
            return f"{name}: Ready {ready}"
    for kind in ("deployments", "services", "poddisruptionbudgets"):
        items = k.kubectl_json("-n", namespace, "get", kind)["items"]
        names = sorted(i["metadata"]["name"] for i in items)
        if names != sorted(mds):
            return f"{kind}: {names} for ModelDeployments {sorted(mds)}"
        for item in items:
            refs = item["metadata"].get("ownerReferences") or []
            uid = mds[item["metadata"]["name"]]["metadata"]["uid"]
            if [r.get("uid") for r in refs] != [uid]:
                return f"{kind} {item['metadata']['name']}: owners {refs}, want {uid}"
    return None


def _describe_storm(k: KubeCluster, namespace: str, operator: OperatorProcess) -> str:
    """What is off, the children's own state as the API serves it, and the operator's log."""
    deps = [
        (
            d["metadata"]["name"],
            d["metadata"].get("generation"),
            {key: value for key, value in (d.get("status") or {}).items() if key != "conditions"},
            [
                (c.get("type"), c.get("status"), c.get("reason"))
                for c in (d.get("status") or {}).get("conditions") or []
            ],
        )
        for d in k.kubectl_json("-n", namespace, "get", "deployments")["items"]
    ]
    listing = k.kubectl("-n", namespace, "get", "rs,pods", "-o", "wide", check=False).stdout
    return (
        f"{_converged(k, namespace)}\ndeployments (name, generation, status, conditions):\n"
        + "\n".join(map(str, deps))
        + f"\n{listing}\n{operator.log_tail(60)}"
    )


@pytest.mark.slow
def test_sigkill_during_a_storm_converges_every_time(
    kube_cluster: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    k = kube_cluster
    rng = random.Random(20261201)
    trials = 20
    for trial in range(trials):
        operator.start()
        stop = threading.Event()
        done: list[str] = []
        storm = threading.Thread(target=_storm, args=(k, namespace, rng, stop, done))
        storm.start()
        time.sleep(rng.uniform(0.2, 3.0))  # a random point in the storm
        operator.kill()
        time.sleep(rng.uniform(0, 1.0))  # the storm goes on while the operator is down
        stop.set()
        storm.join(30)
        operator.start()
        # Usually seconds. Not 120 s: CI once saw a Deployment stay at 0 updated replicas for
        # 120 s with the operator idle (unexplained; one candidate, unproven: a ReplicaSet
        # controller expectation left to a same-named ReplicaSet waits out 5 minutes); the
        # diagnostics below name it if it happens again.
        wait_for(
            lambda: _converged(k, namespace) is None,
            timeout=360,
            interval=0.5,
            what=f"trial {trial}: convergence after SIGKILL ({len(done)} storm ops)",
            describe=lambda: _describe_storm(k, namespace, operator),
        )
        operator.stop()
    text = operator.log_path.read_text(errors="replace")
    assert "Traceback" not in text, operator.log_tail(80)
