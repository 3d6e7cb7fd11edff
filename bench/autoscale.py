"""Autoscaling benchmark on a live (kwok) cluster: the builtin engine against HPA(cpu), in one run.

    KUBECONFIG=... .venv/bin/python bench/autoscale.py [--steps 3] [--constant-seconds 300]

Starts its own operator process (all namespaces: use a cluster no other operator serves;
`hack/cluster/up NAME` makes one, with metrics-server) with MODELFLEET_SIMULATED_METRICS=1,
and three runtime processes on 127.0.0.1 (a 0.2 s model, no batching) that stand in for the
kwok pods' IPs (modelfleet.io/simulated-metrics-addresses). Then, in one namespace:

- builtin: a ModelDeployment (concurrency, target 2, 1..3 replicas); each step starts 8
  clients and times load start -> spec.replicas changed (a watch on the ModelDeployment),
  then stops them and waits for the scale-down back to 1;
- hpa: a ModelDeployment (cpu, target 50%, 500m request, 1..3); each step sets kwok's
  simulated CPU usage of its pod to 900m (180%) and times that -> spec.replicas changed, then
  sets it back to 10m and waits for the scale-down;
- constant load: 5 clients (2.5 pods' worth at target 2) on the builtin one for
  --constant-seconds, counting reversals of spec.replicas (up then down, or down then up).

Prints one table with the load average beside each phase. Cold-start phases (scheduling,
node, image, model load) need the real node and the activator: not measured here yet.
Asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from benchutil import free_port, loadavg, pct, wait
from kubernetes import client, config

ROOT = pathlib.Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modeldeployments"
ADDRESSES = "modelfleet.io/simulated-metrics-addresses"
USAGE_CPU = "kwok.x-k8s.io/usage-cpu"
DOC = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})


def runtimes(n: int) -> Iterator[list[int]]:
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from runtime_models import build_slow_dir  # noqa: PLC0415 (torch only here)

    model = pathlib.Path(tempfile.mkdtemp(prefix="bench-autoscale-")) / "slow"
    build_slow_dir(model, delay_s=0.2)
    ports = [free_port() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet_runtime",
                "serve",
                "--model-dir",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(p),
                "--max-batch-size",
                "1",
                "--max-queue-size",
                "64",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait(f"runtime :{p}", lambda p=p: ready(p), 180, 0.5)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Load:
    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        req = f"http://127.0.0.1:{self.port}/v2/models/slow/infer"
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                r = urllib.request.Request(req, data=DOC.encode())
                with urllib.request.urlopen(r, timeout=30) as resp:
                    resp.read()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@contextlib.contextmanager
def operator(kubeconfig: str) -> Iterator[None]:
    health = free_port()
    log_path = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    env = dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1",
               MODELFLEET_SIMULATED_METRICS="1")  # fmt: skip
    with log_path.open("wb") as log:
        op = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_operator", "--all-namespaces", "--liveness",
             f"http://127.0.0.1:{health}/healthz", "--metrics-port", str(free_port()),
             "--kubeconfig", kubeconfig],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        wait("the operator's liveness endpoint", lambda: ready_url(health), 120, 0.5)
        yield
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        op.wait(30)
        print(f"operator log: {log_path}")


def ready_url(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


def md_body(name: str, autoscaling: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "annotations": {"modelfleet.io/simulated-load-seconds": "1", **annotations},
        },
        "spec": {
            "model": {"uri": f"https://models.example.com/{name}.tar.gz"},
            "runtime": {"device": "cpu", "resources": {"cpu": "500m", "memory": "64Mi"}},
            "autoscaling": autoscaling,
        },
    }


class Cluster:
    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def replicas(self, name: str) -> int:
        md = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return int((md.get("spec") or {}).get("replicas") or 0)

    def status(self, name: str) -> dict[str, Any]:
        md = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return dict(md.get("status") or {})

    def pods(self, name: str) -> list[Any]:
        sel = f"app.kubernetes.io/instance={name}"
        return [
            p
            for p in self.core.list_namespaced_pod(self.ns, label_selector=sel).items
            if p.metadata.deletion_timestamp is None
        ]

    def set_cpu(self, name: str, usage: str) -> None:
        for p in self.pods(name):
            self.core.patch_namespaced_pod(
                p.metadata.name, self.ns, {"metadata": {"annotations": {USAGE_CPU: usage}}}
            )

    def time_change(self, name: str, start: float, before: int, timeout: float) -> float:
        wait(f"{name} to leave {before} replicas", lambda: self.replicas(name) != before, timeout)
        return time.monotonic() - start


def builtin_steps(c: Cluster, port: int, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        wait("builtin at 1 replica", lambda: c.replicas("builtin") == 1, 300, 1)
        time.sleep(3)
        start = time.monotonic()
        with Load(port, 8):
            out.append(c.time_change("builtin", start, 1, 120))
            time.sleep(2)
    return out


def hpa_steps(c: Cluster, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        wait("hpa at 1 replica", lambda: c.replicas("hpa") == 1, 300, 1)
        wait("the hpa pod", lambda: c.pods("hpa"), 60, 1)
        time.sleep(20)  # metrics-server has the low usage, the HPA has synced on it
        start = time.monotonic()
        c.set_cpu("hpa", "900m")
        out.append(c.time_change("hpa", start, 1, 300))
        c.set_cpu("hpa", "10m")
    return out


def reversals(history: list[int]) -> int:
    out, direction = 0, 0
    for a, b in itertools.pairwise(history):
        if a == b:
            continue
        d = 1 if b > a else -1
        if direction and d != direction:
            out += 1
        direction = d
    return out


def constant(c: Cluster, port: int, seconds: float) -> tuple[int, list[int]]:
    wait("builtin at 1 replica", lambda: c.replicas("builtin") == 1, 300, 1)
    history = []
    with Load(port, 5):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            history.append(c.replicas("builtin"))
            time.sleep(1)
    changes = [b for a, b in itertools.pairwise(history) if a != b]
    return reversals(history), changes


def install_crd() -> None:
    """The ModelDeployment CRD from crds/ when the cluster has none (a fresh hack/cluster/up)."""
    import yaml  # noqa: PLC0415

    ext = client.ApiextensionsV1Api()
    body = yaml.safe_load((ROOT / "crds" / "modelfleet.io_modeldeployments.yaml").read_text())
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        ext.patch_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait("the CRD to be established", established, 60, 0.5)
    time.sleep(2)  # discovery catches up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--constant-seconds", type=float, default=300)
    parser.add_argument("--skip-hpa", action="store_true")
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise SystemExit("set KUBECONFIG (hack/cluster/up NAME prints it)")
    config.load_kube_config(kubeconfig)
    install_crd()
    c = Cluster(f"bench-autoscale-{uuid.uuid4().hex[:6]}")
    c.core.create_namespace({"metadata": {"name": c.ns}})
    rows: list[tuple[str, str, str]] = []
    try:
        with runtimes(3) as ports, operator(kubeconfig):
            builtin = {"minReplicas": 1, "maxReplicas": 3, "target": 2,
                       "scaleDownStabilizationSeconds": 0}  # fmt: skip
            addresses = " ".join(f"127.0.0.1:{p}" for p in ports)
            c.custom.create_namespaced_custom_object(
                GROUP, VERSION, c.ns, PLURAL, md_body("builtin", builtin, {ADDRESSES: addresses})
            )
            if not args.skip_hpa:
                hpa = {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu", "target": 50,
                       "scaleDownStabilizationSeconds": 0}  # fmt: skip
                c.custom.create_namespaced_custom_object(
                    GROUP, VERSION, c.ns, PLURAL, md_body("hpa", hpa, {})
                )
            got = builtin_steps(c, ports[0], args.steps)
            rows.append(("builtin: load step -> /scale written (s)",
                         f"p50 {pct(got, 0.5):.1f}  p95 {pct(got, 0.95):.1f}  "
                         f"({', '.join(f'{g:.1f}' for g in got)})", loadavg()))  # fmt: skip
            rows.append(("builtin: last decision", c.status("builtin").get("autoscaling", {})
                         .get("lastDecision", "?"), loadavg()))  # fmt: skip
            if not args.skip_hpa:
                got = hpa_steps(c, args.steps)
                rows.append(("hpa(cpu): usage step -> /scale written (s)",
                             f"p50 {pct(got, 0.5):.1f}  p95 {pct(got, 0.95):.1f}  "
                             f"({', '.join(f'{g:.1f}' for g in got)})", loadavg()))  # fmt: skip
            if args.constant_seconds > 0:
                rev, changes = constant(c, ports[0], args.constant_seconds)
                per10 = rev * 600 / args.constant_seconds
                rows.append((f"builtin: reversals in {args.constant_seconds:.0f}s of 5 clients",
                             f"{rev} ({per10:.1f} per 10 min); replicas went {changes}",
                             loadavg()))  # fmt: skip
    finally:
        c.core.delete_namespace(c.ns)
    rows.append(("cold-start phases", "not measured (needs the real node)", loadavg()))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  {'figure':<60}  loadavg")
    for what, figure, load in rows:
        print(f"{what:<{width}}  {figure:<60}  {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
