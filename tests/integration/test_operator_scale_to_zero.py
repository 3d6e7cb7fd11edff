"""Scale to zero on the real control plane, with the real activator and real runtimes.

kwok's pods have IPs that answer nothing, so runtime processes on 127.0.0.1 stand in for
them (``modelfleet.io/simulated-metrics-addresses``, honoured by the operator and the
activator with MODELFLEET_SIMULATED_METRICS=1). The activator runs as a process on this
host; a selectorless Service whose EndpointSlice lists this host's address plays the chart's
activator Service. No kube-proxy runs here, so the test calls the activator on the port the
operator wrote into the ModelDeployment's activator slice, as kube-proxy would forward a
caller of the Service.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from modelfleet_operator.autoscale.loop import SIMULATED_METRICS_ANNOTATION
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

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ACTIVATOR_NS = "modelfleet-activator-test"
ACTIVATOR_SVC = "modelfleet-activator"
CPU_ONLY = {"gpu": None, "runtime": {"device": "cpu"}}
SIMULATED = {"MODELFLEET_SIMULATED_METRICS": "1"}


def host_address() -> str:
    """This host's own non-loopback IPv4 (EndpointSlices refuse loopback addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the route
            address = str(s.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
        candidates = [a for a in out.stdout.split() if "." in a and not a.startswith("127.")]
        if not candidates:
            pytest.fail("this host has no non-loopback IPv4 address for the activator's slice")
        address = candidates[0]
    return address


class ActivatorProcess:
    def __init__(self, cluster: KubeCluster, log: Path) -> None:
        self.metrics_port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfleet_operator.activator",
                 "--kubeconfig", str(cluster.kubeconfig),
                 "--metrics-port", str(self.metrics_port), "--drain-seconds", "5"],
                env={**cluster.env, **SIMULATED, "PYTHONUNBUFFERED": "1"},
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text(errors="replace")[-4000:])
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def activator_service(k: KubeCluster, address: str, metrics_port: int) -> None:
    k.kubectl("create", "namespace", ACTIVATOR_NS, check=False)
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ACTIVATOR_SVC, "namespace": ACTIVATOR_NS},
            "spec": {"ports": [{"name": "metrics", "port": 9090}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{ACTIVATOR_SVC}-host",
                "namespace": ACTIVATOR_NS,
                "labels": {
                    "kubernetes.io/service-name": ACTIVATOR_SVC,
                    "endpointslice.kubernetes.io/managed-by": "test",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": metrics_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        },
    ]
    for doc in docs:
        k.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))


class Runtime:
    def __init__(self, model_dir: Path) -> None:
        self.port = free_port()
        self.log = model_dir.parent / f"runtime-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfleet_runtime", "serve", "--model-dir",
                 str(model_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text(errors="replace"))
        try:
            url = f"http://127.0.0.1:{self.port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclasses.dataclass
class Setup:
    k: KubeCluster
    activator: ActivatorProcess
    runtime: Runtime
    operator: OperatorProcess


@pytest.fixture(scope="module")
def setup(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from runtime_models import build_slow_dir  # noqa: PLC0415 (the runtime tests' helper)

    install_crd(kube_cluster)
    logs = tmp_path_factory.mktemp("scale-to-zero")
    model = logs / "slow"
    build_slow_dir(model, delay_s=0.05)
    runtime = Runtime(model)
    activator = ActivatorProcess(kube_cluster, logs / "activator.log")
    operator = OperatorProcess(
        dataclasses.replace(kube_cluster, env={**kube_cluster.env, **SIMULATED}),
        logs / "operator.log",
        resync_seconds=30,
        extra_args=[f"--activator-service={ACTIVATOR_NS}/{ACTIVATOR_SVC}"],
    )
    try:
        wait_for(runtime.ready, timeout=120, what="the runtime")
        wait_for(activator.ready, timeout=60, what="the activator's /readyz")
        activator_service(kube_cluster, host_address(), activator.metrics_port)
        operator.start()
        yield Setup(kube_cluster, activator, runtime, operator)
    finally:
        operator.stop()
        activator.stop()
        runtime.stop()
        print(f"\noperator log:\n{operator.log_tail(40)}")
        print(f"\nactivator log:\n{activator.log.read_text(errors='replace')[-3000:]}")


def to_zero(name: str, runtime: Runtime, **hold: int) -> dict[str, Any]:
    auto: dict[str, Any] = {"minReplicas": 0, "maxReplicas": 2, "target": 4}
    if hold:
        auto["scaleToZero"] = hold
    body = manifest(name, {**CPU_ONLY, "replicas": 0, "autoscaling": auto}, load_seconds=2)
    body["metadata"]["annotations"][SIMULATED_METRICS_ANNOTATION] = f"127.0.0.1:{runtime.port}"
    return body


def activator_port(k: KubeCluster, namespace: str, name: str) -> int:
    def probe() -> int | None:
        ep = get(k, namespace, "endpointslice", name)
        if not ep or not ep.get("endpoints"):
            return None
        return int(ep["ports"][0]["port"])

    return wait_for(probe, timeout=60, what=f"the activator slice of {name} to list it")


def infer(port: int, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/slow/infer",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_requests_at_zero_are_held_and_answered_after_the_cold_start(
    setup: Setup, namespace: str
) -> None:
    k = setup.k
    apply_as_user(k, namespace, to_zero("cold", setup.runtime))
    md = wait_condition(k, namespace, "cold", "Ready", "True", "ScaledToZero", timeout=60)
    assert "activator holds requests" in cond(md, "Ready")["message"]
    assert get(k, namespace, "deployment", "cold")["spec"]["replicas"] == 0  # type: ignore[index]
    port = activator_port(k, namespace, "cold")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: infer(port), range(8)))
    cold_s = time.monotonic() - started
    assert [a[0] for a in answers] == [200] * 8, answers  # none lost through the cold start
    assert all(json.loads(a[2])["outputs"] for a in answers)

    md = get(k, namespace, "mdep", "cold") or {}
    assert md["spec"]["replicas"] >= 1
    assert "held by the activator" in md["status"]["autoscaling"]["lastDecision"]
    # Once a replica is ready the activator leaves the path: the slice lists nothing.
    wait_for(
        lambda: (get(k, namespace, "endpointslice", "cold") or {}).get("endpoints") in (None, []),
        timeout=60,
        what="the activator slice to empty once a replica is ready",
    )
    text = setup.activator.metrics()
    assert f'modelfleet_activator_held_requests{{name="cold",namespace="{namespace}"}} 0.0' in text
    load = Path("/proc/loadavg").read_text().strip()
    print(f"\nscale from zero: 8 held requests answered {cold_s:.1f}s after they were sent "
          f"(kwok pod 'loads' 2 s); loadavg {load}")  # fmt: skip


def test_above_the_cap_callers_get_503_with_retry_after(setup: Setup, namespace: str) -> None:
    k = setup.k
    # Nothing can serve (no runtime address for its pods): held requests stay held.
    body = to_zero("capped", setup.runtime, maxHeldRequests=2, holdTimeoutSeconds=8)
    body["metadata"]["annotations"][SIMULATED_METRICS_ANNOTATION] = "127.0.0.1:1"
    apply_as_user(k, namespace, body)
    port = activator_port(k, namespace, "capped")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(infer, port, 60) for _ in range(5)]
        answers = [f.result() for f in futures]
    codes = sorted(a[0] for a in answers)
    assert codes.count(503) >= 3, answers  # above the cap of 2, at once
    for code, headers, _ in answers:
        if code == 503:
            assert int(headers.get("Retry-After", "0")) >= 1
    # The two held ones could not reach a replica in time: 504 naming the timeout.
    timed_out = [a for a in answers if a[0] == 504]
    assert len(timed_out) == 2, answers
    assert "8" in timed_out[0][2].decode()
