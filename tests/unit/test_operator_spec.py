"""spec.parse_spec: defaults, typed values, and every rule the CRD also enforces."""

from __future__ import annotations

from typing import Any

import pytest
from modelfleet_operator.spec import DEFAULTS, InvalidSpec, parse_spec
from operator_samples import H100, md


def parse(spec: dict[str, Any] | None = None, name: str = "resnet") -> Any:
    return parse_spec(md(spec)["spec"], name=name)


def test_defaults_fill_everything_left_out() -> None:
    s = parse_spec({"model": {"uri": "https://example.com/m"}}, name="tiny")
    assert s.model.name == "tiny"  # served name defaults to metadata.name
    assert s.model.version == DEFAULTS["model.version"]
    assert s.model.format == "torchscript"
    assert s.gpu is None and s.autoscaling is None
    assert s.replicas == 1
    assert s.runtime.batching.max_batch_size == 32
    assert s.runtime.batching.max_delay_ms == 5.0
    assert s.runtime.resources.cpu == "2"
    assert s.service.port == 8080
    assert s.rollout.strategy == "Auto"
    assert s.scheduling.topology_spread.topology_key == "kubernetes.io/hostname"


def test_pvc_uri_splits_into_claim_and_path() -> None:
    s = parse()
    assert s.model.scheme == "pvc"
    assert s.model.pvc_claim == "models"
    assert s.model.pvc_path == "resnet50/3"
    assert parse({"model": {"uri": "s3://b/k"}}).model.pvc_claim is None


def test_gpu_count_defaults_to_one_and_mig_selects_its_resource() -> None:
    g = parse({"gpu": {"count": None}}).gpu
    assert g is not None and g.count == 1 and g.resource == "nvidia.com/gpu"
    m = parse({"gpu": {"count": None, "mig": "1g.10gb", "products": None}}).gpu
    assert m is not None and m.resource == "nvidia.com/mig-1g.10gb" and m.quantity == 1
    assert m.summary() == "1x mig-1g.10gb"
    assert parse({"gpu": {"count": 2}}).gpu.summary() == "2x H100-80GB-HBM3"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("replicas", "lo", "hi", "want"),
    [
        (1, 2, 8, 2),  # below min: the HPA would raise it anyway
        (5, 2, 8, 5),  # HPA-owned value passes through
        (20, 2, 8, 8),  # above max
    ],
)
def test_desired_replicas_clamped_to_autoscaling_bounds(
    replicas: int, lo: int, hi: int, want: int
) -> None:
    s = parse(
        {"replicas": replicas, "autoscaling": {"minReplicas": lo, "maxReplicas": hi, "target": 4}}
    )
    assert s.desired_replicas() == want
    assert parse({"replicas": 3}).desired_replicas() == 3


@pytest.mark.parametrize(
    ("metric", "engine", "want"),
    [
        ("concurrency", None, "builtin"),
        ("rps", None, "builtin"),
        ("cpu", None, "hpa"),
        ("concurrency", "hpa", "hpa"),
        ("cpu", "keda", "keda"),
    ],
)
def test_engine_defaults_follow_the_metric(metric: str, engine: str | None, want: str) -> None:
    auto: dict[str, Any] = {"maxReplicas": 4, "metric": metric, "target": 50}
    if engine:
        auto["engine"] = engine
    a = parse({"autoscaling": auto}).autoscaling
    assert a is not None and a.engine == want


def test_cpu_with_builtin_says_which_engines_can() -> None:
    with pytest.raises(InvalidSpec) as err:
        parse({"autoscaling": {"maxReplicas": 2, "metric": "cpu", "target": 70,
                               "engine": "builtin"}})  # fmt: skip
    assert "builtin cannot scale on metric cpu" in str(err.value)
    assert "hpa or keda" in str(err.value)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"model": None}, "spec.model"),
    ("no uri", {"model": {"uri": None}}, "spec.model.uri"),
    ("ftp scheme", {"model": {"uri": "ftp://x/y"}}, "spec.model.uri"),
    ("pvc without path", {"model": {"uri": "pvc://claim"}}, "spec.model.uri"),
    ("bad format", {"model": {"format": "onnx"}}, "spec.model.format"),
    (
        "safetensors without entrypoint",
        {"model": {"format": "safetensors"}},
        "spec.model.entrypoint",
    ),
    ("bad entrypoint", {"model": {"entrypoint": "no-colon"}}, "spec.model.entrypoint"),
    ("bad digest", {"model": {"digest": "md5:abc"}}, "spec.model.digest"),
    ("count and mig", {"gpu": {"mig": "1g.10gb"}}, "spec.gpu"),
    ("bad mig", {"gpu": {"count": None, "mig": "big"}}, "spec.gpu.mig"),
    ("zero gpus", {"gpu": {"count": 0}}, "spec.gpu.count"),
    ("negative replicas", {"replicas": -1}, "spec.replicas"),
    (
        "min > max",
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "target": 1}},
        "spec.autoscaling.minReplicas",
    ),
    ("no max", {"autoscaling": {"target": 1}}, "spec.autoscaling.maxReplicas"),
    (
        "cpu target > 1000",
        {"autoscaling": {"maxReplicas": 2, "metric": "cpu", "target": 5000}},
        "spec.autoscaling.target",
    ),
    (
        "bad metric",
        {"autoscaling": {"maxReplicas": 2, "metric": "gpu", "target": 1}},
        "spec.autoscaling.metric",
    ),
    (
        "cpu with builtin",
        {"autoscaling": {"maxReplicas": 2, "metric": "cpu", "target": 70, "engine": "builtin"}},
        "spec.autoscaling.engine",
    ),
    (
        "bad engine",
        {"autoscaling": {"maxReplicas": 2, "target": 1, "engine": "knative"}},
        "spec.autoscaling.engine",
    ),
    (
        "keda on concurrency without a Prometheus",
        {"autoscaling": {"maxReplicas": 2, "target": 1, "engine": "keda"}},
        "spec.autoscaling.keda.serverAddress",
    ),
    (
        "keda settings with another engine",
        {"autoscaling": {"maxReplicas": 2, "target": 1, "keda": {"serverAddress": "http://p"}}},
        "spec.autoscaling.keda",
    ),
    (
        "scale to zero with the HPA",
        {"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "metric": "cpu", "target": 50}},
        "spec.autoscaling.minReplicas",
    ),
    (
        "scale to zero with KEDA",
        {
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "target": 1,
                "engine": "keda",
                "keda": {"serverAddress": "http://p"},
            }
        },
        "spec.autoscaling.minReplicas",
    ),
    (
        "scaleToZero without minReplicas 0",
        {"autoscaling": {"maxReplicas": 2, "target": 1, "scaleToZero": {"maxHeldRequests": 5}}},
        "spec.autoscaling.scaleToZero",
    ),
    (
        "no room to hold a request",
        {
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "target": 1,
                "scaleToZero": {"maxHeldRequests": 0},
            }
        },
        "spec.autoscaling.scaleToZero.maxHeldRequests",
    ),
    (
        "hold timeout zero",
        {
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "target": 1,
                "scaleToZero": {"holdTimeoutSeconds": 0},
            }
        },
        "spec.autoscaling.scaleToZero.holdTimeoutSeconds",
    ),
    ("device cpu with gpu", {"runtime": {"device": "cpu"}}, "spec.runtime.device"),
    (
        "device cuda without gpu",
        {"gpu": None, "runtime": {"device": "cuda"}},
        "spec.runtime.device",
    ),
    (
        "queue < batch",
        {"runtime": {"batching": {"maxBatchSize": 64, "maxQueueSize": 8}}},
        "spec.runtime.batching.maxQueueSize",
    ),
    (
        "bad quantity",
        {"runtime": {"resources": {"memory": "lots"}}},
        "spec.runtime.resources.memory",
    ),
    ("bad port", {"service": {"port": 70000}}, "spec.service.port"),
    ("bad strategy", {"rollout": {"strategy": "BlueGreen"}}, "spec.rollout.strategy"),
]


@pytest.mark.parametrize(("label", "patch", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_name_the_field(label: str, patch: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse(patch)
    assert err.value.field == field, label


def test_scale_to_zero_defaults_hold_for_a_gpu_cold_start() -> None:
    spec = parse({"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": 2}})
    assert spec.autoscaling is not None and spec.autoscaling.to_zero
    assert spec.autoscaling.engine == "builtin"
    assert spec.autoscaling.scale_to_zero is not None
    assert spec.autoscaling.scale_to_zero.max_held_requests == 100
    assert spec.autoscaling.scale_to_zero.hold_timeout_s == 1200
    assert spec.desired_replicas() == spec.replicas  # starts at spec.replicas; idle goes to 0
    zero = parse({"replicas": 0, "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": 2}})
    assert zero.desired_replicas() == 0


def test_invalid_name() -> None:
    with pytest.raises(InvalidSpec) as err:
        parse(name="9lives")
    assert err.value.field == "metadata.name"


def test_parse_is_pure_and_frozen() -> None:
    raw = md()["spec"]
    a, b = parse_spec(raw, name="x"), parse_spec(raw, name="x")
    assert a == b
    with pytest.raises(AttributeError):
        a.replicas = 3  # type: ignore[misc]
    assert raw["gpu"] == {"count": 1, "products": [H100]}  # input untouched
