"""The operator's own Prometheus metrics (not the runtime's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "modelfleet_operator_reconciles_total",
            "Reconciles of a ModelDeployment, by trigger and result (wrote: made API writes, "
            "converged: none needed, invalid, gone, error).",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "modelfleet_operator_errors_total",
            "Failed API calls during reconciles, by HTTP status (0: no response).",
            ["status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelfleet_operator_reconcile_duration_seconds",
            "Wall time of one reconcile.",
            ["trigger"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.status_writes = Counter(
            "modelfleet_operator_status_writes_total",
            "Status patches (written only when something changed).",
            registry=self.registry,
        )
        self.events = Counter(
            "modelfleet_operator_events_total",
            "Events posted, by type and reason.",
            ["type", "reason"],
            registry=self.registry,
        )
        self.applies = Counter(
            "modelfleet_operator_applies_total",
            "Server-side applies, by child kind.",
            ["kind"],
            registry=self.registry,
        )
        self.prunes = Counter(
            "modelfleet_operator_prunes_total",
            "Children deleted because no longer wanted.",
            ["kind"],
            registry=self.registry,
        )

        self.api_requests = Counter(
            "modelfleet_operator_api_requests_total",
            "Requests the operator made to the API server (writes; reads come from watches), "
            "by verb, kind and HTTP status (0: no response).",
            ["verb", "kind", "code"],
            registry=self.registry,
        )
        self.api_seconds = Histogram(
            "modelfleet_operator_api_request_duration_seconds",
            "Wall time of one API request, by verb: the client's connection-pool wait included, "
            "so it shows whether the operator or the API server is the bottleneck.",
            ["verb"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_depth = Gauge(
            "modelfleet_operator_queue_depth",
            "ModelDeployments waiting for a reconcile.",
            registry=self.registry,
        )
        self.retries = Counter(
            "modelfleet_operator_retries_total",
            "Reconciles scheduled again after a failure (exponential backoff).",
            registry=self.registry,
        )

        self.pod_startup = Histogram(
            "modelfleet_pod_startup_seconds",
            "How long serving pods took to become Ready, by phase (node: waiting for a new "
            "node; scheduling; fetch: the model fetch init container; image: pulling and "
            "starting the runtime; model_load: start to Ready; total), from the pods' own "
            "timestamps (one-second resolution). Scale from zero is one of these starts.",
            ["phase"],
            registry=self.registry,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
