"""values.schema.json: a wrong type or an unknown key fails `helm template` naming the key.

Uses the same helm as test_chart_render.py (the local cluster's cache, or MODELFLEET_HELM); a
missing helm fails the tests with the command to build it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"
SCHEMA = CHART / "values.schema.json"


@pytest.fixture(scope="session")
def helm() -> Path:
    override = os.environ.get("MODELFLEET_HELM")
    if override:
        return Path(override)
    bin_dir = subprocess.run(
        [str(REPO / "hack" / "cluster" / "build"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(bin_dir) / "helm"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"helm is not built at {path}: run `make cluster-build` first, or point "
            "MODELFLEET_HELM at a helm v3 binary",
            pytrace=False,
        )
    return path


def helm_template(
    helm: Path, values: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [
            str(helm),
            "template",
            "modelfleet",
            str(CHART),
            "-n",
            "modelfleet-system",
            "--kube-version",
            "v1.36.3",
            "-f",
            str(vf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


# (values overriding the defaults, text the error must contain: the key's path)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicaCount": 2}, "additional properties 'replicaCount'"),
    "unknown nested key": (
        {"operator": {"replicas": 2}},
        "at '/operator': additional properties 'replicas'",
    ),
    "typo in a flag": (
        {"metrics": {"serviceMonitor": {"enable": True}}},
        "at '/metrics/serviceMonitor': additional properties 'enable'",
    ),
    "string for an integer": ({"operator": {"replicaCount": "one"}}, "at '/operator/replicaCount'"),
    "a warm-capacity priority at or above the serving pods'": (
        {"warmCapacity": {"priorityClass": {"value": 0}}},
        "at '/warmCapacity/priorityClass/value': maximum",
    ),
    "eleven operator replicas": (
        {"operator": {"replicaCount": 11}},
        "at '/operator/replicaCount': maximum",
    ),
    "lease shorter than the renew loop allows": (
        {"operator": {"leaderElection": {"leaseDurationSeconds": 1}}},
        "at '/operator/leaderElection/leaseDurationSeconds': minimum",
    ),
    "unknown scope": ({"operator": {"scope": "cluster-wide"}}, "at '/operator/scope'"),
    "pull policy case": (
        {"runtime": {"image": {"pullPolicy": "always"}}},
        "at '/runtime/image/pullPolicy'",
    ),
    "malformed digest": (
        {"operator": {"image": {"digest": "sha256:xyz"}}},
        "at '/operator/image/digest'",
    ),
    "empty repository": (
        {"operator": {"image": {"repository": ""}}},
        "at '/operator/image/repository'",
    ),
    "tag with a colon": ({"runtime": {"image": {"tag": "v1:latest"}}}, "at '/runtime/image/tag'"),
    "invalid namespace name": (
        {"operator": {"scope": "namespace", "watchNamespaces": ["Team_A"]}},
        "at '/operator/watchNamespaces/0'",
    ),
    "duplicate namespaces": (
        {"operator": {"scope": "namespace", "watchNamespaces": ["ml", "ml"]}},
        "at '/operator/watchNamespaces'",
    ),
    "privileged port": ({"operator": {"healthPort": 80}}, "at '/operator/healthPort'"),
    "unknown log level": ({"operator": {"logLevel": "trace"}}, "at '/operator/logLevel'"),
    "bad memory quantity": (
        {"operator": {"resources": {"limits": {"memory": "lots"}}}},
        "at '/operator/resources/limits/memory'",
    ),
    "unknown resources key": (
        {"operator": {"resources": {"limit": {"cpu": "1"}}}},
        "at '/operator/resources': additional properties 'limit'",
    ),
    "string for a boolean": ({"crds": {"install": "yes"}}, "at '/crds/install'"),
    "tolerations not a list": (
        {"operator": {"tolerations": {"key": "a"}}},
        "at '/operator/tolerations'",
    ),
    "toleration key typo": (
        {"operator": {"tolerations": [{"keyy": "a"}]}},
        "at '/operator/tolerations/0': additional properties 'keyy'",
    ),
    "security context typo": (
        {"operator": {"podSecurityContext": {"runAsRoot": False}}},
        "additional properties 'runAsRoot'",
    ),
    "bad scrape interval": (
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "at '/metrics/serviceMonitor/interval'",
    ),
    "unknown service type": (
        {"metrics": {"service": {"type": "Ingress"}}},
        "at '/metrics/service/type'",
    ),
    "pull secrets as strings": ({"imagePullSecrets": ["regcred"]}, "at '/imagePullSecrets/0'"),
    "annotation value not a string": (
        {"operator": {"podAnnotations": {"a": {"b": "c"}}}},
        "at '/operator/podAnnotations/a'",
    ),
    "env var without a name": (
        {"operator": {"extraEnv": [{"value": "1"}]}},
        "at '/operator/extraEnv/0'",
    ),
    # Cross-field rules, enforced in templates/_helpers.tpl with a message that names the keys.
    "namespaces in cluster scope": (
        {"operator": {"watchNamespaces": ["ml"]}},
        "operator.watchNamespaces is only used with operator.scope=namespace",
    ),
    "service monitor without service": (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.service.enabled=true",
    ),
    "existing service account unnamed": (
        {"serviceAccount": {"create": False}},
        "serviceAccount.name is required",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_naming_the_key(helm: Path, tmp_path: Path, case: str) -> None:
    values, expected = BAD_VALUES[case]
    proc = helm_template(helm, values, tmp_path)
    assert proc.returncode != 0, f"{case}: helm template accepted {values}"
    assert expected in proc.stderr, f"{case}: {expected!r} not in:\n{proc.stderr}"


GOOD_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespace scope": {"operator": {"scope": "namespace", "watchNamespaces": ["ml", "ml-dev"]}},
    "pinned images": {
        "operator": {"image": {"digest": "sha256:" + "0" * 64}},
        "runtime": {"image": {"tag": "0.1.0-cpu", "pullPolicy": "Always"}},
    },
    "numeric quantities": {
        "operator": {"resources": {"requests": {"cpu": 0.5}, "limits": {"memory": "1Gi"}}}
    },
    "scheduling": {
        "operator": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/arch",
                                        "operator": "In",
                                        "values": ["amd64"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": "system-cluster-critical",
        }
    },
    "extra env": {
        "operator": {
            "extraEnv": [
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]
        }
    },
    "existing service account": {"serviceAccount": {"create": False, "name": "ops"}},
    "operator off": {"operator": {"replicaCount": 0}},
}


@pytest.mark.parametrize("case", sorted(GOOD_VALUES))
def test_good_values_render(helm: Path, tmp_path: Path, case: str) -> None:
    proc = helm_template(helm, GOOD_VALUES[case], tmp_path)
    assert proc.returncode == 0, proc.stderr


# Kubernetes API sub-objects passed through verbatim: their own schemas are the API server's.
OPAQUE_PATHS = {
    "/global",
    "/operator/affinity/nodeAffinity",
    "/activator/affinity/nodeAffinity",
    "/activator/affinity/podAffinity",
    "/activator/affinity/podAntiAffinity",
    "/operator/affinity/podAffinity",
    "/operator/affinity/podAntiAffinity",
    "/operator/extraEnv/*/valueFrom/fieldRef",
    "/operator/extraEnv/*/valueFrom/resourceFieldRef",
    "/operator/extraEnv/*/valueFrom/configMapKeyRef",
    "/operator/extraEnv/*/valueFrom/secretKeyRef",
}


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, child in node.get("properties", {}).items():
        out += walk(child, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}/*")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}/<key>")
    return out


def test_schema_is_closed_everywhere() -> None:
    schema = json.loads(SCHEMA.read_text())
    for path, node in walk(schema, ""):
        if node.get("type") != "object" or path in OPAQUE_PATHS:
            continue
        assert "additionalProperties" in node, f"{path or '/'}: object without additionalProperties"


def test_every_default_value_is_in_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}/{key} is not in values.schema.json"
                check(child, node["properties"][key], f"{path}/{key}")

    check(values, schema, "")


@pytest.mark.parametrize(
    ("kube_version", "ok"), [("v1.36.3", True), ("v1.25.0", True), ("v1.24.9", False)]
)
def test_kube_version_constraint(helm: Path, kube_version: str, ok: bool) -> None:
    # The CRD's CEL rules need >= 1.25; the local cluster (1.36) must satisfy the constraint.
    proc = subprocess.run(
        [str(helm), "template", "modelfleet", str(CHART), "--kube-version", kube_version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    if not ok:
        assert "incompatible with Kubernetes" in proc.stderr
