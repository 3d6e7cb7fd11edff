"""Prometheus metrics (``modelfleet_*``) on a registry of our own."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
OUTCOMES = {
    200: "success",
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    413: "too_large",
    415: "invalid",
    429: "overloaded",
    500: "error",
    503: "unavailable",
    504: "deadline_exceeded",
}


class Metrics:
    def __init__(self, model: str, version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape weight
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ("model", "version")
        values = (model, version)
        r = self.registry
        self._requests = Counter(
            "modelfleet_requests", "Inference requests by outcome",
            [*labels, "outcome"], registry=r,
        )  # fmt: skip
        self._outcomes = {
            code: self._requests.labels(*values, outcome) for code, outcome in OUTCOMES.items()
        }
        self._values = values
        self.request_seconds = Histogram(
            "modelfleet_request_duration_seconds", "End-to-end inference latency",
            labels, buckets=LATENCY_BUCKETS, registry=r,
        ).labels(*values)  # fmt: skip
        self.queue_seconds = Histogram(
            "modelfleet_queue_duration_seconds", "Time a request waited for its batch",
            labels, buckets=LATENCY_BUCKETS, registry=r,
        ).labels(*values)  # fmt: skip
        self.compute_seconds = Histogram(
            "modelfleet_compute_duration_seconds", "Forward pass time per batch",
            labels, buckets=LATENCY_BUCKETS, registry=r,
        ).labels(*values)  # fmt: skip
        self.batch_size = Histogram(
            "modelfleet_batch_size", "Rows per forward pass",
            labels, buckets=BATCH_BUCKETS, registry=r,
        ).labels(*values)  # fmt: skip
        self.batch_requests = Histogram(
            "modelfleet_batch_requests", "Requests merged into one forward pass",
            labels, buckets=BATCH_BUCKETS, registry=r,
        ).labels(*values)  # fmt: skip
        self.queue_depth_gauge = Gauge(
            "modelfleet_queue_depth", "Requests waiting for a batch", labels, registry=r
        ).labels(*values)
        self.inflight = Gauge(
            "modelfleet_inflight_requests", "Inference requests accepted and not yet answered",
            labels, registry=r,
        ).labels(*values)  # fmt: skip
        self.load_seconds = Gauge(
            "modelfleet_model_load_seconds", "Time to verify, load and warm up the model",
            labels, registry=r,
        ).labels(*values)  # fmt: skip
        self.ready = Gauge(
            "modelfleet_model_ready", "1 when the model is loaded and serving", labels, registry=r
        ).labels(*values)

        # API keys (--api-keys): by key id, never by key; a series per key in the ring
        self._key_requests = Counter(
            "modelfleet_key_requests", "Requests made with each API key, by answer",
            [*labels, "key", "outcome"], registry=r,
        )  # fmt: skip
        self._key_children: dict[tuple[str, int | str], Any] = {}
        self._auth_failures = Counter(
            "modelfleet_auth_failures", "Requests refused for their API key (missing or "
            "invalid)", [*labels, "reason"], registry=r,
        )  # fmt: skip
        self._keys = Gauge(
            "modelfleet_api_keys", "API keys the server accepts now", labels, registry=r
        ).labels(*values)

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.labels(*self._values, reason).inc()

    def key_request(self, key_id: str, status: int | str) -> None:
        # labels() costs ~1.2 us a call (a lock and a tuple key); the children are cached.
        # Bounded: key ids come from the key ring (at most MAX_KEYS) times a few outcomes.
        child = self._key_children.get((key_id, status))
        if child is None:
            outcome = status if isinstance(status, str) else OUTCOMES.get(status, str(status))
            child = self._key_requests.labels(*self._values, key_id, outcome)
            self._key_children[key_id, status] = child
        child.inc()

    def keys_loaded(self, count: int) -> None:
        self._keys.set(count)

    def request_done(self, status: int, seconds: float, outcome: str | None = None) -> None:
        counter = None if outcome else self._outcomes.get(status)
        if counter is None:
            counter = self._requests.labels(
                *self._values, outcome or OUTCOMES.get(status, str(status))
            )
        counter.inc()
        self.request_seconds.observe(seconds)

    # BatchObserver, called from the batcher thread (prometheus_client is thread-safe)
    def batch_done(self, requests: int, rows: int, compute_s: float) -> None:
        self.batch_size.observe(rows)
        self.batch_requests.observe(requests)
        self.compute_seconds.observe(compute_s)

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def watch_gpu(self, device_index: int) -> None:
        """GPU memory gauges, read at scrape time."""
        import torch  # noqa: PLC0415 (metrics stay importable without torch)

        labels = ("model", "version", "device")
        values = (*self._values, str(device_index))
        Gauge(
            "modelfleet_gpu_memory_allocated_bytes", "GPU memory held by tensors",
            labels, registry=self.registry,
        ).labels(*values).set_function(
            lambda: float(torch.cuda.memory_allocated(device_index))
        )  # fmt: skip
        Gauge(
            "modelfleet_gpu_memory_reserved_bytes", "GPU memory reserved by the allocator",
            labels, registry=self.registry,
        ).labels(*values).set_function(
            lambda: float(torch.cuda.memory_reserved(device_index))
        )  # fmt: skip
        total = Gauge(
            "modelfleet_gpu_memory_total_bytes", "GPU memory on the device",
            labels, registry=self.registry,
        ).labels(*values)  # fmt: skip
        total.set(torch.cuda.get_device_properties(device_index).total_memory)

    def render(self) -> bytes:
        return generate_latest(self.registry)
