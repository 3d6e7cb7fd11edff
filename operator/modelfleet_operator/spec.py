"""Parse and default a ModelDeployment spec into frozen, typed objects (pure: no API calls).

The apiserver already validates and defaults through the CRD schema (crd.py); this module
checks the same rules again because an object can predate a stricter CRD, and because the
renderers want typed values rather than dict lookups. Defaults live here and crd.py reads
them, so the two cannot disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

GROUP = "modelfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

FORMATS = ("torchscript", "torch-export", "safetensors")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
LOG_LEVELS = ("debug", "info", "warning", "error")
METRICS = ("concurrency", "rps", "cpu")
# Who owns the scale subresource: the operator's own scaler, an HPA it renders, or KEDA.
ENGINES = ("builtin", "hpa", "keda")
# The engine a metric gets when spec.autoscaling.engine is unset.
DEFAULT_ENGINE = {"concurrency": "builtin", "rps": "builtin", "cpu": "hpa"}
# What each engine can scale on (builtin reads the runtime's /metrics, which has no CPU).
ENGINE_METRICS = {
    "builtin": ("concurrency", "rps"),
    "hpa": ("concurrency", "rps", "cpu"),
    "keda": ("concurrency", "rps", "cpu"),
}
STRATEGIES = ("Auto", "RollingUpdate", "Recreate")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
URI_SCHEMES = ("pvc", "http", "https", "s3", "file")
SPREAD_WHEN = ("ScheduleAnyway", "DoNotSchedule")
OVERLOAD_STATUSES = (503, 429)

# Patterns shared with the CRD schema.
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MIG_PATTERN = r"^[1-7]g\.[0-9]+gb(\+me)?$"
URI_PATTERN = r"^(pvc|https?|s3|file)://.+"
PVC_URI_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^/].*$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Secret's name: a DNS-1123 subdomain.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_NAME_LENGTH = 63

DEFAULTS: dict[str, Any] = {
    "model.format": "torchscript",
    "model.version": "1",
    "runtime.device": "auto",
    "runtime.logLevel": "info",
    "runtime.drainTimeoutSeconds": 30,
    "runtime.startupTimeoutSeconds": 600,
    "runtime.maxBodyBytes": 64 * 1024 * 1024,
    "runtime.overloadStatus": 503,
    "runtime.batching.maxBatchSize": 32,
    "runtime.batching.maxDelayMilliseconds": 5.0,
    "runtime.batching.maxQueueSize": 512,
    "runtime.resources.cpu": "2",
    "runtime.resources.memory": "8Gi",
    "runtime.resources.shmSize": "1Gi",
    "runtime.resources.modelCacheSize": "20Gi",
    "replicas": 1,
    "autoscaling.minReplicas": 1,
    "autoscaling.metric": "concurrency",
    "autoscaling.scaleUpStabilizationSeconds": 0,
    "autoscaling.scaleDownStabilizationSeconds": 300,
    "autoscaling.scaleToZero.maxHeldRequests": 100,
    # Long enough for a GPU node to come up and a large model to load.
    "autoscaling.scaleToZero.holdTimeoutSeconds": 1200,
    "rollout.strategy": "Auto",
    "rollout.progressDeadlineSeconds": 900,
    "scheduling.topologySpread.topologyKey": "kubernetes.io/hostname",
    "scheduling.topologySpread.maxSkew": 1,
    "scheduling.topologySpread.whenUnsatisfiable": "ScheduleAnyway",
    "service.port": 8080,
    "service.metricsPort": 9091,
    "warmCapacity.replicas": 0,
    "service.type": "ClusterIP",
}

# Placeholder pods per ModelDeployment (spec.warmCapacity.replicas): each can hold a node.
MAX_WARM_REPLICAS = 64

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


class InvalidSpec(ValueError):
    """The spec breaks a rule; ``field`` is the path (e.g. ``spec.gpu.mig``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ModelSpec:
    uri: str
    format: str
    name: str
    version: str
    entrypoint: str | None = None
    digest: str | None = None

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def pvc_claim(self) -> str | None:
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[0]

    @property
    def pvc_path(self) -> str | None:
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[1].strip("/")


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_delay_ms: float
    max_queue_size: int


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    shm_size: str
    model_cache_size: str


@dataclass(frozen=True)
class RuntimeSpec:
    device: str
    log_level: str
    drain_timeout_s: int
    startup_timeout_s: int
    max_body_bytes: int
    overload_status: int
    batching: Batching
    resources: Resources
    dtype: str | None = None  # None: keep the dtype the model was saved in
    image: str | None = None
    image_pull_policy: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class GPUSpec:
    count: int
    products: tuple[str, ...] = ()
    mig: str | None = None
    min_memory_mib: int | None = None

    @property
    def resource(self) -> str:
        """The extended resource a pod limits: whole GPUs or one MIG profile."""
        return f"nvidia.com/mig-{self.mig}" if self.mig else GPU_RESOURCE

    @property
    def quantity(self) -> int:
        return 1 if self.mig else self.count

    def summary(self) -> str:
        what = f"mig-{self.mig}" if self.mig else "GPU"
        products = "|".join(_short_product(p) for p in self.products) if self.products else what
        if self.mig:
            return f"{self.quantity}x {what}" + (f" ({products})" if self.products else "")
        return f"{self.quantity}x {products}"


def _short_product(product: str) -> str:
    # "NVIDIA-H100-80GB-HBM3" reads better as "H100-80GB-HBM3" in a narrow column.
    return product.removeprefix("NVIDIA-")


@dataclass(frozen=True)
class KedaSpec:
    """Where KEDA's prometheus trigger reads the runtime's metrics (engine keda)."""

    server_address: str | None = None
    query: str | None = None  # None: the operator's own query over the runtime's gauges


@dataclass(frozen=True)
class ScaleToZeroSpec:
    """How the activator holds requests while no replica is ready (minReplicas 0)."""

    max_held_requests: int = 100
    hold_timeout_s: int = 1200


@dataclass(frozen=True)
class AutoscalingSpec:
    min_replicas: int
    max_replicas: int
    metric: str
    target: float
    scale_up_window_s: int
    scale_down_window_s: int
    engine: str = "builtin"
    keda: KedaSpec = field(default_factory=KedaSpec)
    scale_to_zero: ScaleToZeroSpec | None = None  # set exactly when minReplicas is 0

    @property
    def to_zero(self) -> bool:
        return self.min_replicas == 0


@dataclass(frozen=True)
class RolloutSpec:
    strategy: str
    progress_deadline_s: int


@dataclass(frozen=True)
class TopologySpread:
    topology_key: str
    max_skew: int
    when_unsatisfiable: str


@dataclass(frozen=True)
class SchedulingSpec:
    topology_spread: TopologySpread
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None


@dataclass(frozen=True)
class ServiceSpec:
    port: int
    type: str
    # the runtime's /metrics (and probes) when spec.auth is set: never behind a caller's key
    metrics_port: int = 9091


@dataclass(frozen=True)
class AuthSpec:
    """API keys: the Secret holding their hashes, and the limits each key gets."""

    secret_name: str
    requests_per_second: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True)
class WarmCapacitySpec:
    """Room kept for ``replicas`` more serving pods: low-priority placeholder pods that ask
    for what a serving pod asks for, preempted the moment a real replica needs the room."""

    replicas: int


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelSpec
    runtime: RuntimeSpec
    replicas: int
    rollout: RolloutSpec
    scheduling: SchedulingSpec
    service: ServiceSpec
    gpu: GPUSpec | None = None
    autoscaling: AutoscalingSpec | None = None
    warm_capacity: WarmCapacitySpec | None = None
    auth: AuthSpec | None = None

    def desired_replicas(self) -> int:
        """Replicas the Deployment should run now.

        With autoscaling on, the engine (the operator's builtin scaler, the HPA or KEDA) writes
        spec.replicas through the scale subresource; clamping to [min, max] only avoids a dip
        before its first decision.
        """
        if self.autoscaling is None:
            return self.replicas
        return max(self.autoscaling.min_replicas, min(self.autoscaling.max_replicas, self.replicas))


class _Reader:
    """Typed access to one level of the raw spec, with the path for error messages."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidSpec(path, "must be an object")
        self.raw: Mapping[str, Any] = raw
        self.path = path

    def _default(self, key: str) -> Any:
        return DEFAULTS.get(f"{self.path.removeprefix('spec.')}.{key}".removeprefix("spec."))

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def child(self, key: str) -> _Reader:
        return _Reader(self.raw.get(key), f"{self.path}.{key}")

    def text(
        self,
        key: str,
        *,
        required: bool = False,
        choices: Sequence[str] = (),
        pattern: str | None = None,
    ) -> str | None:
        value = self.raw.get(key, self._default(key))
        where = f"{self.path}.{key}"
        if value is None:
            if required:
                raise InvalidSpec(where, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidSpec(where, "must be a string")
        value = str(value)
        if choices and value not in choices:
            raise InvalidSpec(where, f"must be one of {', '.join(choices)} (got {value!r})")
        if pattern and not re.match(pattern, value):
            raise InvalidSpec(where, f"{value!r} does not match {pattern}")
        return value

    def integer(
        self,
        key: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = False,
    ) -> int | None:
        value = self.raw.get(key, self._default(key))
        where = f"{self.path}.{key}"
        if value is None:
            if required:
                raise InvalidSpec(where, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSpec(where, "must be an integer")
        if minimum is not None and value < minimum:
            raise InvalidSpec(where, f"must be >= {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise InvalidSpec(where, f"must be <= {maximum} (got {value})")
        return value

    def number(
        self,
        key: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        required: bool = False,
        exclusive_minimum: bool = False,
    ) -> float | None:
        value = self.raw.get(key, self._default(key))
        where = f"{self.path}.{key}"
        if value is None:
            if required:
                raise InvalidSpec(where, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSpec(where, "must be a number")
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            raise InvalidSpec(where, f"must be {'>' if exclusive_minimum else '>='} {minimum}")
        if maximum is not None and value > maximum:
            raise InvalidSpec(where, f"must be <= {maximum} (got {value})")
        return float(value)

    def quantity(self, key: str) -> str:
        value = self.raw.get(key, self._default(key))
        where = f"{self.path}.{key}"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidSpec(where, "must be a quantity such as 2, 500m or 8Gi")
        text = str(value)
        parsed = parse_cpu_or_bytes(text)
        if parsed is None:
            raise InvalidSpec(where, f"{text!r} is not a quantity such as 2, 500m or 8Gi")
        if parsed < 0:
            raise InvalidSpec(where, f"{text!r} is negative")
        return text

    def mapping(self, key: str) -> dict[str, Any]:
        """An optional object whose inner shape the API server checks (affinity etc.)."""
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InvalidSpec(f"{self.path}.{key}", "must be an object")
        return dict(value)


# The CRD's pattern, kept here too: Decimal alone would accept "1e3", "NaN" and "Infinity".
QUANTITY_RE = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_cpu_or_bytes(text: str) -> Decimal | None:
    """A Kubernetes quantity as a number (cores or bytes), None when it is not one.

    ``kubernetes.utils.parse_quantity`` does the arithmetic (suffixes, binary vs decimal);
    the pattern refuses what it would let through but the API server would not."""
    if not QUANTITY_RE.match(text):
        return None
    try:
        value = parse_quantity(text)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    return value if isinstance(value, Decimal) and value.is_finite() else None


def cpu_threads(cpu: str, limit: int = 256) -> int:
    """Worker threads for a CPU request: whole cores, at least 1, at most ``limit``."""
    cores = parse_cpu_or_bytes(cpu) or Decimal(1)
    return max(1, min(limit, math.floor(cores)))


def _req(value: Any) -> Any:
    assert value is not None  # guarded by required=True or a default
    return value


def parse_spec(raw: Mapping[str, Any] | None, *, name: str) -> ModelDeploymentSpec:
    """Validate and default ``raw`` (the object's ``.spec``); ``name`` is metadata.name."""
    if not re.match(NAME_PATTERN, name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidSpec("metadata.name", "must be a DNS-1035 label of at most 63 characters")
    spec = _Reader(raw, "spec")
    if not spec.has("model"):
        raise InvalidSpec("spec.model", "is required")
    model = _parse_model(spec.child("model"), name)
    runtime = _parse_runtime(spec.child("runtime"))
    gpu = _parse_gpu(spec.child("gpu")) if spec.has("gpu") else None
    autoscaling = _parse_autoscaling(spec.child("autoscaling")) if spec.has("autoscaling") else None
    if runtime.device == "cpu" and gpu is not None:
        raise InvalidSpec("spec.runtime.device", "is cpu but spec.gpu requests GPUs; drop one")
    if runtime.device == "cuda" and gpu is None:
        raise InvalidSpec("spec.runtime.device", "is cuda but spec.gpu is not set")
    rollout = spec.child("rollout")
    sched = spec.child("scheduling")
    spread = sched.child("topologySpread")
    service = spec.child("service")
    warm = spec.child("warmCapacity")
    warm_replicas = _req(warm.integer("replicas", minimum=0, maximum=MAX_WARM_REPLICAS))
    auth = _parse_auth(spec.child("auth")) if spec.has("auth") else None
    port = _req(service.integer("port", minimum=1, maximum=65535))
    metrics_port = _req(service.integer("metricsPort", minimum=1, maximum=65535))
    if auth is not None and metrics_port == port:
        raise InvalidSpec(
            "spec.service.metricsPort",
            f"must differ from spec.service.port ({port}): with spec.auth, /metrics is served "
            "on a port of its own",
        )
    return ModelDeploymentSpec(
        model=model,
        runtime=runtime,
        gpu=gpu,
        replicas=_req(spec.integer("replicas", minimum=0, maximum=1000)),
        autoscaling=autoscaling,
        rollout=RolloutSpec(
            strategy=_req(rollout.text("strategy", choices=STRATEGIES)),
            progress_deadline_s=_req(rollout.integer("progressDeadlineSeconds", minimum=60)),
        ),
        scheduling=SchedulingSpec(
            node_selector=_parse_node_selector(sched),
            tolerations=_parse_tolerations(sched),
            affinity=_parse_affinity(sched) or None,
            priority_class_name=sched.text("priorityClassName"),
            topology_spread=TopologySpread(
                topology_key=_req(spread.text("topologyKey")),
                max_skew=_req(spread.integer("maxSkew", minimum=1)),
                when_unsatisfiable=_req(spread.text("whenUnsatisfiable", choices=SPREAD_WHEN)),
            ),
        ),
        service=ServiceSpec(
            port=port,
            type=_req(service.text("type", choices=SERVICE_TYPES)),
            metrics_port=metrics_port,
        ),
        warm_capacity=WarmCapacitySpec(warm_replicas) if warm_replicas else None,
        auth=auth,
    )


def _parse_auth(a: _Reader) -> AuthSpec:
    keys = a.child("apiKeys")
    name = _req(keys.text("secretName", required=True, pattern=SECRET_NAME_PATTERN))
    if len(name) > 253:
        raise InvalidSpec("spec.auth.apiKeys.secretName", "must be at most 253 characters")
    lim = a.child("limits")
    rate = lim.number("requestsPerSecond", minimum=0, exclusive_minimum=True, maximum=1_000_000)
    burst = lim.integer("burst", minimum=1, maximum=1_000_000)
    if burst is not None and rate is None:
        raise InvalidSpec("spec.auth.limits.burst", "needs spec.auth.limits.requestsPerSecond")
    return AuthSpec(
        secret_name=name,
        requests_per_second=rate,
        burst=burst,
        max_concurrency=lim.integer("maxConcurrency", minimum=1, maximum=100_000),
    )


def _parse_model(m: _Reader, default_name: str) -> ModelSpec:
    uri = _req(m.text("uri", required=True))
    if not re.match(URI_PATTERN, uri):
        raise InvalidSpec(
            "spec.model.uri",
            f"must start with pvc://, http://, https://, s3:// or file:// (got {uri!r})",
        )
    if uri.startswith("pvc://") and not re.match(PVC_URI_PATTERN, uri):
        raise InvalidSpec("spec.model.uri", "a pvc:// URI is pvc://<claim>/<path>")
    fmt = _req(m.text("format", choices=FORMATS))
    entrypoint = m.text("entrypoint", pattern=ENTRYPOINT_PATTERN)
    if fmt == "safetensors" and entrypoint is None:
        raise InvalidSpec(
            "spec.model.entrypoint",
            "is required for format safetensors (module:callable building the net)",
        )
    return ModelSpec(
        uri=uri,
        format=fmt,
        entrypoint=entrypoint,
        digest=m.text("digest", pattern=DIGEST_PATTERN),
        name=m.text("name", pattern=MODEL_NAME_PATTERN) or default_name,
        version=_req(m.text("version", pattern=MODEL_NAME_PATTERN)),
    )


def _parse_runtime(r: _Reader) -> RuntimeSpec:
    b = r.child("batching")
    res = r.child("resources")
    batching = Batching(
        max_batch_size=_req(b.integer("maxBatchSize", minimum=1, maximum=4096)),
        max_delay_ms=_req(b.number("maxDelayMilliseconds", minimum=0, maximum=10_000)),
        max_queue_size=_req(b.integer("maxQueueSize", minimum=1, maximum=1_000_000)),
    )
    if batching.max_queue_size < batching.max_batch_size:
        raise InvalidSpec("spec.runtime.batching.maxQueueSize", "must be >= maxBatchSize")
    return RuntimeSpec(
        image=r.text("image"),
        image_pull_policy=r.text("imagePullPolicy", choices=("Always", "IfNotPresent", "Never")),
        device=_req(r.text("device", choices=DEVICES)),
        dtype=r.text("dtype", choices=DTYPES),
        threads=r.integer("threads", minimum=1, maximum=256),
        log_level=_req(r.text("logLevel", choices=LOG_LEVELS)),
        drain_timeout_s=_req(r.integer("drainTimeoutSeconds", minimum=1, maximum=3600)),
        startup_timeout_s=_req(r.integer("startupTimeoutSeconds", minimum=10, maximum=7200)),
        max_body_bytes=_req(r.integer("maxBodyBytes", minimum=1024)),
        overload_status=_req(r.integer("overloadStatus")),
        batching=batching,
        resources=Resources(
            cpu=res.quantity("cpu"),
            memory=res.quantity("memory"),
            shm_size=res.quantity("shmSize"),
            model_cache_size=res.quantity("modelCacheSize"),
        ),
    )


def _parse_gpu(g: _Reader) -> GPUSpec:
    count = g.integer("count", minimum=1, maximum=16)
    mig = g.text("mig", pattern=MIG_PATTERN)
    if count is not None and mig is not None:
        raise InvalidSpec("spec.gpu", "set count (whole GPUs) or mig (one MIG slice), not both")
    products = g.raw.get("products") or []
    if not isinstance(products, list) or not all(isinstance(p, str) and p for p in products):
        raise InvalidSpec("spec.gpu.products", "must be a list of GPU product names")
    return GPUSpec(
        count=0 if mig else (count or 1),
        mig=mig,
        products=tuple(products),
        min_memory_mib=g.integer("minMemoryMiB", minimum=1),
    )


def _parse_autoscaling(a: _Reader) -> AutoscalingSpec:
    metric = _req(a.text("metric", choices=METRICS))
    engine = a.text("engine", choices=ENGINES) or DEFAULT_ENGINE[metric]
    if metric not in ENGINE_METRICS[engine]:
        raise InvalidSpec(
            "spec.autoscaling.engine",
            f"{engine} cannot scale on metric {metric} (it scales on "
            f"{' or '.join(ENGINE_METRICS[engine])}); use engine hpa or keda for cpu",
        )
    k = a.child("keda")
    keda = KedaSpec(server_address=k.text("serverAddress"), query=k.text("query"))
    if engine == "keda" and metric != "cpu" and keda.server_address is None:
        raise InvalidSpec(
            "spec.autoscaling.keda.serverAddress",
            f"is required for engine keda on metric {metric}: the Prometheus that scrapes "
            "the runtime's /metrics (KEDA's prometheus trigger queries it)",
        )
    if engine != "keda" and k.raw:
        raise InvalidSpec("spec.autoscaling.keda", f"is only read by engine keda (got {engine})")
    z = a.child("scaleToZero")
    min_replicas = _req(a.integer("minReplicas", minimum=0, maximum=1000))
    if min_replicas == 0 and engine != "builtin":
        raise InvalidSpec(
            "spec.autoscaling.minReplicas",
            f"0 (scale to zero) needs engine builtin (got {engine}): its activator holds "
            "requests while no replica is ready and asks for one; an HPA cannot scale to 0 "
            "and KEDA would drop the requests that arrive meanwhile",
        )
    if min_replicas != 0 and z.raw:
        raise InvalidSpec(
            "spec.autoscaling.scaleToZero", "is only read with minReplicas 0 (scale to zero)"
        )
    to_zero = (
        ScaleToZeroSpec(
            max_held_requests=_req(z.integer("maxHeldRequests", minimum=1, maximum=100000)),
            hold_timeout_s=_req(z.integer("holdTimeoutSeconds", minimum=1, maximum=86400)),
        )
        if min_replicas == 0
        else None
    )
    spec = AutoscalingSpec(
        min_replicas=min_replicas,
        max_replicas=_req(a.integer("maxReplicas", minimum=1, maximum=1000, required=True)),
        metric=metric,
        target=_req(a.number("target", minimum=0, exclusive_minimum=True, required=True)),
        scale_up_window_s=_req(a.integer("scaleUpStabilizationSeconds", minimum=0, maximum=3600)),
        scale_down_window_s=_req(
            a.integer("scaleDownStabilizationSeconds", minimum=0, maximum=3600)
        ),
        engine=engine,
        keda=keda,
        scale_to_zero=to_zero,
    )
    if spec.min_replicas > spec.max_replicas:
        raise InvalidSpec("spec.autoscaling.minReplicas", "must be <= maxReplicas")
    if metric == "cpu" and not 1 <= spec.target <= 1000:
        raise InvalidSpec(
            "spec.autoscaling.target", "for metric cpu is a utilization percent between 1 and 1000"
        )
    return spec


def _parse_node_selector(sched: _Reader) -> dict[str, str]:
    raw = sched.mapping("nodeSelector")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise InvalidSpec(f"spec.scheduling.nodeSelector.{key}", "must be a string")
    return raw


def _parse_tolerations(sched: _Reader) -> tuple[Mapping[str, Any], ...]:
    raw = sched.raw.get("tolerations") or []
    if not isinstance(raw, list):
        raise InvalidSpec("spec.scheduling.tolerations", "must be a list of tolerations")
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidSpec(f"spec.scheduling.tolerations[{i}]", "must be an object")
    return tuple(raw)


def _parse_affinity(sched: _Reader) -> dict[str, Any]:
    """The user's affinity; the parts the operator merges GPU terms into must have the
    core/v1 shape (the CRD keeps this field schemaless, so the API server let it through)."""
    affinity = sched.mapping("affinity")
    node = affinity.get("nodeAffinity")
    where = "spec.scheduling.affinity.nodeAffinity"
    if node is None:
        return affinity
    if not isinstance(node, Mapping):
        raise InvalidSpec(where, "must be an object (core/v1 NodeAffinity)")
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    where += ".requiredDuringSchedulingIgnoredDuringExecution"
    if required is None:
        return affinity
    if not isinstance(required, Mapping):
        raise InvalidSpec(where, "must be an object (core/v1 NodeSelector)")
    terms = required.get("nodeSelectorTerms")
    if terms is None:
        return affinity
    if not isinstance(terms, list):
        raise InvalidSpec(f"{where}.nodeSelectorTerms", "must be a list of node selector terms")
    for i, term in enumerate(terms):
        if not isinstance(term, Mapping):
            raise InvalidSpec(f"{where}.nodeSelectorTerms[{i}]", "must be an object")
        exprs = term.get("matchExpressions")
        if exprs is not None and not (
            isinstance(exprs, list) and all(isinstance(e, Mapping) for e in exprs)
        ):
            raise InvalidSpec(
                f"{where}.nodeSelectorTerms[{i}].matchExpressions", "must be a list of objects"
            )
    return affinity
