"""The chart's RBAC is exactly enough: the operator, run on the host as the chart's
ServiceAccount, walks a ModelDeployment through create -> Ready -> update -> delete with no
`forbidden` anywhere; with one verb taken away it fails.

kwok's simulated nodes run no containers, so the operator pod the chart creates never really
runs. Instead the test takes the container's command line and environment from the Deployment
Helm created, and runs that command here with a kubeconfig holding a token for the chart's
ServiceAccount (from the TokenRequest API): the same identity and permissions the pod would
have, and the same flags.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_harness import KubeCluster, condition, wait_for
from operator_support import CRD, CRD_NAME, get_crd, wait_established
from test_helm_install import Helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"

pytestmark = pytest.mark.slow

READY_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def helm(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = kube_cluster.bin_dir / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"helm is not built at {binary}: run `make cluster-build`", pytrace=False)
    return Helm(kube_cluster, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def crd(kube_cluster: KubeCluster) -> Iterator[None]:
    """The CRD, installed with kubectl when absent (the releases here set crds.install=false:
    only one release can own it, and CRD installation is test_helm_install's subject)."""
    existed = get_crd(kube_cluster) is not None
    if not existed:
        kube_cluster.kubectl("create", "-f", str(CRD))
    wait_established(kube_cluster)
    yield
    if not existed:
        kube_cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", timeout=180)


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    deployment: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"]["containers"][0])


@pytest.fixture
def install(kube_cluster: KubeCluster, helm: Helm, crd: None, namespace: str) -> Iterator[Any]:
    """install(*set_args) -> Release, in the test's namespace; uninstalled afterwards."""
    releases: list[str] = []

    def _install(*set_args: str) -> Release:
        name = f"mf-{uuid.uuid4().hex[:6]}"
        releases.append(name)
        helm.install(name, namespace, "crds.install=false", *set_args)
        full = f"{name}-modelfleet"
        dep = kube_cluster.kubectl_json("-n", namespace, "get", "deployment", full)
        return Release(name, namespace, full, dep)

    yield _install
    for name in releases:
        helm.uninstall(name, namespace)


def sa_kubeconfig(cluster: KubeCluster, release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the release's ServiceAccount (TokenRequest API)."""
    token = cluster.kubectl(
        "-n", release.namespace, "create", "token", release.service_account, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout
    )
    server = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": server}],
                "users": [{"name": release.service_account, "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "local", "user": release.service_account}}
                ],
                "current-context": "sa",
            }
        )
    )
    # The identity really is the ServiceAccount, not the admin.
    who = cluster.kubectl("--kubeconfig", str(path), "auth", "whoami", "-o", "json", check=False)
    if who.returncode == 0:
        user = json.loads(who.stdout)["status"]["userInfo"]["username"]
        assert user == f"system:serviceaccount:{release.namespace}:{release.service_account}"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    cmd: list[str]

    def flag(self, name: str) -> str:
        return next(a.split("=", 1)[1] for a in self.cmd if a.startswith(f"--{name}="))

    def get(self, url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except OSError:
            return 0, ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """True while running; fails the test at once when the operator exited."""
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the operator exited ({self.proc.returncode}):\n"
                + "\n".join(self.output().splitlines()[-40:])
            )
        return True

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


def host_command(release: Release) -> tuple[list[str], dict[str, str]]:
    """The chart's container command and env, for a process on this host.

    Only the ports move to free ones (several operators may run on this host); the scope flags
    (--all-namespaces, or --namespace per watched namespace) are the chart's own.
    """
    c = release.container
    args: list[str] = []
    for arg in c["args"]:
        if arg.startswith("--liveness="):
            path = urllib.parse.urlsplit(arg.split("=", 1)[1]).path
            args.append(f"--liveness=http://127.0.0.1:{free_port()}{path}")
        elif arg.startswith("--metrics-port="):
            args.append(f"--metrics-port={free_port()}")
        else:
            args.append(arg)
    assert c["command"] == ["modelfleet-operator"]
    cmd = [sys.executable, "-m", "modelfleet_operator", *args]
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = release.namespace
    return cmd, env


def delete_model_deployments(cluster: KubeCluster, namespace: str) -> None:
    """Delete every ModelDeployment while the operator still runs (it holds a finalizer);
    strip finalizers of any it could not release, so the namespace can always go."""
    cluster.kubectl("-n", namespace, "delete", "mdep", "--all", "--wait=false", check=False)
    try:
        wait_for(
            lambda: not cluster.kubectl_json("-n", namespace, "get", "mdep")["items"],
            timeout=60,
            what="ModelDeployments to be deleted",
            interval=1,
        )
    except AssertionError:
        for md in cluster.kubectl_json("-n", namespace, "get", "mdep")["items"]:
            cluster.kubectl(
                "-n",
                namespace,
                "patch",
                "mdep",
                md["metadata"]["name"],
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
        raise


@pytest.fixture
def run_operator(kube_cluster: KubeCluster, tmp_path: Path, namespace: str) -> Iterator[Any]:
    started: list[OperatorProcess] = []

    def _run(release: Release) -> OperatorProcess:
        kubeconfig = sa_kubeconfig(kube_cluster, release, tmp_path / f"{release.name}.kubeconfig")
        cmd, chart_env = host_command(release)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update(chart_env)
        env["KUBECONFIG"] = str(kubeconfig)
        env["PYTHONPATH"] = str(REPO / "operator")
        log = tmp_path / f"{release.name}-operator.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )
        op = OperatorProcess(proc, log, cmd)
        started.append(op)
        return op

    yield _run
    try:
        if started:
            delete_model_deployments(kube_cluster, namespace)
    finally:
        for op in started:
            op.stop()


def model_deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "http://models.example/resnet.tar.gz", "format": "torchscript"},
            "gpu": {"count": 1},
            "replicas": replicas,
        },
    }


def get_md(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("-n", namespace, "get", "mdep", name, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def ready(md: dict[str, Any] | None) -> bool:
    cond = condition(md or {}, "Ready")
    return bool(cond and cond.get("status") == "True")


def forbidden_lines(log: str) -> list[str]:
    """RBAC refusals in the log. A 403 for a namespace being deleted (an earlier test's, seen
    by the cluster-scope operator) is the namespace lifecycle admission, not RBAC."""
    return [
        line
        for line in log.splitlines()
        if ("forbidden" in line.lower() or " 403" in line)
        and "because it is being terminated" not in line
    ]


def describe(cluster: KubeCluster, namespace: str, op: OperatorProcess) -> Any:
    def _describe() -> str:
        md = cluster.kubectl("-n", namespace, "get", "mdep", "-o", "yaml", check=False).stdout
        return f"{md}\n--- operator log (tail) ---\n" + "\n".join(op.output().splitlines()[-40:])

    return _describe


def walk_lifecycle(cluster: KubeCluster, namespace: str, op: OperatorProcess) -> None:
    name = "resnet"
    cluster.apply(model_deployment(name, replicas=1), namespace)
    what = describe(cluster, namespace, op)
    wait_for(
        lambda: op.alive() and ready(get_md(cluster, namespace, name)),
        timeout=READY_TIMEOUT,
        what="the ModelDeployment to become Ready",
        interval=1,
        describe=what,
    )
    for kind in ("deployment", "service", "poddisruptionbudget"):
        cluster.kubectl("-n", namespace, "get", kind, name)

    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "mdep",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"replicas": 2}}),
    )

    def updated() -> bool:
        md = get_md(cluster, namespace, name) or {}
        gen = md.get("metadata", {}).get("generation")
        return op.alive() and bool(
            md.get("status", {}).get("observedGeneration") == gen
            and ready(md)
            and md["status"].get("readyReplicas") == 2
        )

    wait_for(
        updated,
        timeout=READY_TIMEOUT,
        what="the update to roll out (2 ready replicas)",
        interval=1,
        describe=what,
    )
    dep = cluster.kubectl_json("-n", namespace, "get", "deployment", name)
    assert dep["spec"]["replicas"] == 2

    # Autoscaling on, then off: the HPA is created, then pruned (the delete verb).
    def observed() -> dict[str, Any] | None:
        md = get_md(cluster, namespace, name) or {}
        gen = md.get("metadata", {}).get("generation")
        return md if op.alive() and md.get("status", {}).get("observedGeneration") == gen else None

    def hpa_exists() -> bool:
        return cluster.kubectl("-n", namespace, "get", "hpa", name, check=False).returncode == 0

    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "mdep",
        name,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "autoscaling": {
                        "minReplicas": 2,
                        "maxReplicas": 3,
                        "metric": "cpu",
                        "target": 80,
                    }
                }
            }
        ),
    )
    wait_for(
        lambda: observed() and hpa_exists(),
        timeout=READY_TIMEOUT,
        what="the HorizontalPodAutoscaler to be created",
        interval=1,
        describe=what,
    )
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "mdep",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"autoscaling": None}}),
    )
    wait_for(
        lambda: observed() and not hpa_exists(),
        timeout=READY_TIMEOUT,
        what="the HorizontalPodAutoscaler to be pruned",
        interval=1,
        describe=what,
    )

    cluster.kubectl("-n", namespace, "delete", "mdep", name, "--wait=false")
    wait_for(
        lambda: get_md(cluster, namespace, name) is None,
        timeout=60,
        what="the ModelDeployment to be deleted (operator finalizers released)",
        interval=1,
        describe=what,
    )
    wait_for(
        lambda: (
            cluster.kubectl("-n", namespace, "get", "deployment", name, check=False).returncode != 0
        ),
        timeout=60,
        what="the serving Deployment to be garbage-collected",
        interval=1,
    )


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_operator_as_the_chart_service_account_needs_nothing_more(
    kube_cluster: KubeCluster, install: Any, run_operator: Any, namespace: str, scope: str
) -> None:
    release = install(f"operator.scope={scope}")
    op = run_operator(release)
    # The endpoints the chart points its liveness probe and metrics Service at are served.
    probe = release.container["livenessProbe"]["httpGet"]
    live = op.flag("liveness")
    assert urllib.parse.urlsplit(live).path == probe["path"]
    wait_for(
        lambda: op.alive() and op.get(live)[0] == 200,
        timeout=60,
        what=f"the operator's liveness endpoint {live}",
    )
    metrics = f"http://127.0.0.1:{op.flag('metrics-port')}/metrics"
    assert "modelfleet_" in wait_for(lambda: op.get(metrics)[1], timeout=30, what=metrics)
    # On failure the fixture deletes the ModelDeployment while the operator still runs.
    walk_lifecycle(kube_cluster, namespace, op)
    log = op.stop()
    denied = forbidden_lines(log)
    assert not denied, "the operator was refused something:\n" + "\n".join(denied[:20])


# (api group, resource, verb taken away): each is one the operator needs on the way to Ready.
REMOVALS = [
    ("apps", "deployments", "create"),  # server-side apply that creates needs create too
    ("modelfleet.io", "modeldeployments/status", "patch"),
    ("", "services", "patch"),
]


def without_verb(
    rules: list[dict[str, Any]], group: str, resource: str, verb: str
) -> list[dict[str, Any]]:
    out, removed = [], False
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            assert rule["apiGroups"] == [group] and rule["resources"] == [resource], rule
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:  # a rule with no verbs is invalid: drop it instead
                out.append({**rule, "verbs": verbs})
            removed = True
        else:
            out.append(rule)
    assert removed, f"no rule grants {verb} on {group}/{resource}"
    return out


@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    REMOVALS,
    ids=[f"{r}-{v}".replace("/", "_") for _, r, v in REMOVALS],
)
def test_a_verb_removed_from_the_cluster_role_breaks_the_operator(  # noqa: PLR0917
    kube_cluster: KubeCluster,
    install: Any,
    run_operator: Any,
    namespace: str,
    group: str,
    resource: str,
    verb: str,
) -> None:
    release = install()
    role = kube_cluster.kubectl_json("get", "clusterrole", release.service_account)
    rules = without_verb(role["rules"], group, resource, verb)
    kube_cluster.kubectl(
        "patch",
        "clusterrole",
        release.service_account,
        "--type=merge",
        "-p",
        json.dumps({"rules": rules}),
    )
    as_sa = f"--as=system:serviceaccount:{release.namespace}:{release.service_account}"
    base, _, subresource = resource.partition("/")
    res = f"{base}.{group}" if group else base
    sub = ["--subresource", subresource] if subresource else []
    wait_for(
        lambda: (
            kube_cluster.kubectl(
                "auth", "can-i", verb, res, *sub, as_sa, "-n", namespace, check=False
            ).stdout.strip()
            == "no"
        ),
        timeout=30,
        what=f"RBAC to refuse {verb} {resource}",
    )

    op = run_operator(release)
    kube_cluster.apply(model_deployment("resnet"), namespace)
    # The refusal shows in the operator's log, or (what a user sees) in the ModelDeployment's
    # conditions: the operator reports an API error there instead of crash-looping.
    refusal = f'cannot {verb} resource "{base}"'

    def refused() -> list[str]:
        md = get_md(kube_cluster, namespace, "resnet") or {}
        messages = [c.get("message", "") for c in md.get("status", {}).get("conditions", [])]
        return [m for m in messages if refusal in m] + [
            line for line in forbidden_lines(op.output()) if base in line
        ]

    try:
        seen = wait_for(
            lambda: op.alive() and refused(),
            timeout=READY_TIMEOUT,
            what=f"the operator to be refused {verb} on {resource}",
            interval=1,
            describe=describe(kube_cluster, namespace, op),
        )
        assert any("forbidden" in line.lower() or refusal in line for line in seen), seen
        # It must not reach Ready regardless.
        time.sleep(5)
        assert not ready(get_md(kube_cluster, namespace, "resnet"))
    finally:
        # Let the operator release its finalizer so the namespace can go: put the rule back.
        kube_cluster.kubectl(
            "patch",
            "clusterrole",
            release.service_account,
            "--type=merge",
            "-p",
            json.dumps({"rules": role["rules"]}),
        )
        kube_cluster.kubectl(
            "-n", namespace, "delete", "mdep", "resnet", "--wait=false", "--ignore-not-found"
        )
        wait_for(
            lambda: get_md(kube_cluster, namespace, "resnet") is None,
            timeout=90,
            what="the ModelDeployment to be deleted",
            interval=1,
            describe=describe(kube_cluster, namespace, op),
        )
        op.stop()
