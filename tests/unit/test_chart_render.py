"""The Helm chart, rendered by the real helm binary: lint, golden output, CRD sync, RBAC shape.

helm comes from the local cluster's binary cache (`hack/cluster/build` builds it); when it is not
built these tests fail with the command to run, never skip. MODELFLEET_HELM overrides the path.
Golden files live in tests/golden/chart/; regenerate them with `UPDATE_GOLDEN=1 pytest ...` and
review the diff.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"
GOLDEN = REPO / "tests" / "golden" / "chart"
KUBE_VERSION = "v1.36.3"  # the local cluster's version; keeps `helm template` deterministic


def find_helm() -> Path:
    override = os.environ.get("MODELFLEET_HELM")
    if override:
        return Path(override)
    out = subprocess.run(
        [str(REPO / "hack" / "cluster" / "build"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    helm = Path(out.stdout.strip()) / "helm"
    if not os.access(helm, os.X_OK):
        pytest.fail(
            f"helm is not built at {helm}: run `make cluster-build` (hack/cluster/build) first, "
            "or point MODELFLEET_HELM at a helm v3 binary",
            pytrace=False,
        )
    return helm


@pytest.fixture(scope="session")
def helm() -> Path:
    return find_helm()


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # An empty HOME-independent config keeps a developer's repos/plugins out of the result.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/modelfleet-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/modelfleet-helm/config",
        "HELM_DATA_HOME": "/tmp/modelfleet-helm/data",
    }
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template(
    helm: Path,
    *set_args: str,
    chart: Path = CHART,
    release: str = "modelfleet",
    namespace: str = "modelfleet-system",
) -> list[dict[str, Any]]:
    args = [
        "template",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]
    for s in set_args:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def watch_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles that grant the watched namespaces (not the leader-election one)."""
    return [
        r
        for r in by_kind(docs, "Role")
        if not r["metadata"]["name"].endswith("-leader-election") and not is_activator(r)
    ]


def is_activator(doc: dict[str, Any]) -> bool:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/component") == "activator"


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The operator's one object of ``kind`` (the activator's are looked at apart)."""
    found = [d for d in by_kind(docs, kind) if not is_activator(d)]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- lint -------------------------------------------------------------------------------------

LINT_CASES = {
    "defaults": [],
    "namespace-scope": ["operator.scope=namespace", "operator.watchNamespaces={ml,ml-staging}"],
    "servicemonitor": ["metrics.serviceMonitor.enabled=true"],
    "no-crds-no-rbac": [
        "crds.install=false",
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
    ],
}


@pytest.mark.parametrize("case", sorted(LINT_CASES))
def test_helm_lint_strict_is_clean(helm: Path, case: str) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for s in LINT_CASES[case]:
        args += ["--set", s]
    proc = run_helm(helm, *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# --- golden output ----------------------------------------------------------------------------

GOLDEN_CASES: dict[str, list[str]] = {
    "default": [],
    "namespace-scope": ["operator.scope=namespace", "operator.watchNamespaces={ml,ml-staging}"],
    "pinned-and-monitored": [
        "operator.image.digest=sha256:" + "a" * 64,
        "runtime.image.tag=0.1.0-cpu",
        "runtime.image.pullPolicy=Always",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "operator.logLevel=debug",
        "operator.logFormat=json",
    ],
}


def render_for_golden(helm: Path, set_args: list[str]) -> str:
    # The CRD is left out: it is generated from operator code and checked against crds/ below,
    # so an API change does not churn these files.
    docs = [d for d in template(helm, *set_args) if d["kind"] != "CustomResourceDefinition"]
    return "".join(
        "---\n" + yaml.safe_dump(d, sort_keys=True, default_flow_style=False) for d in docs
    )


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_template_matches_golden(helm: Path, case: str) -> None:
    got = render_for_golden(helm, GOLDEN_CASES[case])
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    want = path.read_text()
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                got.splitlines(keepends=True),
                fromfile=str(path.relative_to(REPO)),
                tofile="helm template",
            )
        )
        pytest.fail(
            f"rendered chart differs from the golden file (UPDATE_GOLDEN=1 to accept):\n{diff}",
            pytrace=False,
        )


# --- the Deployment ---------------------------------------------------------------------------


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_leader_election_off_means_one_replica_and_recreate(helm: Path) -> None:
    docs = template(helm, "operator.leaderElection.enabled=false")
    dep = one(docs, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in operator_container(docs)["args"]
    assert not [d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]


def test_two_replicas_without_leader_election_are_refused(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "template", "t", str(CHART), "--set", "operator.replicaCount=2",
         "--set", "operator.leaderElection.enabled=false"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "operator.replicaCount > 1 needs operator.leaderElection.enabled=true" in proc.stderr


def test_lease_role_grants_only_the_one_lease(helm: Path) -> None:
    docs = template(helm)
    role = next(d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"])
    assert role["metadata"]["namespace"] == "modelfleet-system"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["modelfleet-operator"],
            "verbs": ["get", "update"],
        }
    ]
    assert [r["verbs"] for r in role["rules"] if not r.get("resourceNames")] == [["create"]]


def test_default_deployment_is_one_restricted_cluster_wide_replica(helm: Path) -> None:
    docs = template(helm)
    dep = one(docs, "Deployment")
    assert dep["metadata"]["name"] == "modelfleet"
    assert dep["metadata"]["namespace"] == "modelfleet-system"
    assert dep["spec"]["replicas"] == 1
    # Leader election on by default: an upgrade rolls, the new pod a standby until the old one
    # hands the Lease over.
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    c = operator_container(docs)
    assert c["image"] == "ghcr.io/modelfleet/operator:0.1.0"  # appVersion
    assert c["command"] == ["modelfleet-operator"]
    assert "--all-namespaces" in c["args"]
    assert "--leader-elect" in c["args"]
    assert not [a for a in c["args"] if a.startswith("--namespace")]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    probe = c["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Pod Security "restricted" profile.
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert csc["readOnlyRootFilesystem"] is True
    env = env_of(c)
    assert env["MODELFLEET_RUNTIME_IMAGE"] == "ghcr.io/modelfleet/runtime:0.1.0"
    assert env["MODELFLEET_RUNTIME_IMAGE_PULL_POLICY"] == "IfNotPresent"


def test_runtime_image_and_pull_policy_reach_the_operator(helm: Path) -> None:
    digest = "sha256:" + "b" * 64
    c = operator_container(
        template(
            helm,
            "runtime.image.repository=registry.local/mf-runtime",
            "runtime.image.tag=9.9",
            f"runtime.image.digest={digest}",
            "runtime.image.pullPolicy=Always",
        )
    )
    env = env_of(c)
    assert env["MODELFLEET_RUNTIME_IMAGE"] == f"registry.local/mf-runtime:9.9@{digest}"
    assert env["MODELFLEET_RUNTIME_IMAGE_PULL_POLICY"] == "Always"


def test_warm_capacity_priority_class_is_made_and_named_to_the_operator(helm: Path) -> None:
    docs = template(helm, "warmCapacity.priorityClass.value=-5", release="ml")
    pc = one(docs, "PriorityClass")
    assert pc["metadata"]["name"] == "ml-modelfleet-warm-capacity"
    assert (pc["value"], pc["preemptionPolicy"], pc["globalDefault"]) == (-5, "Never", False)
    args = operator_container(docs)["args"]
    assert "--warm-capacity-priority-class=ml-modelfleet-warm-capacity" in args
    assert "--warm-capacity-image=registry.k8s.io/pause:3.10" in args
    # Bring your own: no PriorityClass rendered, the operator told its name.
    docs = template(
        helm,
        "warmCapacity.priorityClass.create=false",
        "warmCapacity.priorityClass.name=overprovisioning",
    )
    assert by_kind(docs, "PriorityClass") == []
    args = operator_container(docs)["args"]
    assert "--warm-capacity-priority-class=overprovisioning" in args


def test_config_change_rolls_the_operator_pod(helm: Path) -> None:
    # All configuration is in the pod template (args, env), so a change rolls the pod; no
    # ConfigMap checksum is needed.
    def pod_template(*s: str) -> Any:
        return one(template(helm, *s), "Deployment")["spec"]["template"]

    assert pod_template() == pod_template()
    assert pod_template() != pod_template("runtime.image.tag=2.0")
    assert pod_template() != pod_template("runtime.image.pullPolicy=Always")
    assert pod_template()["metadata"].get("annotations") is None
    annotated = pod_template("operator.podAnnotations.team=ml")
    assert annotated["metadata"]["annotations"] == {"team": "ml"}


def test_namespace_scope_watches_only_the_listed_namespaces(helm: Path) -> None:
    docs = template(
        helm,
        "operator.scope=namespace",
        "operator.watchNamespaces={ml,ml-staging}",
        "activator.enabled=false",
    )
    args = operator_container(docs)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=ml",
        "--namespace=ml-staging",
    ]
    roles = watch_roles(docs)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "ml-staging"]
    bindings = [
        b
        for b in by_kind(docs, "RoleBinding")
        if not b["metadata"]["name"].endswith("-leader-election") and not is_activator(b)
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "ml-staging"]
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "modelfleet", "namespace": "modelfleet-system"}
        ]


def test_namespace_scope_defaults_to_the_release_namespace(helm: Path) -> None:
    docs = template(helm, "operator.scope=namespace", namespace="team-a")
    args = operator_container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a"]
    assert [r["metadata"]["namespace"] for r in watch_roles(docs)] == ["team-a"]


# --- RBAC -------------------------------------------------------------------------------------

# Cluster-wide reads kept in the ClusterRole in namespace scope: kopf's CRD and namespace
# watches, nodes for GPU capacity, and pods of every namespace (they hold GPUs too).
CLUSTER_WIDE = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("", "nodes"),
}


def rules_by_resource(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_rbac_has_no_wildcards_and_reads_secrets_only_when_asked(helm: Path) -> None:
    for case in (["operator.scope=cluster"], ["operator.scope=namespace"]):
        for read in (True, False):
            docs = template(helm, *case, f"apiKeys.readSecrets={str(read).lower()}")
            granted: dict[tuple[str, str], set[str]] = {}
            for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
                for rule in role["rules"]:
                    for key in ("apiGroups", "resources", "verbs"):
                        assert "*" not in rule[key], (role["metadata"]["name"], rule)
                    assert "nonResourceURLs" not in rule
                for k, v in rules_by_resource(role["rules"]).items():
                    granted.setdefault(k, set()).update(v)
            # spec.auth's Secrets: read-only, and nothing at all when turned off
            assert granted.get(("", "secrets")) == ({"get", "list", "watch"} if read else None)
            assert granted[("", "pods")] == ({"list", "watch", "patch"} if read else
                                             {"list", "watch"})  # fmt: skip
            args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            assert ("--no-read-api-key-secrets" in args) is not read


def test_rbac_grants_what_the_operator_uses(helm: Path) -> None:
    rules = rules_by_resource(one(template(helm), "ClusterRole")["rules"])
    # Spot checks of the essentials; the full proof is running the operator as this role
    # (tests/integration/test_helm_rbac.py).
    assert {"list", "watch"} <= rules[("apiextensions.k8s.io", "customresourcedefinitions")]
    assert {"list", "watch"} <= rules[("modelfleet.io", "modeldeployments")]
    assert "patch" in rules[("modelfleet.io", "modeldeployments/status")]
    # The builtin autoscaler writes replicas through /scale, never the rest of the spec.
    assert rules[("modelfleet.io", "modeldeployments/scale")] == {"patch"}
    assert "patch" not in rules[("modelfleet.io", "modeldeployments")]
    assert "create" in rules[("", "events")]
    for child in (
        ("apps", "deployments"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
        ("autoscaling", "horizontalpodautoscalers"),
    ):
        # Server-side apply of a new object needs create as well as patch.
        assert {"list", "watch", "create", "patch", "delete"} <= rules[child], child
    # Read-only where the operator only reads (pods: one annotation, for spec.auth).
    assert rules[("", "nodes")] <= {"get", "list", "watch"}
    assert rules[("", "pods")] <= {"get", "list", "watch", "patch"}
    assert rules[("", "secrets")] == {"get", "list", "watch"}
    # kopf lists namespaces only when given --namespace, never with --all-namespaces.
    assert ("", "namespaces") not in rules


def test_namespace_scope_keeps_only_cluster_scoped_reads_in_the_cluster_role(helm: Path) -> None:
    docs = template(helm, "operator.scope=namespace", "operator.watchNamespaces={ml}")
    cluster = rules_by_resource(one(docs, "ClusterRole")["rules"])
    assert set(cluster) == CLUSTER_WIDE
    assert all(v <= {"get", "list", "watch"} for v in cluster.values())
    full = rules_by_resource(one(template(helm), "ClusterRole")["rules"])
    role = next(r for r in watch_roles(docs) if r["metadata"]["namespace"] == "ml")
    namespaced = rules_by_resource(role["rules"])
    # The Role plus the small ClusterRole grant what the cluster-wide role grants, plus the
    # namespace reads kopf needs for --namespace.
    union = {k: namespaced.get(k, set()) | cluster.get(k, set()) for k in {*namespaced, *cluster}}
    assert union == {**full, ("", "namespaces"): {"list", "watch"}}
    assert one(docs, "ClusterRole")["metadata"]["name"] == "modelfleet-modelfleet-system"


def test_rbac_create_false_renders_no_rbac(helm: Path) -> None:
    docs = template(helm, "rbac.create=false")
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not by_kind(docs, kind)


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_service_selects_the_operator_pod(helm: Path) -> None:
    docs = template(helm)
    svc = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert not by_kind(docs, "ServiceMonitor")  # off by default: needs Prometheus Operator CRDs


def test_service_monitor_scrapes_the_metrics_port(helm: Path) -> None:
    docs = template(
        helm, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= (
        one(docs, "Service")["metadata"]["labels"].items()
    )


def test_standard_labels_on_every_object(helm: Path) -> None:
    for d in template(helm, "metrics.serviceMonitor.enabled=true"):
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "modelfleet", d["kind"]
        assert labels["app.kubernetes.io/instance"] == "modelfleet"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "modelfleet-0.1.0"


def test_release_name_prefixes_resource_names(helm: Path) -> None:
    docs = template(helm, release="ml")
    assert one(docs, "Deployment")["metadata"]["name"] == "ml-modelfleet"
    assert one(docs, "ClusterRole")["metadata"]["name"] == "ml-modelfleet"


# --- CRDs ---------------------------------------------------------------------------------------


def repo_crd_files() -> dict[str, Path]:
    return {p.name: p for p in sorted((REPO / "crds").glob("*.yaml"))}


def test_chart_crds_are_identical_to_crds_dir() -> None:
    repo = repo_crd_files()
    chart = {p.name: p for p in sorted((CHART / "files" / "crds").glob("*.yaml"))}
    assert repo, "crds/ holds no generated CRD yet"
    assert sorted(chart) == sorted(repo), "run `make chart-sync` to copy crds/ into the chart"
    for name, path in repo.items():
        assert chart[name].read_bytes() == path.read_bytes(), (
            f"charts/modelfleet/files/crds/{name} differs from crds/{name}: run `make chart-sync`"
        )


def test_rendered_crds_are_the_repo_crds_plus_keep_policy(helm: Path) -> None:
    repo = {}
    for path in repo_crd_files().values():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                repo[doc["metadata"]["name"]] = doc
    crds = by_kind(template(helm), "CustomResourceDefinition")
    rendered = {d["metadata"]["name"]: d for d in crds}
    assert sorted(rendered) == sorted(repo)
    for name, want in repo.items():
        got = rendered[name]
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert got["spec"] == want["spec"], f"{name}: rendered spec differs from crds/"


def test_crds_can_be_left_out_or_deletable(helm: Path) -> None:
    assert not by_kind(template(helm, "crds.install=false"), "CustomResourceDefinition")
    for crd in by_kind(template(helm, "crds.keep=false"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_chart_has_no_helm_crds_dir() -> None:
    # Helm would install a crds/ dir on its own AND we render the same CRDs: the install fails
    # with "already exists". The CRDs live under files/crds instead.
    assert not (CHART / "crds").exists()


# --- NOTES ----------------------------------------------------------------------------------------


def render_notes(helm: Path, tmp_path: Path, *set_args: str) -> str:
    # `helm template` drops NOTES.txt and `helm install --dry-run` wants a cluster, so a copy of
    # the chart gets one more template that includes NOTES.txt by its template name.
    chart = tmp_path / "modelfleet"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "modelfleet/templates/NOTES.txt" . | quote }}}\n'
    )
    docs = template(helm, *set_args, chart=chart)
    return str(one(docs, "ConfigMap")["data"]["notes"])


def test_notes_say_what_to_apply_next(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path)
    assert "kubectl -n modelfleet-system rollout status deployment/modelfleet" in notes
    assert "kubectl apply" in notes
    assert "kubectl get modeldeployments" in notes
    assert "every namespace" in notes
    assert "ghcr.io/modelfleet/runtime:0.1.0" in notes


def test_notes_name_the_watched_namespaces(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(
        helm, tmp_path, "operator.scope=namespace", "operator.watchNamespaces={ml,ml-staging}"
    )
    assert "only in: ml, ml-staging" in notes
    assert "kubectl apply -n ml -f - <<EOF" in notes


def notes_manifest(notes: str) -> dict[str, Any]:
    """The ModelDeployment NOTES.txt tells the user to apply (its heredoc)."""
    body = notes.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    doc: dict[str, Any] = yaml.safe_load(body)
    return doc


def test_notes_manifest_is_a_model_deployment(helm: Path, tmp_path: Path) -> None:
    # Pasted as written (no indentation, or the heredoc's EOF would not end it).
    md = notes_manifest(render_notes(helm, tmp_path))
    assert md["apiVersion"] == "modelfleet.io/v1alpha1"
    assert md["kind"] == "ModelDeployment"
    assert md["spec"]["model"]["uri"]


def test_rbac_covers_every_api_the_operator_code_names(helm: Path) -> None:
    """Static half of the RBAC proof: a kind added to the operator's watches
    (handlers.WATCHED) or children (handlers.CHILDREN) fails here before it fails in a cluster
    (the dynamic half runs the operator as the chart's ServiceAccount in
    tests/integration/test_helm_rbac.py)."""
    from modelfleet_operator import handlers  # noqa: PLC0415 (operator code under test)

    rules = rules_by_resource(one(template(helm), "ClusterRole")["rules"])
    for group, _version, plural in handlers.WATCHED:
        assert {"list", "watch"} <= rules.get((group, plural), set()), plural
    for name, (group, _version, plural) in handlers.CHILDREN.items():
        # apply = patch (+ create for a new object); prune = delete.
        missing = {"create", "patch", "delete"} - rules.get((group, plural), set())
        assert not missing, f"{name}: the chart does not grant {sorted(missing)}"
    assert "patch" in rules[("modelfleet.io", "modeldeployments/status")]


CLI_CASES = {
    "defaults": [],
    "namespace scope": ["operator.scope=namespace", "operator.watchNamespaces={ml,ml-dev}"],
    "debug json": ["operator.logLevel=debug", "operator.logFormat=json"],
    "quiet plain": ["operator.logLevel=quiet", "operator.logFormat=plain"],
    "verbose, other ports": [
        "operator.logLevel=verbose",
        "operator.healthPort=18080",
        "operator.metricsPort=19090",
    ],
    "pinned runtime": ["runtime.image.digest=sha256:" + "c" * 64, "runtime.image.pullPolicy=Never"],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_rendered_command_line_is_accepted_by_the_operator_cli(
    helm: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart and the operator meet in its command line and environment (as the runtime and
    the operator do): what the chart renders must parse, and mean what the values say."""
    from modelfleet_operator.__main__ import build_parser  # noqa: PLC0415 (code under test)

    values = CLI_CASES[case]
    c = operator_container(template(helm, *values))
    env = env_of(c)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    assert c["command"] == ["modelfleet-operator"]
    args = build_parser().parse_args(c["args"])
    if "operator.scope=namespace" in values:
        # the release namespace too: the activator's endpoints are there
        assert args.namespace == ["ml", "ml-dev", "modelfleet-system"]
        assert not args.all_namespaces
    else:
        assert args.all_namespaces and not args.namespace
    # The CLI reads its runtime defaults from the env the chart sets.
    assert args.runtime_image == env["MODELFLEET_RUNTIME_IMAGE"]
    assert args.runtime_image_pull_policy == env["MODELFLEET_RUNTIME_IMAGE_PULL_POLICY"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.metrics_port == ports["metrics"]
    level = next((v.split("=")[1] for v in values if v.startswith("operator.logLevel=")), "normal")
    assert (args.debug, args.verbose, args.quiet) == (
        level == "debug",
        level == "verbose",
        level == "quiet",
    )
    fmt = next((v.split("=")[1] for v in values if v.startswith("operator.logFormat=")), "full")
    assert args.log_format == fmt


def test_packaged_chart_renders_the_crd(helm: Path, tmp_path: Path) -> None:
    # What users install from a registry is the .tgz: the CRD files must travel in it.
    run_helm(helm, "package", str(CHART), "-d", str(tmp_path))
    (tgz,) = tmp_path.glob("modelfleet-*.tgz")
    with tarfile.open(tgz) as tar:
        names = tar.getnames()
    assert "modelfleet/files/crds/modelfleet.io_modeldeployments.yaml" in names
    assert "modelfleet/values.schema.json" in names
    docs = template(helm, chart=tgz)
    assert [d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")] == [
        "modeldeployments.modelfleet.io"
    ]


def test_block_owner_deletion_comes_with_finalizers_update(helm: Path) -> None:
    """Children's owner references set blockOwnerDeletion; where the
    OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift), creating them needs
    `update` on modeldeployments/finalizers. The local cluster runs without that plugin, so this
    part of the RBAC is checked here, statically."""
    from modelfleet_operator.render.common import Owner, owner_reference  # noqa: PLC0415

    ref = owner_reference(Owner(name="m", namespace="ns", uid="u"))
    rules = rules_by_resource(one(template(helm), "ClusterRole")["rules"])
    if ref.get("blockOwnerDeletion"):
        assert rules.get(("modelfleet.io", "modeldeployments/finalizers")) == {"update"}
    else:
        assert ("modelfleet.io", "modeldeployments/finalizers") not in rules


# --- the scale-to-zero activator ------------------------------------------------------------


def test_activator_runs_the_operator_image_read_only_and_the_operator_points_at_it(
    helm: Path,
) -> None:
    from modelfleet_operator.__main__ import build_parser  # noqa: PLC0415 (code under test)

    docs = template(helm)
    (dep,) = [d for d in by_kind(docs, "Deployment") if is_activator(d)]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["modelfleet-activator"]
    assert c["image"] == operator_container(docs)["image"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Held requests get drainSeconds after SIGTERM, and the kubelet waits longer than that.
    assert pod["terminationGracePeriodSeconds"] > 30
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "activator"
    (svc,) = [d for d in by_kind(docs, "Service") if is_activator(d)]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    args = build_parser().parse_args(operator_container(docs)["args"])
    assert args.activator_service == ("modelfleet-system", svc["metadata"]["name"])
    assert args.activator_ports == (20000, 29999)
    # Its only API use is a read of EndpointSlices, under its own ServiceAccount.
    (role,) = [r for r in by_kind(docs, "ClusterRole") if is_activator(r)]
    assert rules_by_resource(role["rules"]) == {
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"}
    }
    assert pod["serviceAccountName"] == svc["metadata"]["name"]


def test_activator_off_renders_nothing_of_it_and_the_operator_gets_no_flag(helm: Path) -> None:
    docs = template(helm, "activator.enabled=false")
    assert not [d for d in docs if is_activator(d)]
    assert not [a for a in operator_container(docs)["args"] if a.startswith("--activator")]


def test_activator_in_namespace_scope_watches_the_release_namespace_too(helm: Path) -> None:
    docs = template(helm, "operator.scope=namespace", "operator.watchNamespaces={ml}")
    args = operator_container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=ml",
        "--namespace=modelfleet-system",
    ]
    roles = [r for r in by_kind(docs, "Role") if is_activator(r)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "modelfleet-system"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["activator.ports=1000-2000"], "1024 <= LOW"),
        (["activator.ports=30000-20000"], "1024 <= LOW"),
        (["activator.ports=9000-9999"], "inside activator.ports"),
    ],
)
def test_bad_activator_ports_are_refused_with_the_reason(
    helm: Path, values: list[str], message: str
) -> None:
    sets = [arg for v in values for arg in ("--set", v)]
    proc = run_helm(helm, "template", "modelfleet", str(CHART), *sets, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
