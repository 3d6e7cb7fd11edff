"""Helpers for the operator's integration tests: install the CRD, run the operator as a real
process against the test cluster, build ModelDeployment manifests, wait on their status."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from kube_harness import KubeCluster, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "modelfleet.io_modeldeployments.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"
TEST_IMAGE = "registry.invalid/modelfleet-runtime:test"


CRD_NAME = "modeldeployments.modelfleet.io"


def get_crd(cluster: KubeCluster) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "crd", CRD_NAME, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def wait_established(cluster: KubeCluster) -> dict[str, Any]:
    """The live CRD once Established. Polled rather than `kubectl wait`, which errors out
    instead of waiting while a new CRD has no status.conditions yet."""

    def established() -> dict[str, Any] | None:
        crd = get_crd(cluster)
        conditions = (crd or {}).get("status", {}).get("conditions") or []
        ok = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
        return crd if ok else None

    return wait_for(
        established,
        timeout=60,
        what=f"CRD {CRD_NAME} to be Established",
        describe=lambda: json.dumps((get_crd(cluster) or {}).get("status"), indent=1),
    )


def install_crd(cluster: KubeCluster) -> None:
    # An earlier test (a helm uninstall) may have left the CRD terminating: applying over it
    # would be lost when it goes.
    wait_for(
        lambda: not (crd := get_crd(cluster)) or not crd["metadata"].get("deletionTimestamp"),
        timeout=120,
        what=f"the terminating CRD {CRD_NAME} to be gone",
    )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(cluster)
    # Discovery caches catch up a moment after Established.
    wait_for(
        lambda: cluster.kubectl("get", "mdep", "-A", check=False).returncode == 0,
        timeout=30,
        what="mdep to be served",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`python -m modelfleet_operator` against the test cluster, logs in a file."""

    def __init__(
        self,
        cluster: KubeCluster,
        log_path: pathlib.Path,
        resync_seconds: float = 20,
        *,
        debug: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.extra_args = tuple(extra_args)
        self.cluster = cluster
        self.log_path = log_path
        self.resync = resync_seconds
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> OperatorProcess:
        self.health_port, self.metrics_port = free_port(), free_port()
        env = dict(self.cluster.env)
        env["MODELFLEET_RUNTIME_IMAGE"] = TEST_IMAGE
        env["PYTHONUNBUFFERED"] = "1"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet_operator",
                "--all-namespaces",
                "--liveness",
                f"http://127.0.0.1:{self.health_port}/healthz",
                "--metrics-port",
                str(self.metrics_port),
                "--resync-seconds",
                str(self.resync),
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                *(["--debug"] if self.debug else []),
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        wait_for(
            self._healthy,
            timeout=60,
            what="the operator's liveness endpoint",
            describe=self.log_tail,
        )
        return self

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited early:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@contextlib.contextmanager
def running_operator(
    cluster: KubeCluster,
    log_path: pathlib.Path,
    resync_seconds: float,
    *,
    start: bool = True,
    debug: bool = False,
) -> Iterator[OperatorProcess]:
    """The CRD installed and the operator (started unless ``start`` is False); stopped
    after, with its log's tail printed."""
    install_crd(cluster)
    proc = OperatorProcess(cluster, log_path, resync_seconds, debug=debug)
    try:
        yield proc.start() if start else proc
    finally:
        proc.stop()
        print(f"\noperator log: {log_path}\n{proc.log_tail(30)}")


def manifest(
    name: str, spec: dict[str, Any] | None = None, *, load_seconds: float = 1, **top: Any
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": f"https://models.example.com/{name}.tar.gz", "version": "1"},
        "gpu": {"count": 1, "products": [H100]},
        "replicas": 1,
        "runtime": {"resources": {"cpu": "1", "memory": "2Gi"}},
    }
    for key, value in (spec or {}).items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = {**base[key], **value}
            base[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            base[key] = copy.deepcopy(value)
    out = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "annotations": {"modelfleet.io/simulated-load-seconds": str(load_seconds)},
        },
        "spec": base,
    }
    out.update(top)
    return out


def apply_as_user(cluster: KubeCluster, namespace: str, body: dict[str, Any]) -> None:
    """Server-side apply ``body`` as a user would (field manager "test"), not as the operator."""
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--server-side",
        "--field-manager=test",
        "-f",
        "-",
        input=json.dumps(body),
    )


def get(cluster: KubeCluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def describe(cluster: KubeCluster, namespace: str) -> str:
    out = cluster.kubectl(
        "-n", namespace, "get", "mdep,deploy,rs,pods,svc,pdb,hpa", "-o", "wide", check=False
    )
    md = cluster.kubectl("-n", namespace, "get", "mdep", "-o", "yaml", check=False)
    return out.stdout + out.stderr + "\n" + md.stdout[-6000:]


def wait_condition(  # noqa: PLR0917 (reads like the condition it waits for)
    cluster: KubeCluster,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    *,
    timeout: float = 90,
    generation_current: bool = True,
) -> dict[str, Any]:
    """Wait until the ModelDeployment's condition matches; returns the object."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "mdep", name)
        c = cond(obj, type_)
        if not obj or c.get("status") != status or (reason and c.get("reason") != reason):
            return None
        if (
            generation_current
            and obj["status"].get("observedGeneration") != obj["metadata"]["generation"]
        ):
            return None
        return obj

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.5,
        what=f"mdep {name} {type_}={status}" + (f" ({reason})" if reason else ""),
        describe=lambda: describe(cluster, namespace),
    )


def pods_of(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    data = cluster.kubectl_json(
        "-n", namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={name}"
    )
    return [p for p in data["items"] if not p["metadata"].get("deletionTimestamp")]


def node_product(cluster: KubeCluster, node: str) -> str:
    data = cluster.kubectl_json("get", "node", node)
    return str(data["metadata"]["labels"].get("nvidia.com/gpu.product", ""))


def sleep_briefly(seconds: float = 1.0) -> None:
    time.sleep(seconds)
