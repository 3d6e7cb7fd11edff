"""The builtin autoscaler on the real node: the operator pod (helm-installed) scrapes the runtime
pods' /metrics at their pod IPs, writes /scale when in-flight demand steps up, the new pods
become Ready and serve with no failed request, and it scales back to minReplicas (never
below) once the load is gone and the stable window has passed.

The model sleeps 0.3 s per forward pass (one request per batch), so N clients sending one
request after another keep ~N requests in flight. It is served from a hostPath volume
(pvc://, no fetch init container: its fixed 500m CPU request would not let three pods fit
the 2-core node) with a 100m CPU request per pod.
"""

from __future__ import annotations

import functools
import http.client
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import yaml
from conftest import TOLERATE
from e2e_support import REAL_NODE, E2EError, Kube, condition, infer_json, run, wait_for
from modelfleet_operator.autoscale.scrape import parse_metrics
from safetensors.torch import save_file
from test_real_node import apply_in, describe, service_ip, serving_pods, wait_ready

NAME = "slow"
PORT = 8080
DELAY_S = 0.3
TARGET = 2  # in-flight requests per pod
MIN, MAX = 1, 3
DOWN_WINDOW_S = 10  # scaleDownStabilizationSeconds (the stable window itself is 60 s)
# Load steps per cycle: (clients, replicas the step must bring); each cycle ends with the load
# removed and the scale-down back to MIN.
CYCLES: list[list[tuple[int, int]]] = [[(3, 2), (6, 3)], [(6, 3)]]
X = [1.0, 2.0]

SLOWNET = '''\
"""Sleeps per forward pass: in-flight requests pile up under load (the e2e autoscaling test)."""
import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.register_buffer("two", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x * self.two


def build(delay_s: float = 0.3) -> nn.Module:
    return Slow(delay_s)
'''


@pytest.fixture
def slow_model(operator: Kube, ns: str) -> Iterator[str]:
    """The slow model on a hostPath PersistentVolume bound to claim ``models`` in ``ns``."""
    host_dir = tempfile.mkdtemp(prefix="mf-e2e-autoscale-")
    d = pathlib.Path(host_dir) / "slow"
    d.mkdir()
    (d / "slownet.py").write_text(SLOWNET)
    save_file({"two": torch.tensor(2.0)}, str(d / "model.safetensors"))
    manifest = {
        "format": "safetensors", "name": NAME, "version": "1", "weights": "model.safetensors",
        "entrypoint": "slownet:build", "entrypoint_kwargs": {"delay_s": DELAY_S},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }  # fmt: skip
    (d / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    run(["chmod", "-R", "a+rX", host_dir])
    pv = f"{ns}-models"
    try:
        operator.apply([
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                      "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                      "claimRef": {"namespace": ns, "name": "models"},
                      "hostPath": {"path": host_dir, "type": "Directory"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "models", "namespace": ns},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                      "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}},
        ])  # fmt: skip
        yield "pvc://models/slow"
    finally:
        operator.kubectl("delete", "mdep", NAME, "-n", ns, "--wait=true", check=False,
                         timeout=150)  # fmt: skip
        operator.kubectl("delete", "pvc", "models", "-n", ns, "--wait=true", check=False)
        operator.kubectl("delete", "pv", pv, "--wait=true", check=False)
        shutil.rmtree(host_dir, ignore_errors=True)


def autoscaled(uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            # no replicas: the engine owns them
            "model": {"uri": uri, "format": "safetensors", "entrypoint": "slownet:build",
                      "name": NAME},
            "runtime": {"device": "cpu", "resources": {"cpu": "100m", "memory": "1Gi"},
                        "batching": {"maxBatchSize": 1, "maxQueueSize": 64}},
            "autoscaling": {"engine": "builtin", "metric": "concurrency", "target": TARGET,
                            "minReplicas": MIN, "maxReplicas": MAX,
                            "scaleDownStabilizationSeconds": DOWN_WINDOW_S},
            "scheduling": {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                           "tolerations": [TOLERATE]},
        },
    }  # fmt: skip


def infer(ip: str, timeout: float = 30) -> list[float]:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": X}]
    return infer_json(ip, PORT, NAME, inputs, timeout)


@dataclass
class Load:
    """Closed-loop clients (one request after another, each on a new connection, so the
    Service spreads them over the endpoints); clients are added and removed by step."""

    ip: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stops: list[threading.Event] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                got = infer(self.ip)
                if got != [2 * v for v in X]:
                    raise E2EError(f"wrong answer {got}")
            except (OSError, E2EError, ValueError, KeyError) as exc:
                with self._lock:
                    self.failures.append(f"{time.strftime('%T')} {type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    self.ok += 1

    def clients(self, n: int) -> None:
        while len(self._threads) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._client, args=(stop,), daemon=True)
            self._stops.append(stop)
            self._threads.append(t)
            t.start()
        while len(self._threads) > n:
            self._stops.pop().set()
            self._threads.pop().join(timeout=60)


class ReplicasWatch:
    """``kubectl get -w`` on the ModelDeployment: when each spec.replicas value was seen."""

    def __init__(self, kube: Kube, ns: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self._proc = subprocess.Popen(
            [str(kube.bin / "kubectl"), "get", "mdep", NAME, "-n", ns, "-w",
             "-o", "jsonpath={.spec.replicas}{\"\\n\"}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=kube.env(),
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                value = int(line)
                if not self.seen or self.seen[-1][1] != value:
                    self.seen.append((time.monotonic(), value))

    def first_at(self, value: int, since: float) -> float | None:
        return next((at for at, v in self.seen if at >= since and v == value), None)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def pod_requests(kube: Kube, ns: str) -> dict[str, float]:
    """requests answered so far by each Ready pod, read from its own /metrics at its IP."""
    out = {}
    for pod in serving_pods(kube, ns, NAME):
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or condition(pod, "Ready").get("status") != "True":
            continue
        conn = http.client.HTTPConnection(ip, PORT, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        out[pod["metadata"]["name"]] = parse_metrics(text).requests
    return out


def ready_endpoints(kube: Kube, ns: str) -> int:
    slices = kube.get("endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={NAME}")
    return sum(
        1
        for s in slices["items"]
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    )


def loadavg() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def test_builtin_autoscaler_follows_a_load_step(operator: Kube, ns: str, slow_model: str) -> None:
    kube = operator
    apply_in(kube, ns, autoscaled(slow_model))
    wait_ready(kube, ns, NAME, timeout=300)

    def scaling_active() -> dict[str, Any] | None:
        obj = kube.get("mdep", NAME, "-n", ns)
        return obj if condition(obj, "ScalingActive").get("status") == "True" else None

    obj = wait_for("ScalingActive=True (the operator pod reads the runtime pod's /metrics)",
                   scaling_active, timeout=120, describe=lambda: describe(kube, ns))  # fmt: skip
    assert condition(obj, "ScalingActive")["reason"] == "ValidMetricFound"
    assert obj["spec"]["replicas"] == MIN
    ip = service_ip(kube, ns, NAME)
    assert infer(ip) == [2 * v for v in X]

    watch = ReplicasWatch(kube, ns)
    load = Load(ip)
    latencies: list[float] = []
    figures: list[str] = []
    try:
        for cycle, steps in enumerate(CYCLES, 1):
            # One client: ~1 in flight at target 2 wants one pod; nothing scales.
            load.clients(1)
            time.sleep(8)
            assert kube.get("mdep", NAME, "-n", ns)["spec"]["replicas"] == MIN
            current = MIN
            for clients, want in steps:
                before = pod_requests(kube, ns)
                failed_before = len(load.failures)
                started = time.monotonic()
                load.clients(clients)
                written = wait_for(
                    f"cycle {cycle}: {clients} clients -> spec.replicas {want}",
                    functools.partial(watch.first_at, want, started),
                    timeout=120, interval=0.1, describe=lambda: describe(kube, ns),
                )  # fmt: skip
                latency = written - started
                latencies.append(latency)

                def served(w: int = want) -> dict[str, Any] | None:
                    o = kube.get("mdep", NAME, "-n", ns)
                    st = o.get("status") or {}
                    ok = (st.get("readyReplicas") == w and ready_endpoints(kube, ns) == w
                          and condition(o, "Ready").get("status") == "True")  # fmt: skip
                    return o if ok else None

                o = wait_for(f"cycle {cycle}: {want} replicas Ready behind the Service",
                             served, timeout=300, interval=1,
                             describe=lambda: describe(kube, ns))  # fmt: skip
                ready_s = time.monotonic() - started
                auto = o["status"]["autoscaling"]
                assert auto["engine"] == "builtin" and auto["desiredReplicas"] == want, auto
                assert auto["lastDecision"].startswith(f"{current} -> {want}:"), auto
                assert condition(o, "ScalingActive")["status"] == "True"
                time.sleep(6)  # the new pods take their share of the load
                after = pod_requests(kube, ns)
                grew = {p: after[p] - before.get(p, 0.0) for p in after}
                assert len(after) == want and all(d > 0 for d in grew.values()), grew
                assert load.failures[failed_before:] == [], load.failures[failed_before:][:5]
                figures.append(
                    f"cycle {cycle}: {current}->{clients} clients: /scale {current}->{want} "
                    f"written {latency:.1f}s after the step, {want} Ready+serving at "
                    f"{ready_s:.1f}s, requests per pod in the last phase {grew}, "
                    f"load avg {loadavg()}"
                )
                print(f"\n[e2e] {figures[-1]}")
                current = want
            # Load removed: back to MIN after the stable window, never below it.
            load.clients(0)
            removed = time.monotonic()
            down = wait_for(
                f"cycle {cycle}: load removed -> spec.replicas {MIN}",
                functools.partial(watch.first_at, MIN, removed),
                timeout=300, interval=0.5, describe=lambda: describe(kube, ns),
            )  # fmt: skip
            wait_for(f"cycle {cycle}: one pod left",
                     lambda: len(serving_pods(kube, ns, NAME)) == MIN and
                     ready_endpoints(kube, ns) == MIN, timeout=180, interval=1,
                     describe=lambda: describe(kube, ns))  # fmt: skip
            o = kube.get("mdep", NAME, "-n", ns)
            # 3 -> 1 at once, or 3 -> 2 -> 1 as the stable window's mean falls
            assert f" -> {MIN}: " in o["status"]["autoscaling"]["lastDecision"], o["status"]
            path = [v for at, v in watch.seen if at >= removed]
            assert infer(ip) == [2 * v for v in X]
            figures.append(
                f"cycle {cycle}: load removed: spec.replicas {[current, *path]}, {MIN} written "
                f"{down - removed:.1f}s later (stable window 60 s, "
                f"scaleDownStabilizationSeconds {DOWN_WINDOW_S}), load avg {loadavg()}"
            )
            print(f"\n[e2e] {figures[-1]}")
    finally:
        load.clients(0)
        watch.close()
    values = [v for _, v in watch.seen]
    print(f"\n[e2e] spec.replicas over the run: {values}; {load.ok} requests OK, "
          f"{len(load.failures)} failed; decision latencies {[f'{x:.1f}' for x in latencies]} s "
          f"(max {max(latencies):.1f} s); load avg {loadavg()}")  # fmt: skip
    assert min(values) >= MIN and max(values) <= MAX, values
    assert load.failures == [], load.failures[:5]
