"""The control plane (kube-apiserver, etcd, controllers) restarts under a running operator:
the operator is not restarted, its watches come back, and it keeps reconciling."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator

import kube_harness
import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import (
    OperatorProcess,
    apply_as_user,
    describe,
    get,
    manifest,
    running_operator,
    wait_condition,
)

CPU = {"gpu": None, "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}}}


@pytest.fixture
def restart_namespace(kube_cluster: KubeCluster, namespace: str) -> Iterator[str]:
    yield namespace
    # kwok does not finish deleting pods after its restart: force them out, or the namespace
    # fixture waits for them in vain. Until the ReplicaSets are gone (garbage collection
    # takes a moment) they make new pods, which then are deleted the slow way: repeat.
    kube_cluster.kubectl(
        "-n", namespace, "delete", "mdep,deployments,rs", "--all", "--wait=false", check=False
    )

    def no_pod_left() -> bool:
        kube_cluster.kubectl(
            "-n", namespace, "delete", "pods", "--all", "--force", "--grace-period=0", check=False
        )
        time.sleep(1)
        left = kube_cluster.kubectl("-n", namespace, "get", "pods,rs", "-o", "name", check=False)
        return left.returncode == 0 and not left.stdout.strip()

    wait_for(no_pod_left, timeout=90, what=f"the pods and ReplicaSets of {namespace} to go")


@pytest.fixture
def operator(kube_cluster: KubeCluster, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    # kopf's debug log shows each watch stream's restarts and every event handled.
    with running_operator(kube_cluster, tmp_path / "operator.log", 300, debug=True) as proc:
        yield proc


def _kwokctl(k: KubeCluster, *args: str) -> None:
    workdir = subprocess.run(
        ["bash", "-c", f"source {kube_harness.HACK_DIR / 'lib.sh'} && cluster_workdir_root"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        [str(k.bin_dir / "kwokctl"), *args, "--name", str(k.name)],
        env={
            **os.environ,
            "KWOK_WORKDIR": workdir,
            "PATH": f"{k.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        check=True,
        capture_output=True,
        timeout=180,
    )


@pytest.mark.restarts_control_plane
def test_control_plane_restart_is_survived_without_restarting_the_operator(
    kube_cluster: KubeCluster, restart_namespace: str, operator: OperatorProcess
) -> None:
    k, namespace = kube_cluster, restart_namespace
    if k.name is None:
        pytest.skip("needs a cluster this session started (it is stopped and started again)")
    apply_as_user(k, namespace, manifest("before", CPU, load_seconds=0.2))
    wait_condition(k, namespace, "before", "Ready", "True", timeout=60)
    pid = operator.proc.pid if operator.proc else None

    _kwokctl(k, "stop", "cluster")
    time.sleep(5)  # the operator's watches and writes fail meanwhile
    kube_harness.start_cluster(k.name)

    assert operator.proc is not None and operator.proc.poll() is None
    assert operator.proc.pid == pid
    # Changes after the restart are reconciled: an update and a new object. (Whether their
    # pods then turn Ready is up to the restarted kwok, not the operator: wait for what the
    # operator does.)
    back = time.monotonic()
    apply_as_user(k, namespace, manifest("before", {**CPU, "replicas": 2}, load_seconds=0.2))
    wait_for(
        lambda: _reconciled(k, namespace, "before", replicas=2),
        timeout=120,
        what="the update after the restart to be reconciled",
        describe=lambda: describe(k, namespace),
    )
    print(f"update reconciled {time.monotonic() - back:.1f} s after the control plane was back")
    apply_as_user(k, namespace, manifest("after", CPU, load_seconds=0.2))
    wait_for(
        lambda: _reconciled(k, namespace, "after", replicas=1),
        timeout=120,
        what="a ModelDeployment created after the restart to be reconciled",
        describe=lambda: describe(k, namespace),
    )
    # And hand edits are still seen and undone: the children's watches came back too, for
    # children that lived through the restart ("before") and new ones ("after", which have
    # seen no event but their own writes' echoes).
    for name in ("before", "after"):
        k.kubectl("-n", namespace, "delete", "service", name)
        deleted = time.monotonic()
        wait_for(
            functools.partial(get, k, namespace, "service", name),
            timeout=60,
            what=f"the deleted Service {name} to come back",
            describe=lambda: describe(k, namespace) + "\n" + operator.log_tail(80),
        )
        print(f"Service {name} restored {time.monotonic() - deleted:.1f} s after its deletion")
    assert operator.proc.poll() is None


def _reconciled(k: KubeCluster, namespace: str, name: str, *, replicas: int) -> bool:
    md = get(k, namespace, "mdep", name)
    dep = get(k, namespace, "deployment", name)
    if md is None or dep is None or get(k, namespace, "service", name) is None:
        return False
    status = md.get("status") or {}
    return bool(
        status.get("observedGeneration") == md["metadata"]["generation"]
        and dep["spec"]["replicas"] == replicas
        and status.get("conditions")
    )
