"""Pure renderers: the Deployment, Service, PDB and HPA a spec turns into."""

from __future__ import annotations

from typing import Any

import pytest
from modelfleet_operator.render import Owner, RenderConfig, Strategy, render_all
from modelfleet_operator.render.deployment import (
    choose_strategy,
    existing_strategy,
    render_deployment,
    template_hash,
)
from modelfleet_operator.render.hpa import render_hpa
from modelfleet_operator.render.keda import render_scaled_object
from modelfleet_operator.render.pdb import render_pdb
from modelfleet_operator.render.service import render_service, service_url
from modelfleet_operator.spec import parse_spec
from operator_samples import H100, md

CONFIG = RenderConfig(runtime_image="registry.example/modelfleet-runtime:1.2.3")
SURGE = Strategy("RollingUpdate", 1, 0, "test")


def setup(
    spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> tuple[Owner, Any]:
    body = md(spec, annotations=annotations)
    return Owner.from_body(body), parse_spec(body["spec"], name=body["metadata"]["name"])


def deployment(spec: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    owner, s = setup(spec, kw.pop("annotations", None))
    return render_deployment(owner, s, CONFIG, kw.pop("strategy", SURGE))


def pod(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return deployment(spec)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return pod(spec)["containers"][0]  # type: ignore[no-any-return]


def test_children_share_owner_reference_and_standard_labels() -> None:
    owner, s = setup({"autoscaling": {"maxReplicas": 4, "target": 3, "engine": "hpa"}})
    kinds = []
    for child in render_all(owner, s, CONFIG, SURGE):
        kinds.append(child["kind"])
        meta = child["metadata"]
        assert meta["name"] == "resnet" and meta["namespace"] == "ml"
        ref = meta["ownerReferences"][0]
        assert ref == {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "resnet",
            "uid": "uid-1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelfleet-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "resnet"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "modelfleet"
        assert meta["labels"]["app.kubernetes.io/version"] == "3"
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    assert "HorizontalPodAutoscaler" not in [c["kind"] for c in render_all(*setup(), CONFIG, SURGE)]


def test_scaled_object_targets_the_modeldeployment_with_a_prometheus_trigger() -> None:
    keda = {"serverAddress": "http://prometheus.monitoring:9090"}
    auto = {"minReplicas": 2, "maxReplicas": 6, "target": 2.5, "engine": "keda", "keda": keda}
    owner, s = setup({"autoscaling": auto})
    kinds = [c["kind"] for c in render_all(owner, s, CONFIG, SURGE)]
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget", "ScaledObject"]
    so = render_scaled_object(owner, s)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "resnet",
    }
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 6)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus.monitoring:9090",
        "query": 'sum(modelfleet_inflight_requests{namespace="ml",model="resnet"})',
        "threshold": "2500m",
    }
    owner, s = setup({"autoscaling": {"maxReplicas": 3, "metric": "cpu", "target": 70,
                                      "engine": "keda"}})  # fmt: skip
    assert render_scaled_object(owner, s)["spec"]["triggers"] == [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    ]


def test_whole_gpus_are_limits_with_product_affinity_and_toleration() -> None:
    p = pod({"gpu": {"count": 2}})
    c = p["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    term = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100]}
            ]
        }
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        p["tolerations"]
    )


def test_mig_slice_limits_the_mig_resource_not_whole_gpus() -> None:
    c = container({"gpu": {"count": None, "mig": "3g.40gb", "products": None}})
    assert c["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/mig-3g.40gb": "1"}


def test_cpu_only_has_no_gpu_toleration_or_affinity() -> None:
    p = pod({"gpu": None})
    assert "tolerations" not in p and "affinity" not in p
    assert "nvidia.com/gpu" not in p["containers"][0]["resources"]["limits"]


def test_user_affinity_terms_are_anded_with_gpu_product() -> None:
    user = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                ]
            }
        },
        "podAntiAffinity": {"x": 1},
    }
    p = pod(
        {
            "scheduling": {
                "affinity": user,
                "nodeSelector": {"pool": "gpu"},
                "priorityClassName": "serving",
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            }
        }
    )
    terms = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2
    for t in terms:
        assert t["matchExpressions"][-1]["key"] == "nvidia.com/gpu.product"
    assert p["affinity"]["podAntiAffinity"] == {"x": 1}
    assert p["nodeSelector"] == {"pool": "gpu"}
    assert p["priorityClassName"] == "serving"
    assert {"key": "dedicated", "operator": "Exists"} in p["tolerations"]
    # the input spec is not mutated by the merge
    assert (
        len(
            user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"]
        )
        == 1
    )


def test_gpu_memory_floor_becomes_gt_expression() -> None:
    p = pod({"gpu": {"minMemoryMiB": 40000}})
    exprs = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["39999"]} in exprs


def test_restricted_pod_security() -> None:
    p = pod({"model": {"uri": "https://example.com/m.tar"}})
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert p["automountServiceAccountToken"] is False
    for c in p["containers"] + p["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # writable tmp


def test_shm_is_memory_backed_and_sized() -> None:
    p = pod({"runtime": {"resources": {"shmSize": "4Gi"}}})
    shm = next(v for v in p["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in p["containers"][0]["volumeMounts"]


def test_probes_and_grace_period_cover_load_and_drain() -> None:
    p = pod({"runtime": {"startupTimeoutSeconds": 900, "drainTimeoutSeconds": 45}})
    c = p["containers"][0]
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert p["terminationGracePeriodSeconds"] >= 45 + prestop
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_pvc_model_is_mounted_read_only_without_fetch() -> None:
    p = pod()
    vol = next(v for v in p["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert "initContainers" not in p
    args = p["containers"][0]["args"]
    assert args[args.index("--model-dir") + 1] == "/models/resnet50/3"


def test_remote_model_is_fetched_by_an_init_container_with_digest() -> None:
    digest = "sha256:" + "a" * 64
    p = pod({"model": {"uri": "https://example.com/resnet.tar", "digest": digest}})
    init = p["initContainers"][0]
    assert init["args"] == [
        "fetch",
        "https://example.com/resnet.tar",
        "/models/model",
        "--digest",
        digest,
    ]
    vol = next(v for v in p["volumes"] if v["name"] == "model")
    assert "emptyDir" in vol
    args = p["containers"][0]["args"]
    assert args[args.index("--model-dir") + 1] == "/models/model"
    assert args[args.index("--digest") + 1] == digest


def test_image_defaults_from_operator_config_and_spec_overrides() -> None:
    assert container()["image"] == CONFIG.runtime_image
    assert container({"runtime": {"image": "mine:1"}})["image"] == "mine:1"


def test_simulated_load_annotation_is_passed_to_pods_only_by_prefix() -> None:
    d = deployment(annotations={"modelfleet.io/simulated-load-seconds": "3", "other": "x"})
    ann = d["spec"]["template"]["metadata"]["annotations"]
    assert ann["modelfleet.io/simulated-load-seconds"] == "3"
    assert "other" not in ann


def test_spread_across_nodes_per_revision() -> None:
    tsc = pod()["topologySpreadConstraints"][0]
    assert tsc["topologyKey"] == "kubernetes.io/hostname"
    assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "resnet"
    assert tsc["matchLabelKeys"] == ["pod-template-hash"]


def test_deployment_replicas_follow_spec_and_hpa_bounds() -> None:
    assert deployment({"replicas": 3})["spec"]["replicas"] == 3
    d = deployment(
        {"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "target": 1}}
    )
    assert d["spec"]["replicas"] == 2


def test_selector_is_stable_across_spec_changes() -> None:
    a = deployment()["spec"]["selector"]
    b = deployment({"model": {"version": "4"}, "gpu": {"count": 4}})["spec"]["selector"]
    assert a == b


@pytest.mark.parametrize(
    ("spec", "replicas", "spare", "want"),
    [
        ({}, 2, 3, "RollingUpdate(maxSurge=1,maxUnavailable=0)"),
        ({}, 2, 0, "RollingUpdate(maxSurge=0,maxUnavailable=1)"),
        ({}, 1, 0, "Recreate"),
        ({}, 2, None, "RollingUpdate(maxSurge=0,maxUnavailable=1)"),
        ({"gpu": None}, 1, None, "RollingUpdate(maxSurge=1,maxUnavailable=0)"),
        ({"rollout": {"strategy": "Recreate"}}, 3, 5, "Recreate"),
        (
            {"rollout": {"strategy": "RollingUpdate"}},
            3,
            0,
            "RollingUpdate(maxSurge=1,maxUnavailable=0)",
        ),
    ],
)
def test_auto_strategy_surges_only_with_spare_gpus(
    spec: dict[str, Any], replicas: int, spare: int | None, want: str
) -> None:
    _, s = setup(spec)
    st = choose_strategy(s, replicas, spare)
    assert st.describe() == want
    assert st.reason
    if spec == {} and spare == 0:
        assert "no free nvidia.com/gpu of product " + H100 in st.reason


def test_strategy_kept_for_the_same_template_redecided_for_a_new_one() -> None:
    owner, s = setup()
    chosen = Strategy("RollingUpdate", 0, 1, "no spare")
    dep = render_deployment(owner, s, CONFIG, chosen)
    h = dep["metadata"]["annotations"]["modelfleet.io/template-hash"]
    assert h == template_hash(dep["spec"]["template"])
    kept = existing_strategy(dep, h)
    assert kept is not None and kept.describe() == chosen.describe()
    assert kept.reason == "no spare"
    assert existing_strategy(dep, "0" * 16) is None
    assert existing_strategy(None, h) is None


def test_service_pdb_hpa() -> None:
    owner, s = setup(
        {
            "service": {"port": 9000},
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 6,
                "metric": "concurrency",
                "target": 2.5,
                "scaleDownStabilizationSeconds": 120,
            },
        }
    )
    svc = render_service(owner, s)
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == render_pdb(owner, s)["spec"]["selector"]["matchLabels"]
    assert service_url(owner, s) == "http://resnet.ml.svc:9000/v2/models/resnet"
    pdb = render_pdb(owner, s)["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    hpa = render_hpa(owner, s)["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "resnet",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "modelfleet_inflight_requests"},
                "target": {"type": "AverageValue", "averageValue": "2500m"},
            },
        }
    ]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_hpa_cpu_and_rps_metrics() -> None:
    owner, s = setup({"autoscaling": {"maxReplicas": 3, "metric": "cpu", "target": 70}})
    assert render_hpa(owner, s)["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    owner, s = setup({"autoscaling": {"maxReplicas": 3, "metric": "rps", "target": 100}})
    m = render_hpa(owner, s)["spec"]["metrics"][0]["pods"]
    assert m["metric"]["name"] == "modelfleet_requests_per_second"
    assert m["target"]["averageValue"] == "100"


def test_render_is_deterministic() -> None:
    assert deployment() == deployment()


@pytest.mark.parametrize(
    ("cpu", "memory", "want"),
    [
        ("100m", "256Mi", {"cpu": "100m", "memory": "256Mi"}),  # never above the runtime's
        ("2", "8Gi", {"cpu": "500m", "memory": "512Mi"}),  # never above what a fetch needs
        ("0.25", "1Gi", {"cpu": "0.25", "memory": "512Mi"}),
    ],
)
def test_fetch_init_container_never_raises_the_pods_request(
    cpu: str, memory: str, want: dict[str, str]
) -> None:
    from modelfleet_operator.render.deployment import fetch_resources  # noqa: PLC0415

    spec = parse_spec(
        {"model": {"uri": "s3://b/m"}, "runtime": {"resources": {"cpu": cpu, "memory": memory}}},
        name="m",
    )
    assert fetch_resources(spec)["requests"] == want
