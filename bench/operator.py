"""Operator benchmark on a live cluster: N ModelDeployments created at once, then idle.

    KUBECONFIG=... .venv/bin/python bench/operator.py [--n 1000] [--idle-seconds 60]
    ... --source /path/to/old/checkout      # the same run against another version's operator

Starts its own operator process (all namespaces: use a cluster no other operator serves),
gives the simulated cluster room for N serving pods (kwok CPU nodes and a ServiceCIDR with
addresses for N Services, both removed afterwards), creates N CPU-only ModelDeployments with
one replica from a few threads at once, and follows them with a watch. Prints one table from
one run, with the load average beside each phase:

- create -> reconciled (children applied and status written for the current generation) and
  create -> Ready, p50/p99;
- reconciles and API requests per object (the operator's own counters: every request it
  makes besides its watches), operator CPU seconds per object, RSS with N objects;
- idle and converged: API requests/s and CPU % over --idle-seconds.

Asserts nothing on timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

from benchutil import free_port, loadavg, pct
from kubernetes import client, config, watch

ROOT = pathlib.Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modeldeployments"
PODS_PER_NODE = 250
TICK = os.sysconf("SC_CLK_TCK")


def body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "annotations": {"modelfleet.io/simulated-load-seconds": "0.5"}},
        "spec": {
            "model": {"uri": f"https://models.example.com/{name}.tar.gz"},
            "runtime": {"device": "cpu", "resources": {"cpu": "10m", "memory": "16Mi"}},
            "replicas": 1,
        },
    }


def kwok_node(name: str, index: int) -> dict[str, Any]:
    # kwok gives pods addresses from the node's podCIDR: without one they stay Pending.
    cidr = f"10.250.{index}.0/24"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", "mf-bench": "true"},
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"127.0.20.{index + 1}"},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": {"cpu": "2000", "memory": "8Ti", "pods": str(PODS_PER_NODE)},
            "capacity": {"cpu": "2000", "memory": "8Ti", "pods": str(PODS_PER_NODE)},
        },
    }


class Metrics:
    def __init__(self, port: int) -> None:
        self.port = port

    def sum(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        pattern = rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

    def snapshot(self) -> dict[str, float]:
        return {
            "reconciles": self.sum("modelfleet_operator_reconciles_total"),
            "requests": self.sum("modelfleet_operator_api_requests_total"),
            "api_s": self.sum("modelfleet_operator_api_request_duration_seconds_sum"),
            "api_n": self.sum("modelfleet_operator_api_request_duration_seconds_count"),
            "rec_s": self.sum("modelfleet_operator_reconcile_duration_seconds_sum"),
            "rec_n": self.sum("modelfleet_operator_reconcile_duration_seconds_count"),
        }


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def room(api: client.ApiClient, n: int) -> list[str]:
    """Nodes and Service addresses for n more serving pods; returns the nodes made."""
    core = client.CoreV1Api(api)
    names = [f"mf-bench-cpu-{i}" for i in range(n // PODS_PER_NODE + 1)]
    for i, name in enumerate(names):
        try:
            core.create_node(kwok_node(name, i))
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
    custom = client.CustomObjectsApi(api)
    try:  # a second Service range (networking.k8s.io ServiceCIDR, GA in 1.33)
        custom.create_cluster_custom_object(
            "networking.k8s.io",
            "v1",
            "servicecidrs",
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "ServiceCIDR",
                "metadata": {"name": "mf-bench"},
                "spec": {"cidrs": ["10.120.0.0/19"]},
            },
        )
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = 0
        for name in names:
            node = core.read_node(name)
            conds = {c.type: c.status for c in node.status.conditions or []}
            ready += conds.get("Ready") == "True"
        if ready == len(names):
            break
        time.sleep(1)
    return names


def follow(
    custom: client.CustomObjectsApi,
    ns: str,
    reconciled: dict[str, float],
    ready: dict[str, float],
    stop: threading.Event,
) -> None:
    while not stop.is_set():
        try:
            for ev in watch.Watch().stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, timeout_seconds=5
            ):
                obj = ev["object"]
                name = obj["metadata"]["name"]
                st = obj.get("status") or {}
                now = time.monotonic()
                if st.get("observedGeneration") == obj["metadata"].get("generation"):
                    reconciled.setdefault(name, now)
                    conds = {c["type"]: c for c in st.get("conditions") or []}
                    if conds.get("Ready", {}).get("status") == "True":
                        ready.setdefault(name, now)
                if stop.is_set():
                    break
        except Exception:  # a dropped watch: start another
            time.sleep(0.2)


def start_operator(
    kubeconfig: str, source: str | None, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int, int, pathlib.Path]:
    health, metrics = free_port(), free_port()
    log_path = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    env = dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1")
    if source:  # another checkout's operator, e.g. the version before a change
        env["PYTHONPATH"] = str(pathlib.Path(source) / "operator")
    with log_path.open("wb") as log:
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet_operator",
                "--all-namespaces",
                "--liveness",
                f"http://127.0.0.1:{health}/healthz",
                "--metrics-port",
                str(metrics),
                "--kubeconfig",
                kubeconfig,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=source or ROOT,
        )
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
            break
        except OSError:
            if op.poll() is not None:
                raise SystemExit(f"operator exited; log: {log_path}") from None
            time.sleep(0.5)
    return op, health, metrics, log_path


def report(out: dict[str, Any], args: argparse.Namespace, log_path: pathlib.Path) -> None:
    rec, rdy = out["reconciled"], out["ready"]
    print(
        f"\noperator benchmark: {args.n} ModelDeployments created at once "
        f"({out['source']}; operator log {log_path})"
    )
    print(
        f"created in {out['create_seconds']:.1f} s from {args.threads} threads; "
        f"all Ready after {out['all_ready_s']:.1f} s"
    )
    print("| figure | value | goal |")
    print("|---|---:|---|")
    rows = [
        ("reconciled (children + status)", f"{len(rec)}/{args.n}", ""),
        (
            "create -> reconciled p50 / p99 s",
            f"{statistics.median(rec) if rec else float('nan'):.1f} / {pct(rec, 0.99):.1f}",
            "p99 < 20 s",
        ),
        ("Ready", f"{len(rdy)}/{args.n}", ""),
        (
            "create -> Ready p50 / p99 s",
            f"{statistics.median(rdy) if rdy else float('nan'):.1f} / {pct(rdy, 0.99):.1f}",
            "p99 < 30 s",
        ),
        ("reconciles per object (create -> Ready)", f"{out['reconciles_per_md']:.2f}", "<= 2"),
        ("API requests per object (create -> Ready)", f"{out['requests_per_md']:.2f}", "<= 8"),
        ("operator CPU per object (ms)", f"{out['cpu_ms_per_md']:.1f}", ""),
        ("mean API request wall time (ms; pool wait included)", f"{out['api_ms']:.0f}", ""),
        ("mean reconcile wall time (ms)", f"{out['rec_ms']:.0f}", ""),
        ("peak reconcile queue depth", f"{out['peak_queue']:.0f}", ""),
        (
            f"operator RSS with {args.n} objects (MiB; idle before: {out['idle_rss']:.0f})",
            f"{out['rss']:.0f}",
            "< 150",
        ),
        (
            f"idle converged: API requests/s over {args.idle_seconds:.0f} s",
            f"{out['idle_requests_per_s']:.3f}",
            "< 0.2",
        ),
        ("operator RSS after the idle period (MiB)", f"{out['rss_after_idle']:.0f}", "< 150"),
        ("idle converged: reconciles/s", f"{out['idle_reconciles_per_s']:.3f}", ""),
        ("idle converged: operator CPU %", f"{out['idle_cpu_pct']:.2f}", "< 0.5"),
        (
            "load average: create start / create end / idle",
            f"{out['load_create_start']} / {out['load_create_end']} / {out['load_idle']}",
            "",
        ),
    ]
    for figure, value, goal in rows:
        print(f"| {figure} | {value} | {goal} |")
    print(
        json.dumps({k: v for k, v in out.items() if k not in ("reconciled", "ready")}),
        file=sys.stderr,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--threads", type=int, default=8, help="client threads creating at once")
    ap.add_argument("--source", help="run the operator from this checkout instead")
    ap.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="extra flag for the operator, e.g. --operator-arg=--workers=64 (repeatable)",
    )
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    args = ap.parse_args()
    if not args.kubeconfig:
        ap.error("set KUBECONFIG (e.g. the line `make dev` printed) or pass --kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = args.threads + 4
    api = client.ApiClient(cfg)
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
        check=False,
        capture_output=True,
        env={**os.environ, "KUBECONFIG": args.kubeconfig},
    )
    nodes = room(api, args.n)
    op, _, metrics_port, log_path = start_operator(args.kubeconfig, args.source, args.operator_arg)
    metrics = Metrics(metrics_port)
    ns = f"mf-bench-{uuid.uuid4().hex[:5]}"
    out: dict[str, Any] = {"n": args.n, "source": args.source or "this checkout"}
    try:
        idle_rss = rss_mib(op.pid)
        core.create_namespace({"metadata": {"name": ns}})
        for _ in range(100):  # pods are refused until the default ServiceAccount exists
            try:
                core.read_namespaced_service_account("default", ns)
                break
            except client.exceptions.ApiException:
                time.sleep(0.2)
        reconciled: dict[str, float] = {}
        ready: dict[str, float] = {}
        created: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(
            target=follow, args=(custom, ns, reconciled, ready, stop), daemon=True
        )
        watcher.start()
        time.sleep(2)
        before, cpu0 = metrics.snapshot(), cpu_seconds(op.pid)
        out["load_create_start"] = loadavg()
        start = time.monotonic()

        def create(i: int) -> None:
            name = f"md-{i:04d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body(name))
            created[name] = time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(create, range(args.n)))
        out["create_seconds"] = time.monotonic() - start
        deadline = start + args.timeout
        peak_queue = 0.0
        while time.monotonic() < deadline and len(ready) < args.n:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                peak_queue = max(peak_queue, metrics.sum("modelfleet_operator_queue_depth"))
        out["peak_queue"] = peak_queue
        out["load_create_end"] = loadavg()
        after, cpu1 = metrics.snapshot(), cpu_seconds(op.pid)
        out["reconciled"] = [reconciled[k] - created[k] for k in reconciled if k in created]
        out["ready"] = [ready[k] - created[k] for k in ready if k in created]
        out["all_ready_s"] = max(ready.values(), default=start) - start
        out["reconciles_per_md"] = (after["reconciles"] - before["reconciles"]) / args.n
        out["requests_per_md"] = (after["requests"] - before["requests"]) / args.n
        out["cpu_ms_per_md"] = (cpu1 - cpu0) * 1000 / args.n
        out["api_ms"] = (
            1000 * (after["api_s"] - before["api_s"]) / max(1, after["api_n"] - before["api_n"])
        )
        out["rec_ms"] = (
            1000 * (after["rec_s"] - before["rec_s"]) / max(1, after["rec_n"] - before["rec_n"])
        )
        out["rss"] = rss_mib(op.pid)
        out["idle_rss"] = idle_rss
        # Idle: let the last status writes land, then measure a converged operator.
        time.sleep(10)
        i0, c0, t0 = metrics.snapshot(), cpu_seconds(op.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        i1, c1, t1 = metrics.snapshot(), cpu_seconds(op.pid), time.monotonic()
        out["idle_requests_per_s"] = (i1["requests"] - i0["requests"]) / (t1 - t0)
        out["idle_reconciles_per_s"] = (i1["reconciles"] - i0["reconciles"]) / (t1 - t0)
        out["idle_cpu_pct"] = (c1 - c0) * 100 / (t1 - t0)
        out["rss_after_idle"] = rss_mib(op.pid)
        out["load_idle"] = loadavg()
        stop.set()
        report(out, args, log_path)  # before the cleanup, which can take minutes at 1000
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(op.pid, signal.SIGKILL)
        core.delete_namespace(ns)
        gone_by = time.monotonic() + 900
        while time.monotonic() < gone_by:
            try:
                core.read_namespace(ns)
                time.sleep(2)
            except client.exceptions.ApiException:
                break
        for name in nodes:
            with contextlib.suppress(client.exceptions.ApiException):
                core.delete_node(name)
        with contextlib.suppress(client.exceptions.ApiException):
            custom.delete_cluster_custom_object(
                "networking.k8s.io", "v1", "servicecidrs", "mf-bench"
            )

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
