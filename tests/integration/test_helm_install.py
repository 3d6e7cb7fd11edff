"""`helm install` of charts/modelfleet on the real local control plane, with the helm binary the
cluster script builds: what it creates, that the operator pod passes the "restricted" Pod
Security level, that `helm upgrade` really upgrades the CRD, and that uninstall keeps user data.

The CRD is cluster-wide and other test modules may install it with kubectl; `crd_guard` adopts
an existing one into each release (Helm's documented adoption labels) and puts the cluster back
the way it found it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_harness import KubeCluster, condition, wait_for
from operator_support import CRD, CRD_NAME, get_crd, wait_established

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"

pytestmark = pytest.mark.slow


@dataclass
class Helm:
    cluster: KubeCluster
    home: Path

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **self.cluster.env,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        cmd = [
            str(self.cluster.bin_dir / "helm"),
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            *args,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def install(
        self,
        release: str,
        namespace: str,
        *set_args: str,
        chart: Path = CHART,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["install", release, str(chart), "-n", namespace, *extra]
        for s in set_args:
            args += ["--set", s]
        return self.run(*args)

    def uninstall(self, release: str, namespace: str) -> None:
        self.run("uninstall", release, "-n", namespace, "--wait", "--ignore-not-found")


@pytest.fixture(scope="module")
def helm(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = kube_cluster.bin_dir / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"helm is not built at {binary}: run `make cluster-build`", pytrace=False)
    return Helm(kube_cluster, tmp_path_factory.mktemp("helm-home"))


def release_name() -> str:
    # Unique per test: ClusterRoles are named after the release and outlive a failed test.
    return f"mf-{uuid.uuid4().hex[:6]}"


def adopt_crd(cluster: KubeCluster, release: str, namespace: str) -> None:
    """Let `helm install` take over a CRD created with kubectl (Helm's adoption metadata)."""
    if get_crd(cluster) is None:
        return
    cluster.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        CRD_NAME,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )


@pytest.fixture
def crd_guard(kube_cluster: KubeCluster) -> Iterator[None]:
    """Restore the CRD afterwards: deleted if it was absent, the generated file if present."""
    existed = get_crd(kube_cluster) is not None
    yield
    if existed:
        # PUT the generated CRD back: drops Helm's ownership metadata and any test change.
        kube_cluster.kubectl("replace", "-f", str(CRD))
    else:
        kube_cluster.kubectl(
            "delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=180
        )


def notes_manifest(notes: str) -> dict[str, Any]:
    """The ModelDeployment that NOTES.txt tells the user to apply (its heredoc)."""
    body = notes.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    doc: dict[str, Any] = yaml.safe_load(body)
    return doc


def docs_manifest() -> dict[str, Any]:
    """The `# resnet.yaml` example in docs/install.md."""
    text = (REPO / "docs" / "install.md").read_text()
    body = text.split("```yaml\n# resnet.yaml\n", 1)[1].split("```", 1)[0]
    doc: dict[str, Any] = yaml.safe_load(body)
    return doc


def sample_md(name: str = "resnet") -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "http://models.example/resnet.tar.gz", "format": "torchscript"},
            "replicas": 1,
        },
    }


# --------------------------------------------------------------------------------------------


def can_i(resource: str) -> list[str]:
    """`kubectl auth can-i` arguments for "kind" or "kind/subresource" (a bare "kind/status"
    would ask about an object *named* status)."""
    kind, _, sub = resource.partition("/")
    return [kind, f"--subresource={sub}"] if sub else [kind]


def test_install_creates_crd_rbac_and_a_restricted_operator_deployment(
    kube_cluster: KubeCluster, helm: Helm, namespace: str, crd_guard: None
) -> None:
    release = release_name()
    # The operator pod must pass the "restricted" Pod Security level, enforced by admission.
    kube_cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    adopt_crd(kube_cluster, release, namespace)
    try:
        out = helm.install(release, namespace).stdout
        assert "STATUS: deployed" in out
        # NOTES.txt: what to do next.
        assert f"rollout status deployment/{release}-modelfleet" in out
        assert "kubectl apply" in out

        crd = wait_established(kube_cluster)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        want = yaml.safe_load(CRD.read_text())
        assert crd["spec"]["versions"] == want["spec"]["versions"]

        # kubectl teaches the API from the installed CRD.
        def explain_gpu() -> str | None:
            p = kube_cluster.kubectl("explain", "modeldeployment.spec.gpu", check=False)
            return p.stdout if p.returncode == 0 else None

        explain = wait_for(explain_gpu, timeout=60, what="kubectl explain modeldeployment.spec.gpu")
        assert "DESCRIPTION" in explain
        # The manifests the NOTES and docs/install.md tell a user to apply are accepted by
        # the API as written (schema and CEL rules; server-side dry run creates nothing).
        for doc in (notes_manifest(out), docs_manifest()):
            proc = kube_cluster.kubectl(
                "apply",
                "-n",
                namespace,
                "--dry-run=server",
                "-f",
                "-",
                input=json.dumps(doc),
                check=False,
            )
            assert proc.returncode == 0, proc.stderr

        name = f"{release}-modelfleet"
        sa = kube_cluster.kubectl_json("-n", namespace, "get", "serviceaccount", name)
        assert sa["metadata"]["name"] == name
        role = kube_cluster.kubectl_json("get", "clusterrole", name)
        verbs = {v for rule in role["rules"] for v in rule["verbs"]}
        assert "*" not in verbs
        binding = kube_cluster.kubectl_json("get", "clusterrolebinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        ]
        # The binding really gives the ServiceAccount what it needs and no more: Secrets are
        # read-only (apiKeys.readSecrets, the default: the API key Secrets' ids and revision).
        as_sa = f"--as=system:serviceaccount:{namespace}:{name}"
        for verb, resource in [
            ("watch", "modeldeployments.modelfleet.io"),
            ("watch", "secrets"),
            ("patch", "pods"),
            ("patch", "modeldeployments.modelfleet.io/status"),
            ("create", "deployments.apps"),
            ("delete", "services"),
            ("list", "nodes"),
            ("watch", "customresourcedefinitions"),
        ]:
            got = kube_cluster.kubectl(
                "auth", "can-i", verb, *can_i(resource), as_sa, "-A", check=False
            )
            assert got.stdout.strip() == "yes", (verb, resource, got.stdout, got.stderr)
        for verb, resource in [
            # the operator never writes a user's spec: status only
            ("patch", "modeldeployments.modelfleet.io"),
            ("create", "secrets"),
            ("update", "secrets"),
            ("delete", "secrets"),
            ("delete", "pods"),
            ("create", "clusterroles"),
            ("update", "deployments.apps"),
        ]:
            got = kube_cluster.kubectl(
                "auth", "can-i", verb, *can_i(resource), as_sa, "-A", check=False
            )
            assert got.stdout.strip() == "no", (verb, resource, got.stdout)

        dep = kube_cluster.kubectl_json("-n", namespace, "get", "deployment", name)
        assert dep["spec"]["replicas"] == 1
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert "--all-namespaces" in container["args"]
        kube_cluster.kubectl_json("-n", namespace, "get", "service", f"{name}-metrics")

        # Admission accepted the pod under enforce=restricted and the scheduler placed it (a
        # kwok node runs no container, so "Ready" would prove nothing more about the chart).
        def scheduled() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = kube_cluster.kubectl_json(
                "-n",
                namespace,
                "get",
                "pods",
                "-l",
                f"app.kubernetes.io/instance={release}",
            )["items"]
            ok = [p for p in items if (condition(p, "PodScheduled") or {}).get("status") == "True"]
            return ok if len(ok) == 2 else []

        pods = wait_for(
            scheduled,
            timeout=60,
            what="the operator and activator pods to be admitted and scheduled",
            describe=lambda: (
                kube_cluster.kubectl("-n", namespace, "get", "events", check=False).stdout
            ),
        )
        components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
        assert components == ["activator", "operator"]
        # No GPU toleration: neither ever takes a GPU node.
        for pod in pods:
            node = kube_cluster.kubectl_json("get", "node", pod["spec"]["nodeName"])
            assert "nvidia.com/gpu" not in node["status"].get("allocatable", {})
    finally:
        helm.uninstall(release, namespace)


def test_bad_values_fail_the_install_naming_the_key(
    kube_cluster: KubeCluster, helm: Helm, namespace: str
) -> None:
    release = release_name()
    proc = helm.run(
        "install", release, str(CHART), "-n", namespace, "--set", "operator.replicas=2", check=False
    )
    assert proc.returncode != 0
    assert "additional properties 'replicas' not allowed" in proc.stderr
    assert helm.run("list", "-n", namespace, "-q").stdout.strip() == ""
    assert not kube_cluster.kubectl_json("-n", namespace, "get", "deployments")["items"]


def changed_chart(tmp: Path) -> Path:
    """A copy of the chart whose CRD gained an optional spec field and a printer column."""
    chart = tmp / "modelfleet"
    shutil.copytree(CHART, chart)
    crd_path = chart / "files" / "crds" / CRD.name
    crd = yaml.safe_load(crd_path.read_text())
    version = crd["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"] = {
        "type": "string",
        "description": "Added by the CRD upgrade test.",
    }
    version.setdefault("additionalPrinterColumns", []).append(
        {"name": "Probe", "type": "string", "jsonPath": ".spec.upgradeProbe"}
    )
    crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1-test"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def spec_props(crd: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]["properties"]
    return props


def test_helm_upgrade_updates_the_crd_and_uninstall_keeps_it(
    kube_cluster: KubeCluster, helm: Helm, namespace: str, crd_guard: None, tmp_path: Path
) -> None:
    release = release_name()
    adopt_crd(kube_cluster, release, namespace)
    # Operator off: this test is about the CRD, and nothing should reconcile the sample.
    helm.install(release, namespace, "operator.replicaCount=0")
    try:
        before = wait_established(kube_cluster)
        assert "upgradeProbe" not in spec_props(before)
        kube_cluster.apply(sample_md(), namespace)

        helm.run(
            "upgrade", release, str(changed_chart(tmp_path)), "-n", namespace, "--reuse-values"
        )

        def upgraded() -> dict[str, Any] | None:
            live = get_crd(kube_cluster)
            return live if live and "upgradeProbe" in spec_props(live) else None

        after = wait_for(
            upgraded,
            timeout=30,
            what="the live CRD to gain spec.upgradeProbe",
            describe=lambda: json.dumps(get_crd(kube_cluster), indent=1)[:3000],
        )
        columns = [c["name"] for c in after["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert "Probe" in columns
        # The new field is served: the API server keeps it instead of pruning it.
        kube_cluster.kubectl(
            "-n",
            namespace,
            "patch",
            "mdep",
            "resnet",
            "--type=merge",
            "-p",
            '{"spec": {"upgradeProbe": "hello"}}',
        )
        md = kube_cluster.kubectl_json("-n", namespace, "get", "mdep", "resnet")
        assert md["spec"]["upgradeProbe"] == "hello"

        # And back: a downgrade to the original chart removes the field from the schema.
        helm.run("upgrade", release, str(CHART), "-n", namespace, "--reuse-values")
        wait_for(
            lambda: "upgradeProbe" not in spec_props(get_crd(kube_cluster) or before),
            timeout=30,
            what="the live CRD to lose spec.upgradeProbe",
        )
        # Handing the CRD over (crds.install=false) must not delete it either: keep applies
        # to resources an upgrade drops, too.
        helm.run(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            "crds.install=false",
        )
        assert get_crd(kube_cluster) is not None
    finally:
        helm.uninstall(release, namespace)

    # helm.sh/resource-policy: keep -> the CRD and the user's ModelDeployment survive uninstall.
    assert get_crd(kube_cluster) is not None
    assert kube_cluster.kubectl_json("-n", namespace, "get", "mdep", "resnet")
    kube_cluster.kubectl("-n", namespace, "delete", "mdep", "resnet", "--wait=false")
    # The rest of the release is gone.
    assert (
        kube_cluster.kubectl("get", "clusterrole", f"{release}-modelfleet", check=False).returncode
        != 0
    )


def test_namespace_scope_installs_roles_in_the_watched_namespace_only(
    kube_cluster: KubeCluster, helm: Helm, namespace: str, crd_guard: None
) -> None:
    release = release_name()
    adopt_crd(kube_cluster, release, namespace)
    watched = f"{namespace}-w"
    kube_cluster.kubectl("create", "namespace", watched)
    try:
        helm.install(
            release,
            namespace,
            "operator.scope=namespace",
            f"operator.watchNamespaces={{{watched}}}",
            # with the activator on, the release namespace is watched too (its endpoints
            # are there; test_chart_render covers that): here, exactly the one asked for
            "activator.enabled=false",
        )
        name = f"{release}-modelfleet"
        as_sa = f"--as=system:serviceaccount:{namespace}:{name}"

        def can(verb: str, resource: str, ns: str | None) -> str:
            where = ["-n", ns] if ns else []
            return kube_cluster.kubectl(
                "auth", "can-i", verb, *can_i(resource), as_sa, *where, check=False
            ).stdout.strip()

        assert can("watch", "modeldeployments.modelfleet.io", watched) == "yes"
        assert can("patch", "modeldeployments.modelfleet.io/status", watched) == "yes"
        assert can("create", "deployments.apps", watched) == "yes"
        assert can("watch", "modeldeployments.modelfleet.io", "default") == "no"
        assert can("patch", "modeldeployments.modelfleet.io/status", "default") == "no"
        assert can("create", "deployments.apps", namespace) == "no"
        assert can("list", "nodes", None) == "yes"
        assert can("watch", "customresourcedefinitions", None) == "yes"
        dep = kube_cluster.kubectl_json("-n", namespace, "get", "deployment", name)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={watched}" in args and "--all-namespaces" not in args
    finally:
        helm.uninstall(release, namespace)
        kube_cluster.kubectl("delete", "namespace", watched, "--wait=false", "--ignore-not-found")
