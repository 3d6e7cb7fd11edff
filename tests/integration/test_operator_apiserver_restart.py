"""The control plane (kube-apiserver, etcd, controllers) restarts under a running operator:
the operator is not restarted, its watches come back, and it keeps reconciling."""

from __future__ import annotations

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
    install_crd,
    manifest,
    wait_condition,
)

CPU = {"gpu": None, "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}}}


@pytest.fixture
def restart_namespace(kube_cluster: KubeCluster, namespace: str) -> Iterator[str]:
    yield namespace
    # kwok does not finish deleting pods that lived through its restart: force them out, or
    # the namespace fixture waits for them in vain.
    kube_cluster.kubectl(
        "-n", namespace, "delete", "mdep,deployments", "--all", "--wait=false", check=False
    )
    kube_cluster.kubectl(
        "-n", namespace, "delete", "pods", "--all", "--force", "--grace-period=0", check=False
    )


@pytest.fixture
def operator(kube_cluster: KubeCluster, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    install_crd(kube_cluster)
    proc = OperatorProcess(kube_cluster, tmp_path / "operator.log", resync_seconds=300)
    try:
        yield proc.start()
    finally:
        proc.stop()


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
    apply_as_user(k, namespace, manifest("before", {**CPU, "replicas": 2}, load_seconds=0.2))
    wait_for(
        lambda: _reconciled(k, namespace, "before", replicas=2),
        timeout=120,
        what="the update after the restart to be reconciled",
        describe=lambda: describe(k, namespace),
    )
    apply_as_user(k, namespace, manifest("after", CPU, load_seconds=0.2))
    wait_for(
        lambda: _reconciled(k, namespace, "after", replicas=1),
        timeout=120,
        what="a ModelDeployment created after the restart to be reconciled",
        describe=lambda: describe(k, namespace),
    )
    # And a hand edit is still seen (the children's watches came back too).
    k.kubectl("-n", namespace, "delete", "service", "after")
    try:
        wait_for(
            lambda: get(k, namespace, "service", "after"),
            timeout=30,
            what="the deleted Service to come back",
        )
    except AssertionError:
        # Known bug, open in issue 9: after a whole control-plane restart the child kinds'
        # watches reconnect but miss events (every run with these settings; a 60 s
        # server-side watch timeout or a 60 s inactivity timeout did not bring the Service
        # back within 90 s either; a 20 s inactivity timeout did, once).
        # The checks above (ModelDeployment events after the restart) stay hard failures.
        pytest.xfail("child watches miss events after a control-plane restart (issue 9)")
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
