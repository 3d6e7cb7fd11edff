"""The Deployment of serving pods, and the rollout strategy choice."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..spec import (
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    ModelDeploymentSpec,
    cpu_threads,
    parse_cpu_or_bytes,
)
from .common import (
    STRATEGY_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    Owner,
    RenderConfig,
    labels,
    metadata,
    passthrough_annotations,
    selector_labels,
)

CONTAINER = "runtime"
FETCH_CONTAINER = "fetch-model"
MODEL_MOUNT = "/models"
FETCH_DIR = f"{MODEL_MOUNT}/model"
RUN_AS = 65532  # the conventional "nonroot" uid/gid of distroless-style images
PRESTOP_SLEEP_S = 5  # lets endpoints drop the pod before SIGTERM starts the drain
GRACE_MARGIN_S = 10
PROBE_PERIOD_S = 5
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
# spec.auth: the Secret of key hashes, mounted where the runtime reads it every second
API_KEYS_MOUNT = "/etc/modelfleet/api-keys"
# On a running pod (never the template: that would restart it), the Secret revision it was
# told about; writing it makes the kubelet sync the pod and rewrite the mounted Secret now.
API_KEYS_REVISION_ANNOTATION = "modelfleet.io/api-keys-revision"


def metrics_port(spec: ModelDeploymentSpec) -> int:
    """Where the runtime serves /metrics: its own port with API keys, else the HTTP port."""
    return spec.service.metrics_port if spec.auth is not None else spec.service.port


@dataclass(frozen=True)
class Strategy:
    """A Deployment strategy plus the reason it was chosen (reported in status)."""

    type: str
    max_surge: int = 0
    max_unavailable: int = 0
    reason: str = ""

    def manifest(self) -> dict[str, Any]:
        if self.type == "Recreate":
            return {"type": "Recreate"}
        return {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable},
        }

    def describe(self) -> str:
        if self.type == "Recreate":
            return "Recreate"
        return f"RollingUpdate(maxSurge={self.max_surge},maxUnavailable={self.max_unavailable})"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any] | None, reason: str = "") -> Strategy | None:
        if not manifest:
            return None
        if manifest.get("type") == "Recreate":
            return cls("Recreate", reason=reason)
        ru = manifest.get("rollingUpdate") or {}
        surge, unavail = ru.get("maxSurge", 0), ru.get("maxUnavailable", 0)
        if not isinstance(surge, int) or not isinstance(unavail, int):
            return None  # percentages: not ours, re-decide
        return cls("RollingUpdate", surge, unavail, reason)


def choose_strategy(spec: ModelDeploymentSpec, replicas: int, spare_pods: int | None) -> Strategy:
    """Pick how a rollout replaces pods.

    ``spare_pods`` is how many extra pods of this shape the cluster can place right now
    (None when unknown). A surge pod that can never be scheduled would stall a rolling
    update forever, so Auto only surges when one fits.
    """
    asked = spec.rollout.strategy
    if asked == "Recreate":
        return Strategy("Recreate", reason="spec.rollout.strategy is Recreate")
    if asked == "RollingUpdate":
        return Strategy("RollingUpdate", 1, 0, "spec.rollout.strategy is RollingUpdate")
    if spec.gpu is None:
        return Strategy("RollingUpdate", 1, 0, "CPU-only pods: surge one new pod at a time")
    what = spec.gpu.resource + (
        f" of product {','.join(spec.gpu.products)}" if spec.gpu.products else ""
    )
    if spare_pods is not None and spare_pods >= 1:
        return Strategy(
            "RollingUpdate", 1, 0, f"a free {what} fits a surge pod: zero-downtime rolling update"
        )
    if replicas <= 1:
        return Strategy(
            "Recreate",
            reason=f"no free {what} for a surge pod: replacing the single replica in place",
        )
    return Strategy(
        "RollingUpdate",
        0,
        1,
        f"no free {what} for a surge pod: replacing one pod at a time (maxSurge 0)",
    )


def model_dir(spec: ModelDeploymentSpec) -> str:
    if spec.model.pvc_path is not None:
        return f"{MODEL_MOUNT}/{spec.model.pvc_path}"
    return FETCH_DIR


def serve_args(spec: ModelDeploymentSpec) -> list[str]:
    """The runtime's command line; tests check it against the runtime's own parser."""
    m, r = spec.model, spec.runtime
    threads = r.threads or cpu_threads(r.resources.cpu)
    args = [
        "serve",
        "--model-dir",
        model_dir(spec),
        "--name",
        m.name,
        "--version",
        m.version,
        "--format",
        m.format,
    ]
    if m.entrypoint:
        args += ["--entrypoint", m.entrypoint]
    if m.digest:
        args += ["--digest", m.digest]
    args += [
        "--device",
        r.device,
    ]
    if r.dtype:
        args += ["--dtype", r.dtype]
    args += [
        "--max-batch-size",
        str(r.batching.max_batch_size),
        "--max-batch-delay-ms",
        _num(r.batching.max_delay_ms),
        "--max-queue-size",
        str(r.batching.max_queue_size),
        "--host",
        "0.0.0.0",
        "--port",
        str(spec.service.port),
        "--drain-timeout",
        str(r.drain_timeout_s),
        "--max-body-bytes",
        str(r.max_body_bytes),
        "--overload-status",
        str(r.overload_status),
        "--threads",
        str(threads),
        "--log-level",
        r.log_level,
    ]
    auth = spec.auth
    if auth is not None:
        args += ["--api-keys", API_KEYS_MOUNT, "--metrics-port", str(spec.service.metrics_port)]
        if auth.requests_per_second is not None:
            args += ["--key-rate", _num(auth.requests_per_second)]
        if auth.burst is not None:
            args += ["--key-burst", str(auth.burst)]
        if auth.max_concurrency is not None:
            args += ["--key-concurrency", str(auth.max_concurrency)]
    return args


FETCH_CPU, FETCH_MEMORY, FETCH_MEMORY_LIMIT = "500m", "512Mi", "1Gi"


def _at_most(wanted: str, cap: str) -> str:
    value, most = parse_cpu_or_bytes(wanted), parse_cpu_or_bytes(cap)
    return wanted if value is not None and most is not None and value < most else cap


def fetch_resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The fetch init container asks for no more than the runtime does: a pod's request is
    the larger of its init containers' and the sum of its containers', so a fixed 500m
    would make every pod of a 100m model need 500m to schedule."""
    res = spec.runtime.resources
    return {
        "requests": {
            "cpu": _at_most(res.cpu, FETCH_CPU),
            "memory": _at_most(res.memory, FETCH_MEMORY),
        },
        "limits": {"memory": FETCH_MEMORY_LIMIT},
    }


def fetch_args(spec: ModelDeploymentSpec) -> list[str]:
    args = ["fetch", spec.model.uri, FETCH_DIR]
    if spec.model.digest:
        args += ["--digest", spec.model.digest]
    return args


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _node_affinity_terms(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    exprs: list[dict[str, Any]] = []
    if spec.gpu is not None and spec.gpu.products:
        exprs.append(
            {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(spec.gpu.products)}
        )
    if spec.gpu is not None and spec.gpu.min_memory_mib:
        exprs.append(
            {
                "key": GPU_MEMORY_LABEL,
                "operator": "Gt",
                "values": [str(spec.gpu.min_memory_mib - 1)],
            }
        )
    return exprs


def _affinity(spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """GPU node-affinity expressions ANDed into every required term the user gave."""
    user = json.loads(json.dumps(spec.scheduling.affinity or {}))  # deep copy
    ours = _node_affinity_terms(spec)
    if ours:
        node = user.setdefault("nodeAffinity", {})
        required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = required.get("nodeSelectorTerms") or [{}]
        for term in terms:
            term["matchExpressions"] = list(term.get("matchExpressions") or []) + ours
        required["nodeSelectorTerms"] = terms
    return user or None


def _tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if spec.gpu is not None:
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    out += [dict(t) for t in spec.scheduling.tolerations if dict(t) not in out]
    return out


def render_pod_template(
    owner: Owner, spec: ModelDeploymentSpec, config: RenderConfig
) -> dict[str, Any]:
    r = spec.runtime
    image = r.image or config.runtime_image
    pull = r.image_pull_policy or config.image_pull_policy
    limits: dict[str, str] = {"memory": r.resources.memory}
    if spec.gpu is not None:
        # Extended resources go in limits; the scheduler never overcommits them.
        limits[spec.gpu.resource] = str(spec.gpu.quantity)
    pvc = spec.model.pvc_claim
    model_volume: dict[str, Any] = (
        {"name": "model", "persistentVolumeClaim": {"claimName": pvc, "readOnly": True}}
        if pvc
        else {"name": "model", "emptyDir": {"sizeLimit": r.resources.model_cache_size}}
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": pull,
        "command": ["modelfleet-runtime"],
        "args": serve_args(spec),
        "ports": [{"name": "http", "containerPort": spec.service.port, "protocol": "TCP"}],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {
            "requests": {"cpu": r.resources.cpu, "memory": r.resources.memory},
            "limits": limits,
        },
        # Model download + load + warm-up can take minutes; liveness starts only after it.
        "startupProbe": _probe(
            READY_PATH, PROBE_PERIOD_S, math.ceil(r.startup_timeout_s / PROBE_PERIOD_S), 2
        ),
        "readinessProbe": _probe(READY_PATH, PROBE_PERIOD_S, 2, 2),
        "livenessProbe": _probe(LIVE_PATH, 10, 3, 5),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "securityContext": _container_security(),
        # The runtime writes load failures to /dev/termination-log; the operator reads them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the runtime never calls the API
        # Set explicitly (they are the defaults) so that a hand edit turning one on is drift
        # the operator sees and undoes, not a field someone else owns.
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": r.drain_timeout_s + PRESTOP_SLEEP_S + GRACE_MARGIN_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            model_volume,
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": r.resources.shm_size}},
        ],
        "topologySpreadConstraints": [
            {
                "maxSkew": spec.scheduling.topology_spread.max_skew,
                "topologyKey": spec.scheduling.topology_spread.topology_key,
                "whenUnsatisfiable": spec.scheduling.topology_spread.when_unsatisfiable,
                "labelSelector": {"matchLabels": selector_labels(owner)},
                # Spread each revision on its own, so old pods do not skew a rollout.
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    }
    if spec.auth is not None:
        container["ports"].append(
            {"name": "metrics", "containerPort": spec.service.metrics_port, "protocol": "TCP"}
        )
        container["volumeMounts"].append(
            {"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True}
        )
        secret = {"secretName": spec.auth.secret_name, "defaultMode": 0o444}
        pod["volumes"].append({"name": "api-keys", "secret": secret})
    if not pvc:
        pod["initContainers"] = [
            {
                "name": FETCH_CONTAINER,
                "image": image,
                "imagePullPolicy": pull,
                "command": ["modelfleet-runtime"],
                "args": fetch_args(spec),
                "env": [{"name": "HOME", "value": "/tmp"}],
                "resources": fetch_resources(spec),
                "securityContext": _container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "model", "mountPath": MODEL_MOUNT},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ]
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    affinity = _affinity(spec)
    if affinity:
        pod["affinity"] = affinity
    if spec.scheduling.node_selector:
        pod["nodeSelector"] = dict(spec.scheduling.node_selector)
    if spec.scheduling.priority_class_name:
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port(spec)),
        "prometheus.io/path": "/metrics",
        "kubectl.kubernetes.io/default-container": CONTAINER,
        # Cluster Autoscaler never removes a node whose pods have emptyDir volumes unless they
        # are named here: ours hold only what a new pod fetches again (the model cache,
        # scratch, shared memory), so an idle GPU node may go.
        SAFE_TO_EVICT_LOCAL_VOLUMES: ",".join(v["name"] for v in pod["volumes"] if "emptyDir" in v),
        **passthrough_annotations(owner),
    }
    return {"metadata": {"labels": labels(owner, spec), "annotations": annotations}, "spec": pod}


SAFE_TO_EVICT_LOCAL_VOLUMES = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def render_deployment(
    owner: Owner, spec: ModelDeploymentSpec, config: RenderConfig, strategy: Strategy
) -> dict[str, Any]:
    template = render_pod_template(owner, spec, config)
    meta = metadata(owner, spec)
    meta["annotations"] = {
        TEMPLATE_HASH_ANNOTATION: template_hash(template),
        STRATEGY_ANNOTATION: strategy.reason,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            # With autoscaling on, spec.replicas is the HPA's (written via our scale
            # subresource), so mirroring it here never fights the autoscaler.
            "replicas": spec.desired_replicas(),
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": strategy.manifest(),
            "progressDeadlineSeconds": spec.rollout.progress_deadline_s,
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


_HASH_RE = re.compile(r"^[0-9a-f]{16}$")


def existing_strategy(deployment: Mapping[str, Any] | None, wanted_hash: str) -> Strategy | None:
    """The strategy of a Deployment already running this exact template, if any.

    Re-deciding on every reconcile would flip the strategy as the surge pod itself takes
    the free GPU; the choice is made once per template and kept.
    """
    if not deployment:
        return None
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    current = annotations.get(TEMPLATE_HASH_ANNOTATION, "")
    if not _HASH_RE.match(current) or current != wanted_hash:
        return None
    return Strategy.from_manifest(
        (deployment.get("spec") or {}).get("strategy"), annotations.get(STRATEGY_ANNOTATION, "")
    )
