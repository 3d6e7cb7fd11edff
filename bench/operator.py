"""Operator benchmark against a live cluster: time from create to Ready for N ModelDeployments.

    KUBECONFIG=... .venv/bin/python bench/operator.py [--sizes 1,100,1000]

Starts its own operator process (all namespaces: use a cluster no other operator serves),
creates N CPU-only ModelDeployments at once per size, and follows them with a watch. Prints
one table: create -> Ready (or -> reconciled, see below) p50/p99/total, reconciles and
reconciles/s from the operator's own /metrics, and the operator's RSS. Asserts nothing on timing.

The local cluster's two CPU nodes hold 220 pods, so sizes above --max-pods run with
replicas 0 and measure create -> reconciled (children applied, status observed for the
current generation) instead of create -> Ready; the table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

from kubernetes import client, config, watch

ROOT = pathlib.Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modeldeployments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
        "metadata": {"name": name, "annotations": {
            "modelfleet.io/simulated-load-seconds": "0.5"}},
        "spec": {
            "model": {"uri": f"https://models.example.com/{name}.tar.gz"},
            "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}},
            "replicas": replicas,
        },
    }


def done(obj: dict[str, Any], replicas: int) -> bool:
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    if replicas == 0:
        return bool(ready.get("reason") == "ScaledToZero")
    return bool(ready.get("status") == "True")


def reconciles(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r"^modelfleet_operator_reconciles_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in
                  pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_size(api: client.ApiClient, core: client.CoreV1Api, n: int, *, replicas: int,
             metrics_port: int, timeout: float) -> dict[str, Any]:
    ns = f"mf-bench-{n}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": ns}})
    for _ in range(100):  # pods are refused until the default ServiceAccount exists
        try:
            core.read_namespaced_service_account("default", ns)
            break
        except client.exceptions.ApiException:
            time.sleep(0.2)
    custom = client.CustomObjectsApi(api)
    created: dict[str, float] = {}
    finished: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        while not stop.is_set():
            try:
                for ev in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, ns,
                                   PLURAL, timeout_seconds=5):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    if name not in finished and done(obj, replicas):
                        with lock:
                            finished[name] = time.monotonic()
                    if stop.is_set():
                        break
            except Exception:  # a dropped watch: start another
                time.sleep(0.2)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    time.sleep(1)
    before = reconciles(metrics_port)
    start = time.monotonic()
    for i in range(n):
        name = f"md-{i:04d}"
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body(name, replicas))
        created[name] = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        with lock:
            if len(finished) >= n:
                break
        time.sleep(0.2)
    end = max(finished.values(), default=time.monotonic())
    stop.set()
    after = reconciles(metrics_port)
    lat = [finished[k] - created[k] for k in finished]
    core.delete_namespace(ns)
    # The next size must not pay for this one's cleanup (GC events reach the operator too).
    gone_by = time.monotonic() + 600
    while time.monotonic() < gone_by:
        try:
            core.read_namespace(ns)
            time.sleep(1)
        except client.exceptions.ApiException:
            break
    return {
        "n": n, "replicas": replicas, "done": len(finished),
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": pct(lat, 0.99) if lat else float("nan"),
        "total": end - start,
        "reconciles": after - before,
        "rate": (after - before) / max(end - start, 1e-9),
        "namespace": ns,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--max-pods", type=int, default=200,
                    help="above this many ModelDeployments, use replicas 0 (pod capacity)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    args = ap.parse_args()
    if not args.kubeconfig:
        ap.error("set KUBECONFIG (e.g. the line `make dev` printed) or pass --kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 8
    api = client.ApiClient(cfg)
    core = client.CoreV1Api(api)
    subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "-f",
                    str(ROOT / "crds")], check=False, capture_output=True,
                   env={**os.environ, "KUBECONFIG": args.kubeconfig})

    health, metrics = free_port(), free_port()
    log_path = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    log = log_path.open("wb")
    op = subprocess.Popen(
        [sys.executable, "-m", "modelfleet_operator", "--all-namespaces",
         "--liveness", f"http://127.0.0.1:{health}/healthz", "--metrics-port", str(metrics),
         "--kubeconfig", args.kubeconfig],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows = []
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        idle_rss = rss_mib(op.pid)[0]
        for n in (int(x) for x in args.sizes.split(",")):
            replicas = 1 if n <= args.max_pods else 0
            row = run_size(api, core, n, replicas=replicas, metrics_port=metrics,
                           timeout=args.timeout)
            row["rss"], row["hwm"] = rss_mib(op.pid)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(op.pid, signal.SIGKILL)

    print(f"\noperator benchmark (operator log: {log_path}); idle RSS {idle_rss:.0f} MiB")
    print("| MDs | measured | done | p50 s | p99 s | total s | reconciles | reconciles/s "
          "| RSS MiB (peak) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        what = "create -> Ready" if r["replicas"] else "create -> reconciled (replicas 0)"
        print(f"| {r['n']} | {what} | {r['done']}/{r['n']} | {r['p50']:.2f} | {r['p99']:.2f} "
              f"| {r['total']:.1f} | {r['reconciles']:.0f} | {r['rate']:.1f} "
              f"| {r['rss']:.0f} ({r['hwm']:.0f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
