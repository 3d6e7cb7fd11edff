"""Apply -> Ready through a node scale-up, by phase, with a real node autoscaler (Karpenter's
kwok provider) on a live local cluster; a plain Deployment of the same pod in the same run is
the baseline (what Karpenter and the scheduler take without the operator).

    hack/cluster/up bench-nodes
    KUBECONFIG=$(hack/cluster/lib.sh ...)/kubeconfig .venv/bin/python bench/node_autoscale.py \
        [--rounds 3]

Starts Karpenter (hack/karpenter/up) and its own operator (all namespaces: use a cluster no
other operator serves). Each round, in a fresh namespace:

- baseline: a Deployment whose one pod asks 8 H100s (no node has them free once the cluster's
  H100 nodes are each given a 1-GPU pod): apply -> new Node Ready -> pod Ready; deleted ->
  the node gone;
- operator: a ModelDeployment asking the same: apply -> status WaitingForNode -> new Node
  Ready -> Ready=True, the replica's phases from the operator's cold-start line
  (node wait, scheduling, fetch, image, model load); deleted -> the node gone.

Prints one table with the load average beside each round. Asserts nothing on timing. The node
wait is mostly the KWOKNodeClass's nodeRegistrationDelay (15 s, hack/karpenter/nodepools.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import benchutil
from benchutil import free_port, loadavg, pct

ROOT = pathlib.Path(__file__).resolve().parent.parent
H100 = "NVIDIA-H100-80GB-HBM3"
POOL_LABEL = "karpenter.sh/nodepool"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PHASES_RE = re.compile(r"(node|scheduling|fetch|image|model load|total) (\d+)s")


def kubectl(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def get(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json"))


def wait(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    return benchutil.wait(what, probe, timeout, interval)  # kubectl polls: every 0.2 s


def karpenter_nodes() -> list[dict[str, Any]]:
    return [n for n in get("nodes")["items"] if POOL_LABEL in n["metadata"].get("labels", {})]


def ready_node() -> str | None:
    for n in karpenter_nodes():
        for c in n.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                return str(n["metadata"]["name"])
    return None


def pod_spec(gpus: str) -> dict[str, Any]:
    return {
        "nodeSelector": {"nvidia.com/gpu.product": H100},
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "c",
                "image": "busybox",
                "resources": {
                    "limits": {"nvidia.com/gpu": gpus},
                    "requests": {"nvidia.com/gpu": gpus, "cpu": "1", "memory": "1Gi"},
                },
            }
        ],
    }


def deployment(name: str, gpus: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(gpus)},
        },
    }


def model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "annotations": {"modelfleet.io/simulated-load-seconds": "1"}},
        "spec": {
            "model": {"uri": f"https://models.example.com/{name}.tar.gz", "version": "1"},
            "gpu": {"count": 8, "products": [H100]},
            "runtime": {"resources": {"cpu": "1", "memory": "2Gi"}},
            "replicas": 1,
        },
    }


def apply(ns: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "--server-side", "-f", "-", stdin=json.dumps(body))


def pods_ready(ns: str, selector: str) -> bool:
    items = get("pods", "-n", ns, "-l", selector)["items"]
    return bool(items) and all(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in items
    )


def md_ready(ns: str, name: str, reason: str | None = None) -> bool:
    md = get("mdep", "-n", ns, name)
    for c in md.get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["reason"] == reason if reason else c["status"] == "True"
    return False


def node_gone(name: str) -> bool:
    return all(n["metadata"]["name"] != name for n in karpenter_nodes())


def baseline_round(ns: str) -> dict[str, float]:
    t0 = time.monotonic()
    apply(ns, deployment("burst", "8", 1))
    node = wait("Karpenter's node", ready_node, 180)
    node_s = time.monotonic() - t0
    wait("the pod Ready", lambda: pods_ready(ns, "app=burst"), 120)
    ready_s = time.monotonic() - t0
    kubectl("-n", ns, "delete", "deployment", "burst", "--wait=true")
    t1 = time.monotonic()
    wait("the empty node removed", lambda: node_gone(node), 180, 0.5)
    return {"node": node_s, "ready": ready_s, "gone": time.monotonic() - t1}


def operator_round(ns: str, log: pathlib.Path) -> dict[str, float]:
    name = f"llm-{uuid.uuid4().hex[:5]}"
    t0 = time.monotonic()
    apply(ns, model(name))
    wait("WaitingForNode", lambda: md_ready(ns, name, "WaitingForNode"), 120)
    waiting_s = time.monotonic() - t0
    node = wait("Karpenter's node", ready_node, 180)
    node_s = time.monotonic() - t0
    wait("Ready=True", lambda: md_ready(ns, name), 180)
    ready_s = time.monotonic() - t0
    line = wait(
        "the cold-start line",
        lambda: next(
            (
                ln
                for ln in log.read_text().splitlines()
                if f"/{name}: pod " in ln and " ready: " in ln
            ),
            None,
        ),
        30,
    )
    phases = {f"phase {k}": float(v) for k, v in PHASES_RE.findall(line.split(" ready: ", 1)[1])}
    kubectl("-n", ns, "delete", "mdep", name, "--wait=true")
    t1 = time.monotonic()
    wait("the empty node removed", lambda: node_gone(node), 180, 0.5)
    return {"waiting": waiting_s, "node": node_s, "ready": ready_s,
            "gone": time.monotonic() - t1, **phases}  # fmt: skip


@contextlib.contextmanager
def operator(kubeconfig: str) -> Iterator[pathlib.Path]:
    health = free_port()
    log_path = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    with log_path.open("wb") as log:
        op = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_operator", "--all-namespaces", "--liveness",
             f"http://127.0.0.1:{health}/healthz", "--metrics-port", str(free_port()),
             "--kubeconfig", kubeconfig],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT,
        )  # fmt: skip
    try:
        wait("the operator", lambda: "Initial authentication has finished" in log_path.read_text(),
             60, 0.5)  # fmt: skip
        yield log_path
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        op.wait(30)
        print(f"operator log: {log_path}")


def fill_h100_nodes(ns: str) -> None:
    """One 1-GPU pod on each of the cluster's own H100 nodes: none has 8 free any more."""
    own = [
        n for n in get("nodes")["items"]
        if n["metadata"].get("labels", {}).get("nvidia.com/gpu.product") == H100
        and POOL_LABEL not in n["metadata"].get("labels", {})
    ]  # fmt: skip
    body = deployment("filler", "1", len(own))
    body["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
         "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "filler"}}}
    ]  # fmt: skip
    apply(ns, body)
    wait("the filler pods", lambda: pods_ready(ns, "app=filler"), 120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        ap.error("KUBECONFIG must point at a local cluster (hack/cluster/up NAME)")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    subprocess.run([str(ROOT / "hack" / "karpenter" / "up"), kubeconfig], check=True)
    ns = f"bench-nodes-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", ns)
    rows: list[tuple[str, dict[str, float], str]] = []
    try:
        fill_h100_nodes(ns)
        with operator(kubeconfig) as log:
            for i in range(args.rounds):
                rows.append((f"deployment {i + 1}", baseline_round(ns), loadavg()))
                rows.append((f"modeldeployment {i + 1}", operator_round(ns, log), loadavg()))
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")
        subprocess.run([str(ROOT / "hack" / "karpenter" / "down"), kubeconfig], check=False)
    cols = ["waiting", "node", "ready", "gone", "phase node", "phase scheduling",
            "phase model load", "phase total"]  # fmt: skip
    print("\nseconds from apply (gone: from delete); phases of the replica on the new node")
    print("| round | apply->WaitingForNode | apply->Node Ready | apply->Ready | delete->node gone"
          " | node wait | scheduling | model load | replica total | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r, load in rows:
        cells = [f"{r[c]:.1f}" if c in r else "-" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + f" | {load} |")
    for kind in ("deployment", "modeldeployment"):
        ready = [r["ready"] for n, r, _ in rows if n.startswith(kind + " ")]
        print(f"{kind}: apply->Ready p50 {pct(ready, 0.5):.1f} s, max {max(ready):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
