"""The activator's Prometheus metrics, on its own registry. Names are an interface: the
operator's autoscaler reads ``modelfleet_activator_held_requests`` as demand (0 -> 1)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .routes import Key

OUTCOMES = (
    "proxied",  # a backend answered (any status) and the answer was passed on
    "rejected_cap",  # 503 at once: the ModelDeployment's or the process's hold cap
    "timed_out",  # 504: held past the slice's hold timeout
    "client_gone",  # the client went away while held or while proxied
    "backend_error",  # 502, or a backend that failed after the request was sent
    "no_route",  # its slice went away (or the activator stopped) while it was held
    "too_large",  # 413 (body over --max-body-bytes) or 408 (body stalled)
)
# Up to the default hold timeout: a GPU node coming up and a model loading take minutes.
HOLD_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1200)


class ActivatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("namespace", "name")
        self.held = Gauge(
            "modelfleet_activator_held_requests",
            "Requests waiting for a replica now",
            labels,
            registry=self.registry,
        )
        self.requests = Counter(
            "modelfleet_activator_requests",
            "Requests answered, by outcome",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "modelfleet_activator_hold_seconds",
            "How long proxied requests waited for a replica (0: one was ready)",
            labels,
            buckets=HOLD_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "modelfleet_activator_inflight_requests",
            "Requests being proxied now",
            labels,
            registry=self.registry,
        )
        self.listener_up = Gauge(
            "modelfleet_activator_listener_up",
            "1: listening on the port of this ModelDeployment; 0: that port could not be bound",
            (*labels, "port"),
            registry=self.registry,
        )
        self.slice_problems = Gauge(
            "modelfleet_activator_slice_problems",
            "Activator slices that could not be used as they are (see /readyz for why)",
            registry=self.registry,
        )

    def touch(self, key: Key) -> None:
        """Every series of a routed ModelDeployment exists (at 0) from its first slice on."""
        self.held.labels(*key)
        self.inflight.labels(*key)
        self.hold_seconds.labels(*key)
        for outcome in OUTCOMES:
            self.requests.labels(*key, outcome)

    def count(self, key: Key, outcome: str) -> None:
        self.requests.labels(*key, outcome).inc()

    def forget(self, key: Key) -> None:
        """Drop every series of a ModelDeployment whose slice went away."""
        for metric in (self.held, self.inflight, self.hold_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(*key)
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                self.requests.remove(*key, outcome)
        for labels in list(self.listener_up._metrics):  # no public listing of series
            if tuple(labels[:2]) == key:
                self.listener_up.remove(*labels)

    def listener(self, key: Key, port: int, up: bool) -> None:
        self.listener_up.labels(*key, str(port)).set(1 if up else 0)

    def drop_listener(self, key: Key, port: int) -> None:
        with contextlib.suppress(KeyError):
            self.listener_up.remove(*key, str(port))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
