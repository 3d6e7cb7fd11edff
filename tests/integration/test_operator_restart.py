"""Operator killed (SIGKILL) at awkward moments and restarted: it converges, with no
duplicate or orphaned children."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import OperatorProcess, cond, get, install_crd, manifest, wait_condition


@pytest.fixture
def operator(kube_cluster: KubeCluster, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    install_crd(kube_cluster)
    proc = OperatorProcess(kube_cluster, tmp_path / "operator.log",
                           resync_seconds=10)
    try:
        yield proc
    finally:
        proc.stop()


def apply(k: KubeCluster, namespace: str, body: dict[str, object]) -> None:
    k.kubectl("apply", "-n", namespace, "--server-side", "--field-manager=test", "-f", "-",
              input=json.dumps(body))


def children(k: KubeCluster, namespace: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("deployments", "services", "poddisruptionbudgets", "replicasets"):
        data = k.kubectl_json("-n", namespace, "get", kind)
        out[kind] = sorted(i["metadata"]["name"] for i in data["items"])
    return out


def test_killed_mid_rollout_converges_after_restart(kube_cluster: KubeCluster, namespace: str,
                                                    operator: OperatorProcess) -> None:
    k = kube_cluster
    operator.start()
    apply(k, namespace, manifest("phoenix", {"replicas": 3}, load_seconds=1))
    wait_condition(k, namespace, "phoenix", "Ready", "True", timeout=90)

    # Start a rollout with slow-loading pods, and kill the operator in the middle of it.
    apply(k, namespace, manifest("phoenix", {"replicas": 3, "model": {"version": "2"}},
                                 load_seconds=4))
    wait_condition(k, namespace, "phoenix", "Progressing", "True", timeout=30)
    operator.kill()

    # While it is down the spec changes again; nothing reacts.
    apply(k, namespace, manifest("phoenix", {"replicas": 2, "model": {"version": "3"}},
                                 load_seconds=1))
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


def test_killed_right_after_create_converges(kube_cluster: KubeCluster, namespace: str,
                                             operator: OperatorProcess) -> None:
    k = kube_cluster
    # Created while no operator runs, then the operator starts, gets killed almost at once,
    # and starts again: resume handling alone must finish the job.
    for i in range(3):
        apply(k, namespace, manifest(f"m{i}", load_seconds=0.5))
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
    wait_for(lambda: get(k, namespace, "deployment", "m0") is None, timeout=60,
             what="m0's Deployment to be garbage-collected without the operator")
