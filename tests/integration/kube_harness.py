"""Drive the local kwok cluster from Python: build, start, stop, and wait on it.

The shell scripts in hack/cluster are the single implementation; this module only calls them,
so `make cluster-up` and the pytest fixtures start exactly the same cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack" / "cluster"

# Test clusters are named after the pytest process so parallel sessions never share one and a
# crashed session's leftovers can be recognised (and removed) by the next one.
TEST_CLUSTER_PREFIX = "mf-test-"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster could not be built, started or reached."""


def _tail(text: str, lines: int = 40) -> str:
    # kwokctl's JSON progress lines ("level":"INFO") only hide the error that matters.
    kept = [ln for ln in text.strip().splitlines() if '"level":"INFO"' not in ln]
    return "\n".join(kept[-lines:])


def _run_script(args: list[str], timeout: float, what: str) -> str:
    """Run a hack/cluster script; return stdout, raise ClusterError with its output on failure."""
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise ClusterError(
            f"{what} timed out after {timeout:.0f}s: {' '.join(args)}\n{_tail(out + err)}"
        ) from exc
    if proc.returncode != 0:
        raise ClusterError(
            f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )
    return proc.stdout


def bin_dir() -> pathlib.Path:
    """The binary cache directory for the pinned versions (may not be built yet)."""
    out = _run_script([str(HACK_DIR / "build"), "--print-bin-dir"], 60, "locating the binaries")
    return pathlib.Path(out.strip())


def is_built() -> bool:
    proc = subprocess.run(
        [str(HACK_DIR / "build"), "--check"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def build(timeout: float = 3 * 3600) -> str:
    """Build (or confirm cached) every cluster binary; returns the build's report."""
    proc_out = _run_script([str(HACK_DIR / "build")], timeout, "building the cluster binaries")
    return proc_out


@dataclasses.dataclass
class KubeCluster:
    """A reachable cluster: kubeconfig, tool binaries and an environment that uses both."""

    kubeconfig: pathlib.Path
    bin_dir: pathlib.Path
    env: dict[str, str]
    name: str | None = None  # None when the cluster was not started by us

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure (check=True) raise with its stderr."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed (exit {proc.returncode}):\n"
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def kubectl_json(self, *args: str) -> Any:
        """kubectl ... -o json, decoded."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        """kubectl apply a YAML/JSON string, one object, or a list of objects."""
        if isinstance(manifest, str):
            text = manifest
        else:
            items = manifest if isinstance(manifest, list) else [manifest]
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        self.kubectl("apply", "-n", namespace, "-f", "-", input=text)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes.client.ApiClient configured from this cluster's kubeconfig."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return kubernetes.client.ApiClient(configuration)


def _env_for(kubeconfig: pathlib.Path, bins: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)  # a stale test name would only mislead child processes
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{bins}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_cluster(name: str, timeout: float = 600) -> KubeCluster:
    """hack/cluster/up NAME; returns the running cluster (idempotent)."""
    out = _run_script([str(HACK_DIR / "up"), name], timeout, f"starting cluster {name!r}")
    match = re.search(r"^export KUBECONFIG=(.+)$", out, re.MULTILINE)
    if not match:
        raise ClusterError(f"hack/cluster/up printed no 'export KUBECONFIG=' line:\n{_tail(out)}")
    kubeconfig = pathlib.Path(match.group(1).strip())
    bins = bin_dir()
    return KubeCluster(
        kubeconfig=kubeconfig, bin_dir=bins, env=_env_for(kubeconfig, bins), name=name
    )


def stop_cluster(name: str, timeout: float = 180) -> None:
    _run_script([str(HACK_DIR / "down"), name], timeout, f"deleting cluster {name!r}")


def existing_cluster(kubeconfig: pathlib.Path) -> KubeCluster:
    """A cluster someone else runs (envtest's USE_EXISTING_CLUSTER): just check it answers."""
    if not kubeconfig.is_file():
        raise ClusterError(f"kubeconfig {kubeconfig} does not exist")
    bins = bin_dir()
    if not (bins / "kubectl").exists():
        found = shutil.which("kubectl")
        if not found:
            raise ClusterError("no kubectl: run 'make cluster-build' or put kubectl on PATH")
        bins = pathlib.Path(found).parent
    cluster = KubeCluster(kubeconfig=kubeconfig, bin_dir=bins, env=_env_for(kubeconfig, bins))
    cluster.kubectl("get", "--raw", "/readyz", timeout=30)
    return cluster


def test_cluster_name() -> str:
    return f"{TEST_CLUSTER_PREFIX}{os.getpid()}"


# pytest must not collect the helper above as a test.
test_cluster_name.__test__ = False  # type: ignore[attr-defined]


def remove_stale_test_clusters() -> list[str]:
    """Delete test clusters whose pytest process is gone (a killed run leaves them behind)."""
    kwokctl = bin_dir() / "kwokctl"
    if not kwokctl.exists():
        return []
    workdir = _run_script(
        ["bash", "-c", f"source {HACK_DIR / 'lib.sh'} && cluster_workdir_root"], 30, "lib.sh"
    ).strip()
    proc = subprocess.run(
        [str(kwokctl), "get", "clusters"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KWOK_WORKDIR": workdir},
    )
    removed = []
    for line in proc.stdout.split():
        if not line.startswith(TEST_CLUSTER_PREFIX):
            continue
        pid = line.removeprefix(TEST_CLUSTER_PREFIX)
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(ClusterError):
                stop_cluster(line)
                removed.append(line)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Waiting


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll probe() until it returns something truthy; fail with `what` and the last state."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            state = describe() if describe else repr(last)
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last state:\n{state}"
            )
        time.sleep(interval)


def unique_namespace(prefix: str) -> str:
    """A DNS-1123 namespace name from a test name, unique per call."""
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def namespace(cluster: KubeCluster, name: str, timeout: float = 90) -> Iterator[str]:
    """Create a namespace (ready for pods), yield it, delete it and wait until it is gone."""
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin refuses pods until the "default" account exists.
    wait_for(
        lambda: (
            cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
            == 0
        ),
        timeout=60,
        what=f"the default ServiceAccount in namespace {name}",
    )
    try:
        yield name
    finally:
        # The namespace controller waits 5s before it deletes anything; removing the workloads
        # first frees their GPUs at once (kwok deletes a terminating pod immediately).
        cluster.kubectl(
            "-n",
            name,
            "delete",
            "deployments,replicasets,statefulsets,jobs,pods",
            "--all",
            "--wait=false",
            check=False,
        )
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
        # Wait until its pods are gone, since a dying namespace's pods still hold GPUs. The
        # Namespace object itself lingers a few more seconds; nothing needs to wait for that.
        wait_for(
            lambda: not _pods_left(cluster, name),
            timeout=timeout,
            what=f"the pods of deleted namespace {name} to go",
            interval=0.5,
            describe=lambda: cluster.kubectl("-n", name, "get", "pods", check=False).stdout,
        )


def _pods_left(cluster: KubeCluster, namespace: str) -> bool:
    proc = cluster.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


# ---------------------------------------------------------------------------------------------
# Small readers used by the tests


def pods(cluster: KubeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    data = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", selector)
    items: list[dict[str, Any]] = data["items"]
    return items


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_ready(pod: dict[str, Any]) -> bool:
    cond = condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def pod_summary(cluster: KubeCluster, namespace: str) -> str:
    """A human-readable dump for failure messages: pods, where they run, and recent events."""
    pods_out = cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = cluster.kubectl(
        "-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False
    ).stdout
    return f"{pods_out}\nevents:\n{_tail(events, 25)}"


GPU_TOLERATION: dict[str, str] = {
    "key": "nvidia.com/gpu",
    "operator": "Exists",
    "effect": "NoSchedule",
}


def deployment_manifest(
    name: str,
    *,
    replicas: int = 1,
    limits: dict[str, str] | None = None,
    requests: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    affinity: dict[str, Any] | None = None,
    pod_annotations: dict[str, str] | None = None,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A minimal Deployment (kwok runs no container, so the image is never pulled)."""
    container: dict[str, Any] = {"name": "main", "image": "registry.invalid/modelfleet/sim:1"}
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {"containers": [container]}
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if affinity:
        pod_spec["affinity"] = affinity
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}, "annotations": pod_annotations or {}},
            "spec": pod_spec,
        },
    }
    if strategy:
        spec["strategy"] = strategy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def product_affinity(*products: str) -> dict[str, Any]:
    """Required node affinity on GPU Feature Discovery's nvidia.com/gpu.product label."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "nvidia.com/gpu.product",
                                "operator": "In",
                                "values": list(products),
                            }
                        ]
                    }
                ]
            }
        }
    }


def nodes_with(cluster: KubeCluster, resource: str) -> set[str]:
    """Names of nodes whose allocatable has a positive amount of `resource`."""
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    return {
        n["metadata"]["name"]
        for n in nodes
        if int(str(n["status"].get("allocatable", {}).get(resource, "0")) or 0) > 0
    }


def wait_scheduled(
    cluster: KubeCluster, namespace: str, app: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """Wait until `count` pods of app are bound to nodes; return all of app's pods."""

    def probe() -> list[dict[str, Any]] | None:
        found = pods(cluster, namespace, f"app={app}")
        bound = [p for p in found if p["spec"].get("nodeName")]
        return found if len(bound) >= count else None

    return wait_for(
        probe,
        timeout=timeout,
        what=f"{count} pod(s) of {app} to be scheduled",
        describe=lambda: pod_summary(cluster, namespace),
    )


def wait_ready(
    cluster: KubeCluster, namespace: str, app: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """Wait until `count` pods of app are Ready; return those pods."""

    def probe() -> list[dict[str, Any]] | None:
        ready = [p for p in pods(cluster, namespace, f"app={app}") if is_ready(p)]
        return ready if len(ready) >= count else None

    return wait_for(
        probe,
        timeout=timeout,
        what=f"{count} pod(s) of {app} to be Ready",
        describe=lambda: pod_summary(cluster, namespace),
    )
