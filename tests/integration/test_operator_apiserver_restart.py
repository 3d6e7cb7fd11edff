"""The control plane (kube-apiserver, etcd, controllers) restarts under a running operator:
the operator is not restarted, its watches come back, and it keeps reconciling."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator

import kube_harness
import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import OperatorProcess, get, install_crd, manifest, wait_condition

CPU = {"gpu": None, "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}}}


@pytest.fixture
def operator(kube_cluster: KubeCluster, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    install_crd(kube_cluster)
    proc = OperatorProcess(kube_cluster, tmp_path / "operator.log", resync_seconds=300)
    try:
        yield proc.start()
    finally:
        proc.stop()


def apply(k: KubeCluster, namespace: str, body: dict[str, object]) -> None:
    k.kubectl(
        "apply",
        "-n",
        namespace,
        "--server-side",
        "--field-manager=test",
        "-f",
        "-",
        input=json.dumps(body),
    )


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


def test_control_plane_restart_is_survived_without_restarting_the_operator(
    kube_cluster: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    k = kube_cluster
    if k.name is None:
        pytest.skip("needs a cluster this session started (it is stopped and started again)")
    apply(k, namespace, manifest("before", CPU, load_seconds=0.2))
    wait_condition(k, namespace, "before", "Ready", "True", timeout=60)
    pid = operator.proc.pid if operator.proc else None

    _kwokctl(k, "stop", "cluster")
    time.sleep(5)  # the operator's watches and writes fail meanwhile
    kube_harness.start_cluster(k.name)

    assert operator.proc is not None and operator.proc.poll() is None
    assert operator.proc.pid == pid
    # Changes after the restart are reconciled: an update and a new object.
    apply(k, namespace, manifest("before", {**CPU, "replicas": 2}, load_seconds=0.2))
    md = wait_condition(k, namespace, "before", "Ready", "True", timeout=120)
    assert md["status"]["readyReplicas"] == 2
    apply(k, namespace, manifest("after", CPU, load_seconds=0.2))
    wait_condition(k, namespace, "after", "Ready", "True", timeout=120)
    # And a hand edit is still seen at once (the children's watches came back too).
    k.kubectl("-n", namespace, "delete", "service", "after")
    wait_for(
        lambda: get(k, namespace, "service", "after"),
        timeout=30,
        what="the deleted Service to come back",
    )
    assert operator.proc.poll() is None
