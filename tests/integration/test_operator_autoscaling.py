"""Autoscaling engines on the real control plane: the ScaledObject the operator renders passes
KEDA's real CRD schema (hack/keda/crd, from KEDA's Go module), engine keda applies it and
reads its Ready condition, switching engines prunes the child that no longer applies, an HPA
that cannot get its metric makes ScalingActive False (and Ready says so), and the builtin
engine's /scale write reaches the ModelDeployment."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from modelfleet_operator.kube import Kube, make_api_client
from modelfleet_operator.render.common import Owner
from modelfleet_operator.render.keda import render_scaled_object
from modelfleet_operator.spec import parse_spec
from operator_support import (
    ROOT,
    OperatorProcess,
    apply_as_user,
    cond,
    get,
    install_crd,
    manifest,
    wait_condition,
)

KEDA_CRD = "scaledobjects.keda.sh"
PROMETHEUS = {"serverAddress": "http://prometheus.monitoring.svc:9090"}
CPU_ONLY = {"gpu": None, "runtime": {"device": "cpu"}, "replicas": None}


def keda_crd_path() -> str:
    proc = subprocess.run(
        [str(ROOT / "hack" / "keda" / "crd")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/keda/crd failed:\n{proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # KEDA's CRD first, so the operator's watches find ScaledObjects at start.
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", keda_crd_path())
    kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{KEDA_CRD}", "--timeout=60s")
    install_crd(kube_cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(kube_cluster, log, resync_seconds=15).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {log}\n{proc.log_tail(30)}")


@pytest.fixture
def k(kube_cluster: KubeCluster, operator: OperatorProcess) -> KubeCluster:
    return kube_cluster


def rendered(namespace: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    body = manifest("keda", {**CPU_ONLY, "autoscaling": autoscaling})
    spec = parse_spec(body["spec"], name="keda")
    return render_scaled_object(
        Owner("keda", namespace, "00000000-0000-0000-0000-000000000001"), spec
    )


def dry_run(
    k: KubeCluster, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return k.kubectl(
        "apply", "-n", namespace, "--server-side", "--dry-run=server", "-f", "-",
        input=json.dumps(obj), check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"maxReplicas": 4, "target": 2.5, "engine": "keda", "keda": PROMETHEUS},
        {"maxReplicas": 4, "target": 100, "metric": "rps", "engine": "keda", "keda": PROMETHEUS},
        {"maxReplicas": 4, "target": 70, "metric": "cpu", "engine": "keda"},
    ],
    ids=["concurrency", "rps", "cpu"],
)
def test_rendered_scaled_object_passes_kedas_crd_schema(
    k: KubeCluster, namespace: str, autoscaling: dict[str, Any]
) -> None:
    obj = rendered(namespace, autoscaling)
    proc = dry_run(k, namespace, obj)
    assert proc.returncode == 0, proc.stderr
    # The schema is really enforced: KEDA requires triggers and an integer minReplicaCount.
    broken = json.loads(json.dumps(obj))
    del broken["spec"]["triggers"]
    assert dry_run(k, namespace, broken).returncode != 0
    broken = json.loads(json.dumps(obj))
    broken["spec"]["minReplicaCount"] = "two"
    assert dry_run(k, namespace, broken).returncode != 0


def test_engine_keda_owns_scaling_through_a_scaled_object(k: KubeCluster, namespace: str) -> None:
    auto = {"minReplicas": 1, "maxReplicas": 3, "target": 4, "engine": "keda", "keda": PROMETHEUS}
    apply_as_user(k, namespace, manifest("kd", {**CPU_ONLY, "autoscaling": auto}))
    wait_for(lambda: get(k, namespace, "scaledobject", "kd"), timeout=60, what="the ScaledObject")
    assert get(k, namespace, "hpa", "kd") is None  # exactly one owner of /scale
    # No KEDA controller runs here: nobody has judged the ScaledObject yet.
    md = wait_condition(k, namespace, "kd", "ScalingActive", "Unknown", "WaitingForAutoscaler")
    assert md["status"]["autoscaling"]["engine"] == "keda"
    # What KEDA writes when its trigger cannot be read: ours says the same.
    k.kubectl(
        "-n", namespace, "patch", "scaledobject", "kd", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "ScaledObjectCheckFailed",
             "message": "error establishing prometheus connection"},
            {"type": "Active", "status": "False", "reason": "ScalerNotActive", "message": ""},
        ]}}),
    )  # fmt: skip
    md = wait_condition(
        k, namespace, "kd", "ScalingActive", "False", "ScaledObjectCheckFailed",
        timeout=60, generation_current=False,
    )  # fmt: skip
    assert "prometheus connection" in cond(md, "ScalingActive")["message"]
    # Back to the builtin engine: the ScaledObject goes.
    auto = {"minReplicas": 1, "maxReplicas": 3, "target": 4}
    apply_as_user(k, namespace, manifest("kd", {**CPU_ONLY, "autoscaling": auto}))
    wait_for(
        lambda: get(k, namespace, "scaledobject", "kd") is None,
        timeout=60,
        what="the ScaledObject to be pruned",
    )
    # kwok's pod IPs answer nothing: the builtin engine says it cannot read its metric.
    md = wait_condition(
        k, namespace, "kd", "ScalingActive", "False", "FailedGetPodsMetric", timeout=60
    )
    assert md["spec"]["replicas"] == 1  # nothing scaled down on scrapes that failed


def test_an_hpa_without_a_custom_metrics_api_says_scaling_is_inactive(
    k: KubeCluster, namespace: str
) -> None:
    # The old bert example: concurrency through an HPA, on a cluster without an adapter.
    auto = {"minReplicas": 1, "maxReplicas": 3, "target": 4, "engine": "hpa"}
    apply_as_user(k, namespace, manifest("nohpa", {**CPU_ONLY, "autoscaling": auto}))
    md = wait_condition(
        k, namespace, "nohpa", "ScalingActive", "False", "FailedGetPodsMetric", timeout=120
    )
    assert "custom metrics" in cond(md, "ScalingActive")["message"]
    ready = wait_condition(k, namespace, "nohpa", "Ready", "True", timeout=60)
    assert "autoscaling cannot act: FailedGetPodsMetric" in cond(ready, "Ready")["message"]


def test_the_builtin_engines_scale_write_reaches_the_deployment(
    k: KubeCluster, namespace: str
) -> None:
    auto = {"minReplicas": 1, "maxReplicas": 5, "target": 4}
    apply_as_user(k, namespace, manifest("bs", {**CPU_ONLY, "autoscaling": auto}))
    wait_condition(k, namespace, "bs", "Ready", "True", timeout=60)

    async def write() -> None:
        kube = Kube(await make_api_client(str(k.kubeconfig)))
        try:
            await kube.patch_scale(namespace, "bs", 3)
        finally:
            await kube.close()

    asyncio.run(write())  # what autoscale/loop.py calls on a decision
    wait_for(
        lambda: (get(k, namespace, "deployment", "bs") or {}).get("spec", {}).get("replicas") == 3,
        timeout=30,
        what="the Deployment to follow the /scale write",
    )
