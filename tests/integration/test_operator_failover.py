"""Two operator replicas with leader election on the real control plane: only the Lease
holder writes, a standby answers its liveness probe, and when the leader dies (SIGKILL) or
stops (SIGTERM) the standby takes over and reconciles. Prints the failover times."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from kube_harness import KubeCluster, wait_for
from operator_support import ROOT, TEST_IMAGE, free_port, get, install_crd, manifest

LEASE_SECONDS = 6


class Replica:
    def __init__(self, cluster: KubeCluster, name: str, lease_ns: str, log: pathlib.Path) -> None:
        self.name, self.health, self.metrics_port = name, free_port(), free_port()
        env = dict(cluster.env, MODELFLEET_RUNTIME_IMAGE=TEST_IMAGE, PYTHONUNBUFFERED="1")
        env.update(POD_NAME=name, POD_NAMESPACE=lease_ns)
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfleet_operator", "--all-namespaces",
                 "--liveness", f"http://127.0.0.1:{self.health}/healthz",
                 "--metrics-port", str(self.metrics_port),
                 "--kubeconfig", str(cluster.kubeconfig),
                 "--leader-elect", f"--leader-elect-lease-duration={LEASE_SECONDS}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )  # fmt: skip

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def writes(self) -> float:
        """API requests other than the Lease's (the standby must make none)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith("modelfleet_operator_api_requests_total{")
                and 'kind="Lease"' not in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])


@pytest.fixture
def replicas(
    kube_cluster: KubeCluster, namespace: str, tmp_path: pathlib.Path
) -> Iterator[dict[str, Replica]]:
    install_crd(kube_cluster)
    made: dict[str, Replica] = {}
    yield made
    for r in made.values():
        r.signal(signal.SIGKILL)
        print(f"\n--- {r.name} ({r.log}):\n{r.tail()}")
    kube_cluster.kubectl("-n", namespace, "delete", "lease", "modelfleet-operator", check=False)


def holder(cluster: KubeCluster, namespace: str) -> str | None:
    lease = get(cluster, namespace, "lease", "modelfleet-operator")
    spec = (lease or {}).get("spec") or {}
    who = str(spec.get("holderIdentity") or "")
    return who.split("_", 1)[0] or None


def reconciled(cluster: KubeCluster, namespace: str, name: str) -> bool:
    md = get(cluster, namespace, "mdep", name)
    status = (md or {}).get("status") or {}
    return bool(md and status.get("observedGeneration") == md["metadata"]["generation"])


def test_one_leader_and_the_standby_takes_over(
    kube_cluster: KubeCluster, namespace: str, replicas: dict[str, Replica], tmp_path: pathlib.Path
) -> None:
    # The Lease lives in the test's namespace, as the chart puts it in the release's.
    for name in ("op-a", "op-b"):
        replicas[name] = Replica(kube_cluster, name, namespace, tmp_path / f"{name}.log")
    wait_for(lambda: all(r.live() for r in replicas.values()), timeout=90,
             what="both replicas to answer their liveness probe (the standby too)")  # fmt: skip
    leader = wait_for(lambda: holder(kube_cluster, namespace), timeout=60, what="a Lease holder")
    standby = next(n for n in replicas if n != leader)

    kube_cluster.apply(manifest("first"), namespace)
    wait_for(lambda: reconciled(kube_cluster, namespace, "first"), timeout=90, what="first")
    time.sleep(3)  # anything the standby would do, it would have done by now
    assert replicas[standby].writes() == 0, "the standby wrote to the API"
    assert replicas[leader].writes() > 0

    # The leader's node dies: no goodbye, the standby waits out the Lease.
    replicas[leader].signal(signal.SIGKILL)
    killed = time.monotonic()
    kube_cluster.apply(manifest("second"), namespace)
    wait_for(
        lambda: reconciled(kube_cluster, namespace, "second"),
        timeout=120,
        what="the standby to take over and reconcile",
        describe=replicas[standby].tail,
    )
    after_kill = time.monotonic() - killed
    assert holder(kube_cluster, namespace) == standby
    lease = get(kube_cluster, namespace, "lease", "modelfleet-operator")
    assert lease is not None and lease["spec"]["leaseTransitions"] >= 1

    # A clean stop (an upgrade): the Lease is handed back, a new replica takes it at once.
    replicas["op-c"] = Replica(kube_cluster, "op-c", namespace, tmp_path / "op-c.log")
    wait_for(replicas["op-c"].live, timeout=90, what="op-c's liveness (as a standby)")
    replicas[standby].signal(signal.SIGTERM)
    stopped = time.monotonic()
    kube_cluster.apply(manifest("third"), namespace)
    wait_for(
        lambda: reconciled(kube_cluster, namespace, "third"),
        timeout=120,
        what="op-c to take over after the clean stop",
        describe=replicas["op-c"].tail,
    )
    after_stop = time.monotonic() - stopped
    assert holder(kube_cluster, namespace) == "op-c"
    print(json.dumps({
        "lease_duration_s": LEASE_SECONDS,
        "failover_after_sigkill_s": round(after_kill, 1),
        "handover_after_sigterm_s": round(after_stop, 1),
    }))  # fmt: skip
    # A clean stop never waits out the Lease (kopf's start on the new leader is what remains).
    assert replicas[standby].proc.returncode == 0, replicas[standby].tail()
