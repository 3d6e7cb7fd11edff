"""Autoscaling engines on the real control plane: the ScaledObject the operator renders passes
KEDA's real CRD schema (hack/keda/crd, from KEDA's Go module), engine keda applies it and
reads its Ready condition, switching engines prunes the child that no longer applies, an HPA
that cannot get its metric makes ScalingActive False (and Ready says so), and the builtin
engine's /scale write reaches the ModelDeployment."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from modelfleet_operator.autoscale.loop import SIMULATED_METRICS_ANNOTATION
from modelfleet_operator.kube import Kube, make_api_client
from modelfleet_operator.render.common import Owner
from modelfleet_operator.render.keda import render_scaled_object
from modelfleet_operator.spec import parse_spec
from operator_support import (
    ROOT,
    OperatorProcess,
    apply_as_user,
    cond,
    free_port,
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
    # Runtime processes on 127.0.0.1 stand in for kwok's pod IPs where an mdep says so.
    env = {**kube_cluster.env, "MODELFLEET_SIMULATED_METRICS": "1"}
    proc = OperatorProcess(
        dataclasses.replace(kube_cluster, env=env), log, resync_seconds=15,
        extra_args=["--usage-seconds", "2"],
    )  # fmt: skip
    proc.start()
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


class RuntimeProcess:
    """``python -m modelfleet_runtime serve`` on a free loopback port."""

    def __init__(self, model_dir: Path) -> None:
        self.port = free_port()
        self.log = model_dir.parent / f"runtime-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfleet_runtime", "serve", "--model-dir",
                 str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
                 "--max-batch-size", "1", "--max-queue-size", "64"],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text(errors="replace"))
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def infer(self) -> None:
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/models/slow/infer",
            data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RuntimeProcess]]:
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from runtime_models import build_slow_dir  # noqa: PLC0415 (the runtime tests' helper)

    model = tmp_path_factory.mktemp("slow") / "slow"
    build_slow_dir(model, delay_s=0.2)  # 0.2 s per request, one at a time: requests pile up
    procs = [RuntimeProcess(model) for _ in range(3)]
    try:
        for p in procs:
            wait_for(p.ready, timeout=120, what=f"runtime on port {p.port}")
        yield procs
    finally:
        for p in procs:
            p.stop()


def spec_replicas(k: KubeCluster, namespace: str, name: str) -> int:
    return int(((get(k, namespace, "mdep", name) or {}).get("spec") or {}).get("replicas") or 0)


def test_builtin_engine_follows_a_load_step_on_real_runtimes(
    k: KubeCluster, namespace: str, runtimes: list[RuntimeProcess]
) -> None:
    auto = {"minReplicas": 1, "maxReplicas": 3, "target": 2, "scaleDownStabilizationSeconds": 0}
    body = manifest("live", {**CPU_ONLY, "autoscaling": auto})
    body["metadata"]["annotations"][SIMULATED_METRICS_ANNOTATION] = " ".join(
        f"127.0.0.1:{r.port}" for r in runtimes
    )
    apply_as_user(k, namespace, body)
    wait_condition(k, namespace, "live", "ScalingActive", "True", "ValidMetricFound", timeout=60)
    assert spec_replicas(k, namespace, "live") == 1

    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            runtimes[0].infer()

    clients = [threading.Thread(target=client) for _ in range(8)]
    started = time.monotonic()
    for c in clients:
        c.start()
    try:
        wait_for(
            lambda: spec_replicas(k, namespace, "live") >= 2,
            timeout=60,
            interval=0.2,
            what="the builtin engine to scale up under 8 clients at target 2",
            describe=lambda: json.dumps((get(k, namespace, "mdep", "live") or {}).get("status")),
        )
        up_s = time.monotonic() - started
        wait_for(
            lambda: (
                (get(k, namespace, "deployment", "live") or {}).get("spec", {}).get("replicas") == 3
            ),
            timeout=60,
            what="the Deployment to run maxReplicas (8 in flight at target 2 wants 4, max 3)",
        )
        md = get(k, namespace, "mdep", "live") or {}
        assert md["status"]["autoscaling"]["lastDecision"].startswith("1 -> 3: ")
        assert "in flight" in md["status"]["autoscaling"]["lastDecision"]
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    removed = time.monotonic()
    wait_for(
        lambda: spec_replicas(k, namespace, "live") == 1,
        timeout=240,
        interval=1,
        what="the builtin engine to scale back down to minReplicas",
        describe=lambda: json.dumps((get(k, namespace, "mdep", "live") or {}).get("status")),
    )
    down_s = time.monotonic() - removed
    # Never before the 60 s stable window has passed with less demand; never below min.
    assert down_s >= 50, down_s
    md = get(k, namespace, "mdep", "live") or {}
    assert md["status"]["autoscaling"]["lastDecision"].startswith("3 -> 1: 0 in flight")
    load = Path("/proc/loadavg").read_text().strip()
    print(f"\nbuiltin engine via the operator: scale-up written {up_s:.1f}s after the load "
          f"step (kubectl polling every 0.2 s), scale-down {down_s:.0f}s after the load "
          f"stopped; loadavg {load}")  # fmt: skip


def test_gpu_usage_in_status_comes_from_the_pods_own_figures(
    k: KubeCluster, namespace: str, runtimes: list[RuntimeProcess]
) -> None:
    """Two GPU pods: one answers with a real runtime's figures (a CPU runtime: it holds no
    GPU, so its idle GPU-hours are 0), the other answers nothing and is named, not zeroed."""
    body = manifest("usage", {"replicas": 2})
    body["metadata"]["annotations"][SIMULATED_METRICS_ANNOTATION] = (
        f"127.0.0.1:{runtimes[2].port} 127.0.0.1:{free_port()}"
    )
    apply_as_user(k, namespace, body)

    def usage() -> dict[str, Any] | None:
        got = ((get(k, namespace, "mdep", "usage") or {}).get("status") or {}).get("usage")
        return got if got and got.get("reportingPods") == 1 else None

    shown = wait_for(usage, timeout=120, what="status.usage from one of two pods")
    assert shown["gpus"] == 0 and shown["energySource"] == "none"
    assert shown["idleGPUHoursLastHour"] == "0.00"
    assert "1 of 2 ready pods did not report" in shown["message"]
    cpu = manifest("usage", {**CPU_ONLY, "replicas": 2})
    cpu["metadata"]["annotations"] = body["metadata"]["annotations"]
    apply_as_user(k, namespace, cpu)  # no GPU requested: no usage shown
    wait_for(
        lambda: "usage" not in ((get(k, namespace, "mdep", "usage") or {}).get("status") or {}),
        timeout=60, what="status.usage gone without spec.gpu",
    )  # fmt: skip
