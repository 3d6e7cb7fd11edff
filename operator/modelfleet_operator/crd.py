"""The ModelDeployment CRD: the single source of truth for crds/modelfleet.io_modeldeployments.yaml.

`python -m modelfleet_operator.crd` prints the YAML; `--write PATH` writes it (`--check PATH`
exits 1 when PATH differs). Every field carries a description so `kubectl explain` teaches the
API; cross-field rules are CEL (`x-kubernetes-validations`) so `kubectl apply` refuses a bad
manifest with the field named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .spec import (
    DEFAULTS,
    DEVICES,
    DIGEST_PATTERN,
    DTYPES,
    ENGINE_METRICS,
    ENGINES,
    ENTRYPOINT_PATTERN,
    FORMATS,
    GROUP,
    KIND,
    LOG_LEVELS,
    MAX_NAME_LENGTH,
    MAX_WARM_REPLICAS,
    METRICS,
    MIG_PATTERN,
    MODEL_NAME_PATTERN,
    OVERLOAD_STATUSES,
    PLURAL,
    SECRET_NAME_PATTERN,
    SERVICE_TYPES,
    SPREAD_WHEN,
    STRATEGIES,
    VERSION,
)

Schema = dict[str, Any]
CRD_FILE = "modelfleet.io_modeldeployments.yaml"

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


def _d(key: str) -> dict[str, Any]:
    return {"default": DEFAULTS[key]}


def string(desc: str, **kw: Any) -> Schema:
    return {"type": "string", "description": desc, **kw}


def integer(desc: str, **kw: Any) -> Schema:
    return {"type": "integer", "format": "int32", "description": desc, **kw}


def number(desc: str, **kw: Any) -> Schema:
    return {"type": "number", "description": desc, **kw}


def quantity(desc: str, **kw: Any) -> Schema:
    # Quantities stay strings here so CEL and printing are predictable; "2" and 2 both parse.
    # The pattern only applies to the string form; integers are always valid quantities.
    return {
        "x-kubernetes-int-or-string": True,
        "description": desc,
        "pattern": QUANTITY_PATTERN,
        **kw,
    }


def obj(
    desc: str,
    props: dict[str, Schema],
    *,
    required: list[str] | None = None,
    rules: list[dict[str, str]] | None = None,
    **kw: Any,
) -> Schema:
    out: Schema = {"type": "object", "description": desc, "properties": props, **kw}
    if required:
        out["required"] = required
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def rule(
    expr: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    out = {"rule": expr, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def model_schema() -> Schema:
    return obj(
        "Where the model comes from and how the runtime loads and names it.",
        {
            "uri": string(
                "Location of the model directory: pvc://<claim>/<path> mounts a "
                "PersistentVolumeClaim read-only; http://, https:// and s3:// are fetched by an "
                "init container into an emptyDir; file:// is for local development.",
                maxLength=2048,
                **{
                    "x-kubernetes-validations": [
                        rule(
                            "self.matches('^(pvc|https?|s3|file)://.+')",
                            "must start with pvc://, http://, https://, s3:// or file://",
                            reason="FieldValueInvalid",
                        ),
                        rule(
                            "!self.startsWith('pvc://') || "
                            "self.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^/].*$')",
                            "a pvc:// URI is pvc://<claim>/<path within the claim>",
                            reason="FieldValueInvalid",
                        ),
                    ]
                },
            ),
            "format": string(
                "Serialization of the weights: torchscript (.pt), torch-export "
                "(.pt2) or safetensors (needs entrypoint).",
                enum=list(FORMATS),
                **_d("model.format"),
            ),
            "entrypoint": string(
                "module:callable that builds the network for a safetensors "
                "state dict, e.g. mypkg.nets:build. Required for safetensors.",
                pattern=ENTRYPOINT_PATTERN,
                maxLength=256,
            ),
            "digest": string(
                "Optional sha256:<64 hex> pin of the model; the runtime refuses "
                "to start on a mismatch.",
                pattern=DIGEST_PATTERN,
            ),
            "name": string(
                "Name the model is served under (/v2/models/<name>); defaults to metadata.name.",
                pattern=MODEL_NAME_PATTERN,
                maxLength=63,
            ),
            "version": string(
                "Model version reported by the runtime and in status.",
                pattern=MODEL_NAME_PATTERN,
                maxLength=63,
                **_d("model.version"),
            ),
        },
        required=["uri"],
        rules=[
            rule(
                "self.format != 'safetensors' || has(self.entrypoint)",
                "entrypoint is required when format is safetensors",
                field_path=".entrypoint",
                reason="FieldValueRequired",
            )
        ],
    )


def runtime_schema() -> Schema:
    batching = obj(
        "Dynamic batching: requests are merged into one forward pass up to maxBatchSize rows "
        "or maxDelayMilliseconds of waiting, whichever comes first.",
        {
            "maxBatchSize": integer(
                "Largest batch one forward pass takes.",
                minimum=1,
                maximum=4096,
                **_d("runtime.batching.maxBatchSize"),
            ),
            "maxDelayMilliseconds": number(
                "Longest a request waits for a batch to fill.",
                minimum=0,
                maximum=10000,
                **_d("runtime.batching.maxDelayMilliseconds"),
            ),
            "maxQueueSize": integer(
                "Requests queued beyond this are refused at once "
                "(overloadStatus) instead of adding latency.",
                minimum=1,
                maximum=1000000,
                **_d("runtime.batching.maxQueueSize"),
            ),
        },
        # has(): the apiserver also checks the rule against the bare default {}.
        rules=[
            rule(
                "!has(self.maxQueueSize) || !has(self.maxBatchSize) || "
                "self.maxQueueSize >= self.maxBatchSize",
                "maxQueueSize must be >= maxBatchSize",
                field_path=".maxQueueSize",
            )
        ],
        default={},
    )
    resources = obj(
        "Compute for each serving pod (GPUs are set in spec.gpu).",
        {
            "cpu": quantity(
                "CPU request per pod (no CPU limit, to avoid throttling).",
                **_d("runtime.resources.cpu"),
            ),
            "memory": quantity(
                "Memory request and limit per pod.", **_d("runtime.resources.memory")
            ),
            "shmSize": quantity(
                "Size of the memory-backed /dev/shm (torch data loaders and "
                "NCCL need more than the container default of 64Mi).",
                **_d("runtime.resources.shmSize"),
            ),
            "modelCacheSize": quantity(
                "Size limit of the emptyDir a fetched (non-pvc) model is downloaded into.",
                **_d("runtime.resources.modelCacheSize"),
            ),
        },
        default={},
    )
    return obj(
        "The serving runtime container.",
        {
            "image": string(
                "Runtime image; defaults to the operator's configured image "
                "(--runtime-image / MODELFLEET_RUNTIME_IMAGE).",
                maxLength=512,
            ),
            "imagePullPolicy": string(
                "Image pull policy for the runtime container.",
                enum=["Always", "IfNotPresent", "Never"],
            ),
            "device": string(
                "Where the model runs: auto picks cuda when a GPU is visible.",
                enum=list(DEVICES),
                **_d("runtime.device"),
            ),
            "dtype": string(
                "Floating point type the weights and inputs are cast to on "
                "load; unset keeps the dtype the model was saved in.",
                enum=list(DTYPES),
            ),
            "threads": integer(
                "Torch intra-op threads; default derives from the CPU request.",
                minimum=1,
                maximum=256,
            ),
            "logLevel": string(
                "Runtime log level.", enum=list(LOG_LEVELS), **_d("runtime.logLevel")
            ),
            "drainTimeoutSeconds": integer(
                "On SIGTERM the runtime stops taking work and finishes accepted requests for at "
                "most this long; the pod's termination grace period covers it.",
                minimum=1,
                maximum=3600,
                **_d("runtime.drainTimeoutSeconds"),
            ),
            "startupTimeoutSeconds": integer(
                "How long model download, load and warm-up may take before the startup probe "
                "gives up and the container is restarted.",
                minimum=10,
                maximum=7200,
                **_d("runtime.startupTimeoutSeconds"),
            ),
            "maxBodyBytes": integer(
                "Largest request body accepted (413 beyond).",
                minimum=1024,
                format="int64",
                **_d("runtime.maxBodyBytes"),
            ),
            "overloadStatus": integer(
                "HTTP status answered when the queue is full: 503 or 429.",
                enum=list(OVERLOAD_STATUSES),
                **_d("runtime.overloadStatus"),
            ),
            "batching": batching,
            "resources": resources,
        },
        default={},
    )


def gpu_schema() -> Schema:
    return obj(
        "GPUs for each serving pod: whole GPUs (count) or one MIG slice (mig), limited as "
        "extended resources; omit for CPU-only serving.",
        {
            "count": integer(
                "Whole GPUs per pod (limits nvidia.com/gpu); 1 when neither count nor mig is set.",
                minimum=1,
                maximum=16,
            ),
            "products": {
                "type": "array",
                "description": "Accepted GPU products (node label nvidia.com/gpu.product, as "
                "published by GPU Feature Discovery), e.g. "
                "NVIDIA-H100-80GB-HBM3. Empty accepts any.",
                "items": string("A GPU product name.", minLength=1, maxLength=128),
                "maxItems": 16,
                "x-kubernetes-list-type": "set",
            },
            "mig": string(
                "MIG profile for one slice per pod, e.g. 1g.10gb (limits "
                "nvidia.com/mig-<profile>; needs a MIG mixed-strategy node).",
                pattern=MIG_PATTERN,
                maxLength=32,
            ),
            "minMemoryMiB": integer(
                "Only nodes whose GPUs have at least this much memory "
                "(node label nvidia.com/gpu.memory).",
                minimum=1,
            ),
        },
        rules=[
            rule(
                "!(has(self.count) && has(self.mig))",
                "set count (whole GPUs) or mig (one MIG slice), not both",
                field_path=".mig",
                reason="FieldValueForbidden",
            )
        ],
    )


def autoscaling_schema() -> Schema:
    builtin_metrics = ", ".join(f"'{m}'" for m in ENGINE_METRICS["builtin"])
    return obj(
        "Horizontal autoscaling: exactly one engine owns spec.replicas (through the scale "
        "subresource) while this is set.",
        {
            "engine": string(
                "Who scales: builtin (the operator scrapes the runtime pods' /metrics every "
                "second and writes the scale subresource; no Prometheus or metrics adapter "
                "needed; the default for concurrency and rps), hpa (a HorizontalPodAutoscaler; "
                "the default for cpu; concurrency and rps then need a custom metrics adapter), "
                "or keda (a KEDA ScaledObject; needs KEDA installed).",
                enum=list(ENGINES),
            ),
            "minReplicas": integer(
                "Fewest replicas. 0 scales to zero when idle (engine builtin): the activator "
                "then holds requests while no replica is ready and asks for one at once.",
                minimum=0,
                maximum=1000,
                **_d("autoscaling.minReplicas"),
            ),
            "maxReplicas": integer("Most replicas.", minimum=1, maximum=1000),
            "metric": string(
                "What drives scaling: concurrency (in-flight plus queued requests per pod), "
                "rps (requests per second per pod), or cpu (utilization percent of the CPU "
                "request; engine hpa or keda).",
                enum=list(METRICS),
                **_d("autoscaling.metric"),
            ),
            "target": number(
                "Target value per pod: in-flight requests, requests/s, or CPU utilization percent.",
                exclusiveMinimum=True,
                minimum=0,
            ),
            "scaleUpStabilizationSeconds": integer(
                "Window looked back over before scaling up (the highest recommendation in it "
                "wins; 0 scales up at once).",
                minimum=0,
                maximum=3600,
                **_d("autoscaling.scaleUpStabilizationSeconds"),
            ),
            "scaleDownStabilizationSeconds": integer(
                "Window looked back over before scaling down: the builtin engine scales down "
                "only to the highest recommendation of this window (model loads are slow; do "
                "not flap).",
                minimum=0,
                maximum=3600,
                **_d("autoscaling.scaleDownStabilizationSeconds"),
            ),
            "scaleToZero": obj(
                "With minReplicas 0: how the activator holds requests while no replica is "
                "ready (a cold start: maybe a new GPU node, then the model load).",
                {
                    "maxHeldRequests": integer(
                        "Requests held at once per activator; above it callers get 503 with "
                        "Retry-After.",
                        minimum=1,
                        maximum=100000,
                        **_d("autoscaling.scaleToZero.maxHeldRequests"),
                    ),
                    "holdTimeoutSeconds": integer(
                        "How long a request is held before it is answered 504.",
                        minimum=1,
                        maximum=86400,
                        **_d("autoscaling.scaleToZero.holdTimeoutSeconds"),
                    ),
                },
            ),
            "keda": obj(
                "Engine keda: where its prometheus trigger reads the runtime's metrics.",
                {
                    "serverAddress": string(
                        "URL of the Prometheus that scrapes the runtime pods' /metrics, e.g. "
                        "http://prometheus.monitoring:9090. Required for concurrency and rps.",
                        maxLength=2048,
                    ),
                    "query": string(
                        "PromQL giving the total demand (its value over target is the desired "
                        "replica count); defaults to the sum of modelfleet_inflight_requests "
                        "and modelfleet_queue_depth (or the rate of modelfleet_requests_total "
                        "for rps) of this model in this namespace.",
                        maxLength=4096,
                    ),
                },
            ),
        },
        required=["maxReplicas", "target"],
        rules=[
            rule(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must be <= maxReplicas",
                field_path=".minReplicas",
            ),
            rule(
                "self.metric != 'cpu' || (self.target >= 1.0 && self.target <= 1000.0)",
                "target for metric cpu is a utilization percent between 1 and 1000",
                field_path=".target",
            ),
            rule(
                "!has(self.engine) || self.engine != 'builtin' || "
                f"self.metric in [{builtin_metrics}]",
                "engine builtin scales on concurrency or rps; use engine hpa or keda for cpu",
                field_path=".engine",
            ),
            rule(
                "!has(self.engine) || self.engine != 'keda' || self.metric == 'cpu' || "
                "(has(self.keda) && has(self.keda.serverAddress))",
                "engine keda on concurrency or rps needs keda.serverAddress (the Prometheus "
                "that scrapes the runtime)",
                field_path=".keda.serverAddress",
                reason="FieldValueRequired",
            ),
            rule(
                "self.minReplicas > 0 || (has(self.engine) ? self.engine == 'builtin' : "
                "self.metric != 'cpu')",
                "minReplicas 0 (scale to zero) needs engine builtin, whose activator holds "
                "requests while no replica is ready",
                field_path=".minReplicas",
            ),
            rule(
                "!has(self.scaleToZero) || self.minReplicas == 0",
                "scaleToZero is only read with minReplicas 0",
                field_path=".scaleToZero",
            ),
            rule(
                "!has(self.keda) || (has(self.engine) && self.engine == 'keda')",
                "keda is only read by engine keda",
                field_path=".keda",
            ),
        ],
    )


def scheduling_schema() -> Schema:
    toleration = obj(
        "A toleration added to the serving pods (the nvidia.com/gpu toleration is added for "
        "GPU pods automatically).",
        {
            "key": string(
                "Taint key the toleration applies to; empty with Exists matches all.", maxLength=317
            ),
            "operator": string("Exists or Equal.", enum=["Exists", "Equal"]),
            "value": string("Taint value for operator Equal.", maxLength=63),
            "effect": string(
                "Taint effect to match; empty matches all.",
                enum=["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ),
            "tolerationSeconds": integer(
                "For NoExecute: how long the pod stays bound.", format="int64"
            ),
        },
    )
    return obj(
        "Extra placement constraints for the serving pods.",
        {
            "nodeSelector": {
                "type": "object",
                "description": "Node labels the pods must match (added to the GPU product "
                "affinity).",
                "additionalProperties": {"type": "string"},
            },
            "tolerations": {
                "type": "array",
                "description": "Extra tolerations.",
                "items": toleration,
                "maxItems": 32,
            },
            "affinity": {
                "type": "object",
                "description": "A core/v1 Affinity merged into the pod's affinity "
                "(node affinity terms are ANDed with the GPU product term).",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "priorityClassName": string("PriorityClass for the serving pods.", maxLength=253),
            "topologySpread": obj(
                "How replicas spread across a topology domain (nodes by default), so one node "
                "failure does not take every replica.",
                {
                    "topologyKey": string(
                        "Node label naming the domain.",
                        maxLength=317,
                        **_d("scheduling.topologySpread.topologyKey"),
                    ),
                    "maxSkew": integer(
                        "Largest allowed difference in replicas between domains.",
                        minimum=1,
                        **_d("scheduling.topologySpread.maxSkew"),
                    ),
                    "whenUnsatisfiable": string(
                        "ScheduleAnyway prefers spreading; DoNotSchedule requires it.",
                        enum=list(SPREAD_WHEN),
                        **_d("scheduling.topologySpread.whenUnsatisfiable"),
                    ),
                },
                default={},
            ),
        },
        default={},
    )


def spec_schema() -> Schema:
    return obj(
        "Desired state: which model, on what hardware, how many replicas.",
        {
            "model": model_schema(),
            "runtime": runtime_schema(),
            "gpu": gpu_schema(),
            "replicas": integer(
                "Serving pods to run. While autoscaling is set its engine (builtin, HPA or "
                "KEDA) writes this through the scale subresource; leave it out of applied "
                "manifests then.",
                minimum=0,
                maximum=1000,
                **_d("replicas"),
            ),
            "autoscaling": autoscaling_schema(),
            "rollout": obj(
                "How a spec change replaces pods.",
                {
                    "strategy": string(
                        "Auto surges one extra pod only when a free GPU of an accepted product "
                        "exists, otherwise replaces pods in place (maxSurge 0) so a rollout "
                        "never waits on a GPU that is not there; RollingUpdate always surges; "
                        "Recreate stops all old pods first.",
                        enum=list(STRATEGIES),
                        **_d("rollout.strategy"),
                    ),
                    "progressDeadlineSeconds": integer(
                        "A rollout making no progress this long is reported Degraded.",
                        minimum=60,
                        **_d("rollout.progressDeadlineSeconds"),
                    ),
                },
                default={},
            ),
            "scheduling": scheduling_schema(),
            "service": obj(
                "The Service in front of the serving pods.",
                {
                    "port": integer(
                        "Port of the Service and of the runtime's HTTP server "
                        "(Open Inference Protocol v2 and /metrics).",
                        minimum=1,
                        maximum=65535,
                        **_d("service.port"),
                    ),
                    "type": string("Service type.", enum=list(SERVICE_TYPES), **_d("service.type")),
                    "metricsPort": integer(
                        "With spec.auth: the pods' port for /metrics (Prometheus and the builtin "
                        "autoscaler scrape it; the Service does not expose it), so metrics are "
                        "never served to a caller's key. Without spec.auth, /metrics is on "
                        "service.port.",
                        minimum=1,
                        maximum=65535,
                        **_d("service.metricsPort"),
                    ),
                },
                default={},
            ),
            "auth": obj(
                "API keys for callers. Every inference and metadata route then needs "
                "`Authorization: Bearer <key>` (or `X-API-Key`); only the health probes "
                "answer without one. Keys are stored as hashes only: mint one with "
                "`modelfleet-runtime mint-key <id> --secret <name>`, which prints the key "
                "once and a Secret holding its sha256. A changed Secret takes effect in the "
                "pods within seconds, without a restart.",
                {
                    "apiKeys": obj(
                        "Where the keys' hashes are.",
                        {
                            "secretName": string(
                                "A Secret in this namespace: each data key is a key id (1-32 "
                                "of a-z, 0-9, '-'), each value `sha256:<64 hex digits>` of "
                                'the key. Label it `modelfleet.io/api-keys: "true"` so '
                                "changes reach the pods within seconds (unlabelled: within "
                                "the kubelet's sync period, about a minute).",
                                pattern=SECRET_NAME_PATTERN,
                                maxLength=253,
                            ),
                        },
                        required=["secretName"],
                    ),
                    "limits": obj(
                        "Limits per key, in each replica; past them the key's requests get "
                        "429 with Retry-After.",
                        {
                            "requestsPerSecond": number(
                                "Requests per second each key may make (a token bucket).",
                                exclusiveMinimum=True,
                                minimum=0,
                                maximum=1_000_000,
                            ),
                            "burst": integer(
                                "Requests a key may make at once above the rate (default: "
                                "requestsPerSecond rounded up).",
                                minimum=1,
                                maximum=1_000_000,
                            ),
                            "maxConcurrency": integer(
                                "Requests each key may have in flight.",
                                minimum=1,
                                maximum=100_000,
                            ),
                        },
                        rules=[
                            rule(
                                "!has(self.burst) || has(self.requestsPerSecond)",
                                "burst needs requestsPerSecond",
                                field_path=".burst",
                            )
                        ],
                    ),
                },
                required=["apiKeys"],
            ),
            "warmCapacity": obj(
                "Room kept ready for more replicas, so a scale-up does not wait for a node: "
                "placeholder pods (a pause container each) that ask for exactly what one "
                "serving pod asks for (GPUs, CPU, memory, the same node selection) at a "
                "negative priority, so the scheduler evicts one the moment a real replica "
                "needs its room, and a node autoscaler brings a node up for the displaced "
                "placeholder. Costs what the held nodes cost while idle.",
                {
                    "replicas": integer(
                        "Serving pods' worth of room to hold (0: none).",
                        minimum=0,
                        maximum=MAX_WARM_REPLICAS,
                        **_d("warmCapacity.replicas"),
                    ),
                },
            ),
        },
        required=["model"],
        rules=[
            rule(
                "!(has(self.gpu) && has(self.runtime) && has(self.runtime.device) && "
                "self.runtime.device == 'cpu')",
                "runtime.device is cpu but gpu requests GPUs",
                field_path=".runtime.device",
            ),
            rule(
                "has(self.gpu) || !has(self.runtime) || !has(self.runtime.device) || "
                "self.runtime.device != 'cuda'",
                "runtime.device cuda needs spec.gpu",
                field_path=".runtime.device",
            ),
            rule(
                "!has(self.auth) || !has(self.service) || !has(self.service.port) || "
                "!has(self.service.metricsPort) || self.service.port != self.service.metricsPort",
                "with auth, service.metricsPort must differ from service.port",
                field_path=".service.metricsPort",
            ),
        ],
    )


def condition_schema() -> Schema:
    return obj(
        "A condition per the Kubernetes API conventions.",
        {
            "type": string(
                "Ready, Available, Progressing, Degraded, or ScalingActive (while "
                "spec.autoscaling is set)."
            ),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("CamelCase reason, a constant per cause."),
            "message": string("Human-readable detail."),
            "lastTransitionTime": string("When status last changed.", format="date-time"),
            "observedGeneration": integer(
                "metadata.generation this condition was computed for.", format="int64"
            ),
        },
        required=["type", "status"],
    )


def status_schema() -> Schema:
    return obj(
        "Observed state, written by the operator.",
        {
            "observedGeneration": integer(
                "metadata.generation the operator last reconciled.", format="int64"
            ),
            "conditions": {
                "type": "array",
                "description": "Ready, Available, Progressing, Degraded and (with autoscaling) "
                "ScalingActive: whether the autoscaling engine can read its metric and act, "
                "with the engine's reason (the HPA's or KEDA's own when they own scaling).",
                "items": condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "replicas": integer("Serving pods that exist (read by the scale subresource)."),
            "readyReplicas": integer("Serving pods passing readiness."),
            "updatedReplicas": integer("Serving pods running the current spec."),
            "availableReplicas": integer("Ready pods that have been ready long enough."),
            "selector": string(
                "Label selector of the serving pods (for the scale subresource and HPA)."
            ),
            "url": string("In-cluster inference URL of the model."),
            "autoscaling": obj(
                "What the autoscaling engine last saw and decided (with spec.autoscaling).",
                {
                    "engine": string("builtin, hpa or keda."),
                    "currentReplicas": integer("Replicas the engine last saw requested."),
                    "desiredReplicas": integer("Replicas the engine wants now."),
                    "lastDecision": string(
                        'The last change the engine made and why, e.g. "3 -> 5: 18 in flight '
                        '(2 queued) over 3 ready at target 4, panic" (builtin).'
                    ),
                    "lastDecisionTime": string("When it was made.", format="date-time"),
                },
            ),
            "warmCapacity": obj(
                "The placeholder pods of spec.warmCapacity.",
                {
                    "replicas": integer("Placeholder pods wanted."),
                    "readyReplicas": integer("Placeholder pods holding room on a node."),
                    "message": string("Why room is missing, when it is."),
                },
            ),
            "auth": obj(
                "The API keys of spec.auth, as the operator last saw their Secret (ids only: "
                "no key or hash is ever copied here).",
                {
                    "secretName": string("The Secret holding the keys' hashes."),
                    "keyIds": {
                        "type": "array",
                        "description": "The ids of the keys the pods accept.",
                        "items": string("A key id."),
                    },
                    "secretRevision": string(
                        "The Secret's resourceVersion the pods were last told to read."
                    ),
                    "message": string("What is wrong with the Secret, when something is."),
                },
            ),
            "usage": obj(
                "With spec.gpu: what the GPUs cost, from the ready serving pods' own figures "
                "(refreshed every 2 minutes).",
                {
                    "idleGPUHoursLastHour": string(
                        "GPU-hours held over the last hour with no request in flight or "
                        'queued, e.g. "0.75" (2 decimals): GPUs times idle hours, summed '
                        "over the pods that run now."
                    ),
                    "gpus": integer("GPUs the reporting pods hold."),
                    "reportingPods": integer("Ready pods whose figures are counted."),
                    "energySource": string(
                        "Where the pods' energy figures come from: \"nvml\" (the driver's "
                        'energy counter) or "none" (not measured).'
                    ),
                    "message": string("Why the figure covers fewer pods than are ready."),
                },
            ),
            "rolloutStrategy": string("The Deployment strategy the operator chose and why."),
            "model": obj(
                "The model being served.",
                {
                    "name": string("Served model name."),
                    "version": string("Served model version."),
                    "digest": string("Pinned digest, if any."),
                },
            ),
            "summary": obj(
                "Short texts for kubectl's columns.",
                {
                    "replicas": string("ready/desired."),
                    "gpu": string("GPUs per pod."),
                    "model": string("name:version."),
                },
            ),
        },
    )


def printer_columns() -> list[dict[str, Any]]:
    ready_cond = '.status.conditions[?(@.type=="Ready")]'
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": f"{ready_cond}.status",
            "description": "All desired replicas run the current spec and are ready.",
        },
        {
            "name": "Replicas",
            "type": "string",
            "jsonPath": ".status.summary.replicas",
            "description": "Ready/desired serving pods.",
        },
        {
            "name": "GPU",
            "type": "string",
            "jsonPath": ".status.summary.gpu",
            "description": "GPUs per pod.",
        },
        {
            "name": "Model",
            "type": "string",
            "jsonPath": ".status.summary.model",
            "description": "Served model name:version.",
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": f"{ready_cond}.reason",
            "description": "Why Ready is what it is.",
        },
        {
            "name": "Scaling",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="ScalingActive")].reason',
            "description": "ScalingActive's reason: whether the autoscaler can act.",
        },
        {
            "name": "URL",
            "type": "string",
            "jsonPath": ".status.url",
            "priority": 1,
            "description": "In-cluster inference URL.",
        },
        {
            "name": "Strategy",
            "type": "string",
            "jsonPath": ".status.rolloutStrategy",
            "priority": 1,
            "description": "Chosen rollout strategy.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a plain dict."""
    schema = obj(
        "A model served by the modelfleet runtime on GPU-scheduled pods, with a Service, a "
        "PodDisruptionBudget and optional autoscaling.",
        {
            "apiVersion": string("API version of this object."),
            "kind": string("ModelDeployment."),
            # The apiserver allows nothing but the type here (metadata is implicit).
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        required=["spec"],
        rules=[
            rule(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH} && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS-1035 label (it names the Service): lowercase "
                "letters, digits and '-', starting with a letter, at most 63 characters",
            )
        ],
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "modelfleet",
                "app.kubernetes.io/part-of": "modelfleet",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "modeldeployment",
                "shortNames": ["mdep"],
                "categories": ["modelfleet"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }


def render_yaml() -> str:
    header = (
        "# Generated by `python -m modelfleet_operator.crd --write crds/`: do not edit.\n"
        "# Source of truth: operator/modelfleet_operator/crd.py\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def _doc_rows(node: Schema, path: str, required: bool) -> list[str]:
    kind = node.get("type") or ("int or string" if node.get("x-kubernetes-int-or-string") else "")
    if kind == "array" and isinstance(node.get("items"), dict):
        kind = f"[]{node['items'].get('type', '')}"
    details = []
    if "enum" in node:
        details.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "default" in node and node["default"] != {}:
        details.append(f"default `{node['default']}`")
    if "minimum" in node or "maximum" in node:
        lo = node.get("minimum", "")
        op = " < " if node.get("exclusiveMinimum") else " ≤ "
        hi = f" ≤ {node['maximum']}" if "maximum" in node else ""
        details.append(f"{lo}{op if lo != '' else ''}x{hi}")
    if "pattern" in node:
        details.append(f"pattern `{node['pattern']}`")
    for r in node.get("x-kubernetes-validations", []):
        details.append(f"rule: {r['message']}")
    desc = (
        " ".join(node.get("description", "").split())
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )
    extra = (
        ("<br>" + "; ".join(details).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;"))
        if details
        else ""
    )
    rows = [f"| `{path}` | {kind}{' (required)' if required else ''} | {desc}{extra} |"]
    for key, child in (node.get("properties") or {}).items():
        rows += _doc_rows(child, f"{path}.{key}", key in node.get("required", []))
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        for key, child in items["properties"].items():
            rows += _doc_rows(child, f"{path}[].{key}", key in items.get("required", []))
    return rows


def render_api_docs() -> str:
    """docs/api.md: the field reference, generated from the same schema as the CRD."""
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    cols = printer_columns()
    out = [
        "<!-- Generated by `python -m modelfleet_operator.crd --docs docs/api.md`: do not edit."
        " -->",
        "# The ModelDeployment API (`modelfleet.io/v1alpha1`)",
        "",
        "Namespaced; short name `mdep`; category `modelfleet` (`kubectl get modelfleet`).",
        "Subresources: `status`, and `scale` (`.spec.replicas`, `.status.replicas`, selector "
        "`.status.selector`) so `kubectl scale`, an HPA or KEDA can drive it.",
        "`kubectl explain mdep.spec.<field>` prints the same descriptions as below.",
        "",
        "`kubectl get mdep` columns: "
        + ", ".join(c["name"] + (" (-o wide)" if c.get("priority") else "") for c in cols)
        + ".",
        "",
        "## Spec",
        "",
        "| Field | Type | Description |",
        "|---|---|---|",
        *_doc_rows(props["spec"], "spec", True)[1:],
        "",
        "## Status",
        "",
        "| Field | Type | Description |",
        "|---|---|---|",
        *_doc_rows(props["status"], "status", False)[1:],
        "",
        "## Condition reasons",
        "",
        "`Ready`, `Available`, `Progressing` and `Degraded` carry one of these reasons "
        "(constants in `modelfleet_operator/status.py`); see docs/operator.md for when.",
        "",
    ]
    from .status import Reason  # noqa: PLC0415 (status imports render, which imports spec)

    out += [f"- `{v}`" for k, v in vars(Reason).items() if not k.startswith("_")]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfleet_operator.crd",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--write", metavar="DIR", help=f"write DIR/{CRD_FILE}")
    parser.add_argument("--check", metavar="DIR", help="exit 1 when DIR's copy is stale")
    parser.add_argument("--docs", metavar="FILE", help="write the API reference (markdown)")
    args = parser.parse_args(argv)
    if args.docs:
        Path(args.docs).write_text(render_api_docs())
        print(f"wrote {args.docs}")
        return 0
    text = render_yaml()
    if args.check:
        path = Path(args.check) / CRD_FILE
        if not path.exists() or path.read_text() != text:
            print(
                f"{path} is stale: run python -m modelfleet_operator.crd --write {args.check}",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.write:
        path = Path(args.write) / CRD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
