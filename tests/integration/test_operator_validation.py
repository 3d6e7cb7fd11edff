"""The apiserver (CRD schema + CEL) refuses bad ModelDeployments, naming the field; good ones
are defaulted; `kubectl explain` teaches the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kube_harness
import pytest
from kube_harness import KubeCluster
from operator_support import install_crd, manifest


@pytest.fixture(scope="module")
def crd(kube_cluster: KubeCluster) -> KubeCluster:
    install_crd(kube_cluster)
    return kube_cluster


@pytest.fixture(scope="module")
def namespace(crd: KubeCluster) -> Iterator[str]:
    # One namespace for the module: nothing here is created for real (server-side dry run).
    with kube_harness.namespace(crd, kube_harness.unique_namespace("operator-validation")) as ns:
        yield ns


DIGEST = "sha256:" + "ab" * 32

# (id, spec patch or whole-object override, text the error must contain: the field path)
BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("missing model", {"model": None}, ["spec.model", "Required"]),
    ("missing uri", {"model": {"uri": None}}, ["spec.model.uri", "Required"]),
    (
        "uri scheme",
        {"model": {"uri": "ftp://host/m"}},
        ["spec.model.uri", "must start with pvc://"],
    ),
    (
        "pvc uri without path",
        {"model": {"uri": "pvc://claim"}},
        ["spec.model.uri", "pvc://<claim>/<path"],
    ),
    ("unknown format", {"model": {"format": "onnx"}}, ["spec.model.format", "Unsupported value"]),
    (
        "safetensors without entrypoint",
        {"model": {"format": "safetensors"}},
        ["spec.model.entrypoint", "entrypoint is required"],
    ),
    ("entrypoint syntax", {"model": {"entrypoint": "mypkg.nets"}}, ["spec.model.entrypoint"]),
    ("digest format", {"model": {"digest": "sha1:abc"}}, ["spec.model.digest"]),
    ("mig and whole gpus", {"gpu": {"count": 1, "mig": "1g.10gb"}}, ["spec.gpu.mig", "not both"]),
    ("mig profile syntax", {"gpu": {"count": None, "mig": "half"}}, ["spec.gpu.mig"]),
    ("zero gpus", {"gpu": {"count": 0}}, ["spec.gpu.count"]),
    ("too many gpus", {"gpu": {"count": 17}}, ["spec.gpu.count"]),
    ("negative replicas", {"replicas": -1}, ["spec.replicas"]),
    (
        "min above max",
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "target": 4}},
        ["spec.autoscaling.minReplicas", "minReplicas must be <= maxReplicas"],
    ),
    (
        "autoscaling without max",
        {"autoscaling": {"target": 4}},
        ["spec.autoscaling.maxReplicas", "Required"],
    ),
    (
        "autoscaling target zero",
        {"autoscaling": {"maxReplicas": 3, "target": 0}},
        ["spec.autoscaling.target"],
    ),
    (
        "cpu target not a percent",
        {"autoscaling": {"maxReplicas": 3, "metric": "cpu", "target": 5000}},
        ["spec.autoscaling.target", "utilization percent"],
    ),
    (
        "unknown metric",
        {"autoscaling": {"maxReplicas": 3, "metric": "gpu", "target": 1}},
        ["spec.autoscaling.metric"],
    ),
    (
        "device cpu with gpus",
        {"runtime": {"device": "cpu"}},
        ["spec.runtime.device", "cpu but gpu"],
    ),
    (
        "device cuda without gpu",
        {"gpu": None, "runtime": {"device": "cuda"}},
        ["spec.runtime.device", "needs spec.gpu"],
    ),
    ("unknown dtype", {"runtime": {"dtype": "int8"}}, ["spec.runtime.dtype"]),
    (
        "queue smaller than batch",
        {"runtime": {"batching": {"maxBatchSize": 64, "maxQueueSize": 8}}},
        ["spec.runtime.batching.maxQueueSize"],
    ),
    (
        "batch size zero",
        {"runtime": {"batching": {"maxBatchSize": 0}}},
        ["spec.runtime.batching.maxBatchSize"],
    ),
    (
        "memory not a quantity",
        {"runtime": {"resources": {"memory": "lots"}}},
        ["spec.runtime.resources.memory"],
    ),
    ("overload status", {"runtime": {"overloadStatus": 500}}, ["spec.runtime.overloadStatus"]),
    ("port out of range", {"service": {"port": 70000}}, ["spec.service.port"]),
    ("unknown strategy", {"rollout": {"strategy": "BlueGreen"}}, ["spec.rollout.strategy"]),
    (
        "unknown field is not silently dropped",
        {"gpus": 2},
        [".spec.gpus: field not declared in schema"],
    ),
]


def _spec_patch(patch: dict[str, Any]) -> dict[str, Any]:
    body = manifest("bad", {k: v for k, v in patch.items() if not isinstance(v, dict)})
    spec = body["spec"]
    for key, value in patch.items():
        if isinstance(value, dict):
            merged = dict(spec.get(key) or {})
            for k, v in value.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            spec[key] = merged
    return body


@pytest.mark.parametrize(("label", "patch", "expect"), BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_refused_naming_the_field(
    crd: KubeCluster, namespace: str, label: str, patch: dict[str, Any], expect: list[str]
) -> None:
    body = _spec_patch(patch)
    proc = crd.kubectl(
        "apply",
        "-n",
        namespace,
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=json.dumps(body),
        check=False,
    )
    assert proc.returncode != 0, f"{label}: accepted\n{proc.stdout}"
    for text in expect:
        assert text in proc.stderr, f"{label}: {text!r} not in:\n{proc.stderr}"


def test_bad_name_is_refused(crd: KubeCluster, namespace: str) -> None:
    body = manifest("9-lives")
    proc = crd.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(body), check=False
    )
    assert proc.returncode != 0 and "DNS-1035" in proc.stderr


def test_good_manifest_is_defaulted(crd: KubeCluster, namespace: str) -> None:
    body = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny"},
        "spec": {"model": {"uri": "https://x/y.pt"}},
    }
    out = json.loads(
        crd.kubectl(
            "apply",
            "-n",
            namespace,
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(body),
        ).stdout
    )
    spec = out["spec"]
    assert spec["replicas"] == 1
    assert spec["model"]["format"] == "torchscript" and spec["model"]["version"] == "1"
    assert spec["runtime"]["batching"] == {
        "maxBatchSize": 32,
        "maxDelayMilliseconds": 5,
        "maxQueueSize": 512,
    }
    assert spec["rollout"]["strategy"] == "Auto"
    assert spec["service"] == {"port": 8080, "metricsPort": 9091, "type": "ClusterIP"}


def test_explain_teaches_the_api(crd: KubeCluster) -> None:
    out = crd.kubectl("explain", "mdep.spec.gpu").stdout
    assert "MIG" in out and "products" in out and "count" in out
    out = crd.kubectl("explain", "modeldeployment.spec.autoscaling.metric").stdout
    assert "concurrency" in out


def test_short_name_and_category(crd: KubeCluster, namespace: str) -> None:
    assert crd.kubectl("get", "mdep", "-n", namespace).returncode == 0
    assert crd.kubectl("get", "modelfleet", "-n", namespace).returncode == 0
