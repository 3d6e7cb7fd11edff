"""parse -> render -> apply/prune -> observe -> status, for one ModelDeployment.

Level-based: reconcile() reads everything it needs and never depends on which event fired,
so create, update, resume, the resync timer and child events all call the same thing, and an
operator restart at any moment converges.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .capacity import gpu_capacity
from .kube import CHILD_KINDS, Kube, KubeError
from .metrics import OperatorMetrics
from .render import Owner, RenderConfig, Strategy, render_all
from .render.common import MANAGED_BY_LABEL, MANAGER, selector_string
from .render.deployment import (
    choose_strategy,
    existing_strategy,
    render_pod_template,
    template_hash,
)
from .render.service import service_url
from .spec import InvalidSpec, ModelDeploymentSpec, parse_spec
from .status import (
    Observed,
    Problem,
    Reason,
    compute_status,
    diagnose_pods,
    status_changed,
)

log = logging.getLogger("modelfleet.operator")
T = TypeVar("T")


class ChildConflict(Exception):
    """A same-named object the operator does not manage is in the way."""


@dataclass(frozen=True)
class Outcome:
    found: bool = True
    invalid: InvalidSpec | None = None
    error: KubeError | None = None
    status_written: bool = False
    ready: bool = False


class ClusterView:
    """Nodes and GPU-holding pods, cached briefly: every GPU reconcile needs them, and
    listing all pods for each of 1000 ModelDeployments would swamp the apiserver."""

    def __init__(self, kube: Kube, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[dict[str, Any]] | None]] = {}

    def _get(self, key: str, load: Callable[[], list[dict[str, Any]]]
             ) -> list[dict[str, Any]] | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit and self.clock() - hit[0] < self.ttl:
                return hit[1]
        try:
            value: list[dict[str, Any]] | None = load()
        except KubeError as exc:
            if not exc.forbidden:
                raise
            # Without cluster-wide read access the operator stays conservative (no surge)
            # instead of failing every reconcile.
            log.warning("cannot list %s (%s): treating GPU capacity as unknown", key, exc)
            value = None
        with self._lock:
            self._cache[key] = (self.clock(), value)
        return value

    def nodes(self) -> list[dict[str, Any]] | None:
        return self._get("nodes", lambda: self.kube.list("Node"))

    def active_pods(self) -> list[dict[str, Any]] | None:
        return self._get("pods", lambda: self.kube.list(
            "Pod", fields="status.phase!=Succeeded,status.phase!=Failed"))

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()


class KeyedRunner:
    """At most one reconcile per object at a time; requests arriving meanwhile collapse
    into one re-run (a burst of pod events costs two reconciles, not fifty)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], bool] = {}

    def run(self, key: tuple[str, str], full: bool, fn: Callable[[bool], T]) -> T | None:
        with self._lock:
            if key in self._running:
                self._pending[key] = self._pending.get(key, False) or full
                return None
            self._running.add(key)
        try:
            result = fn(full)
            while True:
                with self._lock:
                    if key not in self._pending:
                        self._running.discard(key)
                        return result
                    full = self._pending.pop(key)
                result = fn(full)
        except BaseException:
            with self._lock:
                self._running.discard(key)
                self._pending.pop(key, None)
            raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Reconciler:
    def __init__(self, kube: Kube, config: RenderConfig | None = None,
                 metrics: OperatorMetrics | None = None, cluster_ttl: float = 10.0) -> None:
        self.kube = kube
        self.config = config or RenderConfig()
        self.metrics = metrics or OperatorMetrics()
        self.cluster = ClusterView(kube, cluster_ttl)
        self.runner = KeyedRunner()
        # What this process last applied, to tell our own writes' echoes from drift; and
        # which objects were already checked for children to prune. Lost on restart, which
        # only costs one full reconcile and one prune check per object.
        self._memory_lock = threading.Lock()
        self._applied: dict[tuple[str, str, str], str] = {}
        self._pruned: dict[tuple[str, str, str], frozenset[str]] = {}
        # The last apply failure per object, until an apply succeeds: a status refresh
        # (which does not apply) must not report Ready over a child that was never written.
        self._apply_failures: dict[tuple[str, str], str] = {}

    # --- entry point ----------------------------------------------------------------------

    def request(self, namespace: str, name: str, *, full: bool = True,
                trigger: str = "event") -> Outcome | None:
        """Reconcile now, or fold into the reconcile already running for this object."""
        return self.runner.run((namespace, name), full,
                               lambda f: self._timed(namespace, name, f, trigger))

    def _timed(self, namespace: str, name: str, full: bool, trigger: str) -> Outcome:
        start = time.perf_counter()
        result = "error"
        try:
            outcome = self.reconcile(namespace, name, full=full)
            result = "invalid" if outcome.invalid else ("error" if outcome.error else "ok")
            return outcome
        finally:
            self.metrics.reconciles.labels(trigger, result).inc()
            self.metrics.duration.labels(trigger).observe(time.perf_counter() - start)

    # --- the reconcile --------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, *, full: bool = True) -> Outcome:
        body = self._call(lambda: self.kube.get("ModelDeployment", namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome(found=False)  # garbage collection removes the children
        owner = Owner.from_body(body)
        spec: ModelDeploymentSpec | None = None
        invalid: InvalidSpec | None = None
        try:
            spec = parse_spec(body.get("spec"), name=name)
        except InvalidSpec as exc:
            invalid = exc
        deployment = self._call(lambda: self.kube.get("Deployment", namespace, name))
        if not full and deployment is not None:
            with self._memory_lock:
                known = self._applied.get(("Deployment", namespace, name))
            # A status refresh that finds the Deployment changed since our last apply has
            # found drift (a hand edit): put it back now.
            full = known is not None and known != self._version(deployment)
        pods_before = self._call(lambda: self.kube.list("Pod", namespace,
                                                        labels=selector_string(owner)))
        problems: list[Problem] = []
        strategy: Strategy | None = None
        error: KubeError | None = None
        if deployment is not None and not _ours(deployment):
            problems.append(Problem(Reason.CHILD_CONFLICT, (
                f"Deployment {name} exists and is not managed by {MANAGER}; rename the "
                "ModelDeployment or delete that Deployment")))
            deployment = None
        elif spec is not None:
            problems += self._judge(spec, namespace)
            template = render_pod_template(owner, spec, self.config)
            strategy = existing_strategy(deployment, template_hash(template))
            if strategy is None:
                strategy = choose_strategy(spec, spec.desired_replicas(), self._spare(spec))
            elif _surge_stuck(spec, strategy, pods_before):
                # The free GPU seen when the rollout began is gone (taken by someone else,
                # or by a race): stop waiting for a surge pod that cannot schedule.
                strategy = choose_strategy(spec, spec.desired_replicas(), 0)
                log.info("%s/%s: surge pod unschedulable, switching to %s", namespace, name,
                         strategy.describe())
            if full:
                try:
                    deployment = self._apply(owner, spec, strategy) or deployment
                except KubeError as exc:
                    error = exc
                    message = exc.message or str(exc)
                    problems.append(Problem(Reason.APPLY_FAILED, message))
                    with self._memory_lock:
                        self._apply_failures[(namespace, name)] = message
                else:
                    with self._memory_lock:
                        self._apply_failures.pop((namespace, name), None)
            else:
                with self._memory_lock:
                    failure = self._apply_failures.get((namespace, name))
                if failure is not None:
                    problems.append(Problem(Reason.APPLY_FAILED, failure))
        # After an apply the pods may have changed; otherwise the first list is current.
        pods = pods_before if not full else self._call(
            lambda: self.kube.list("Pod", namespace, labels=selector_string(owner)))
        observed = Observed(
            generation=owner.generation,
            selector=selector_string(owner),
            spec=spec,
            invalid=invalid,
            url=service_url(owner, spec) if spec else None,
            deployment=deployment,
            pods=pods,
            problems=problems,
            strategy=strategy or (Strategy.from_manifest(
                (deployment or {}).get("spec", {}).get("strategy"),
                ((deployment or {}).get("metadata", {}).get("annotations") or {})
                .get("modelfleet.io/rollout-strategy", "")) if deployment else None),
        )
        previous = body.get("status") or {}
        status, transitions = compute_status(observed, previous, _now())
        written = False
        if status_changed(previous, status):
            self._call(lambda: self.kube.patch_status(namespace, name, status))
            self.metrics.status_writes.inc()
            written = True
            for t in transitions:
                log.info("%s/%s: %s=%s %s: %s", namespace, name, t.type, t.status, t.reason,
                         t.message)
                try:
                    self.kube.event(body, t.event_type, t.reason, f"{t.type} is {t.status}: "
                                    f"{t.message}" if t.message else f"{t.type} is {t.status}")
                    self.metrics.events.labels(t.event_type, t.reason).inc()
                except KubeError as exc:  # an Event is best effort
                    log.warning("event for %s/%s not posted: %s", namespace, name, exc)
        if error is not None and error.retryable:
            raise error  # status says ApplyFailed; the caller retries with backoff
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in status["conditions"])
        return Outcome(invalid=invalid, error=error, status_written=written, ready=ready)

    # --- steps ----------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except KubeError as exc:
            self.metrics.errors.labels(str(exc.status)).inc()
            raise

    def _judge(self, spec: ModelDeploymentSpec, namespace: str) -> list[Problem]:
        """What only the operator can tell: cluster facts the apiserver cannot validate."""
        out: list[Problem] = []
        if spec.gpu is not None:
            nodes = self.cluster.nodes()
            if nodes is not None and gpu_capacity(nodes, [], spec.gpu).offering == 0:
                offered = sorted({(n["metadata"].get("labels") or {}).get(
                    "nvidia.com/gpu.product", "") for n in nodes} - {""})
                want = (f"{spec.gpu.resource} of product {'|'.join(spec.gpu.products)}"
                        if spec.gpu.products else spec.gpu.resource)
                out.append(Problem(Reason.GPU_PRODUCT_UNAVAILABLE, (
                    f"no node offers {want}; products in the cluster: "
                    f"{', '.join(offered) or 'none'}")))
        claim = spec.model.pvc_claim
        if claim and self._call(
                lambda: self.kube.get("PersistentVolumeClaim", namespace, claim)) is None:
            out.append(Problem(Reason.MODEL_PVC_NOT_FOUND, (
                f"PersistentVolumeClaim {claim!r} (from spec.model.uri) does not exist in "
                f"namespace {namespace}")))
        return out

    def _spare(self, spec: ModelDeploymentSpec) -> int | None:
        if spec.gpu is None or spec.rollout.strategy != "Auto":
            return None
        # A rollout decision is rare (once per template) and must not use a stale view:
        # pods bound seconds ago hold GPUs a cached list does not show.
        self.cluster.invalidate()
        nodes = self.cluster.nodes()
        pods = self.cluster.active_pods()
        if nodes is None or pods is None:
            return None
        return gpu_capacity(nodes, pods, spec.gpu).spare_pods

    def _apply(self, owner: Owner, spec: ModelDeploymentSpec,
               strategy: Strategy) -> dict[str, Any] | None:
        deployment: dict[str, Any] | None = None
        wanted = set()
        for child in render_all(owner, spec, self.config, strategy):
            out = self._call(lambda c=child: self.kube.apply(c))  # type: ignore[misc]
            self.metrics.applies.labels(child["kind"]).inc()
            wanted.add(child["kind"])
            self._remember(child["kind"], out)
            if child["kind"] == "Deployment":
                deployment = out
        key = (owner.namespace, owner.name, owner.uid)
        with self._memory_lock:
            pruned = key in self._pruned and wanted == self._pruned[key]
        if not pruned:
            self._prune(owner, wanted)
            with self._memory_lock:
                self._pruned[key] = frozenset(wanted)
        return deployment

    # --- child events ---------------------------------------------------------------------

    @staticmethod
    def _version(obj: Mapping[str, Any]) -> str:
        # generation moves only on spec changes (status writes leave it), so a child's
        # status churn is told apart from an edit; Services have none: resourceVersion.
        meta = obj.get("metadata") or {}
        return f"g{meta['generation']}" if meta.get("generation") else (
            f"rv{meta.get('resourceVersion')}")

    def _remember(self, kind: str, obj: Mapping[str, Any] | None) -> None:
        if obj:
            meta = obj["metadata"]
            with self._memory_lock:
                self._applied[(kind, meta["namespace"], meta["name"])] = self._version(obj)

    def child_event(self, kind: str, event_type: str, body: Mapping[str, Any],
                    owner: str) -> Outcome | None:
        """React to a change of an owned child: an echo of our own write needs nothing (a
        Deployment's status change needs a status refresh); anything else is drift, or
        news, and gets a full reconcile."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace", "")
        with self._memory_lock:
            known = self._applied.get((kind, namespace, meta.get("name", "")))
        if event_type == "DELETED":
            return self.request(namespace, owner, full=True, trigger=f"child-{kind}")
        if kind == "Deployment":
            # Status churn is most of these; the status refresh itself compares versions
            # and escalates to a full reconcile on drift (see reconcile()), which also
            # covers an event that overtook our own apply's response.
            return self.request(namespace, owner, full=False, trigger=f"child-{kind}")
        if known == self._version(body):
            return None  # the echo of our own write
        return self.request(namespace, owner, full=True, trigger=f"child-{kind}")

    def _prune(self, owner: Owner, wanted: set[str]) -> None:
        """Delete our children of kinds no longer wanted (e.g. the HPA once autoscaling
        is removed). Names are fixed per kind, so only absent kinds need a look."""
        for kind in CHILD_KINDS:
            if kind in wanted:
                continue
            for obj in self._call(lambda k=kind: self.kube.list(  # type: ignore[misc]
                    k, owner.namespace, labels=selector_string(owner))):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == owner.uid for r in refs) and self.kube.delete(
                        kind, owner.namespace, obj["metadata"]["name"],
                        obj["metadata"].get("uid")):
                        self.metrics.prunes.labels(kind).inc()
                        log.info("pruned %s %s/%s", kind, owner.namespace,
                                 obj["metadata"]["name"])


def _surge_stuck(spec: ModelDeploymentSpec, strategy: Strategy,
                 pods: list[dict[str, Any]]) -> bool:
    if spec.rollout.strategy != "Auto" or spec.gpu is None or strategy.max_surge == 0 or (
            strategy.type != "RollingUpdate"):
        return False
    return any(p.reason == Reason.INSUFFICIENT_GPU for p in diagnose_pods(pods, spec))


def _ours(obj: dict[str, Any]) -> bool:
    return bool((obj["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGER)


class Resyncer(threading.Thread):
    """Re-reconciles every ModelDeployment periodically: the drift and cluster-fact backstop.

    A plain thread rather than a kopf timer: kopf puts a finalizer on every object with a
    timer, and a finalizer would block deletion whenever the operator is down.
    """

    def __init__(self, reconciler: Reconciler, interval: float,
                 namespaces: Sequence[str] | None) -> None:
        super().__init__(name="modelfleet-resync", daemon=True)
        self.reconciler = reconciler
        self.interval = interval
        self.namespaces = list(namespaces) if namespaces else None  # None: all
        self.stopping = threading.Event()

    def targets(self) -> list[tuple[str, str]]:
        kube = self.reconciler.kube
        if self.namespaces is None or any(
                set("*?[") & set(ns) for ns in self.namespaces):
            items = kube.list("ModelDeployment")
            if self.namespaces is not None:
                items = [i for i in items if any(fnmatch.fnmatch(
                    i["metadata"]["namespace"], ns) for ns in self.namespaces)]
        else:
            items = [i for ns in self.namespaces for i in kube.list("ModelDeployment", ns)]
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]

    def resync_once(self) -> int:
        done = 0
        for namespace, name in self.targets():
            if self.stopping.is_set():
                break
            try:
                self.reconciler.request(namespace, name, trigger="resync")
                done += 1
            except KubeError as exc:
                log.warning("resync of %s/%s failed: %s", namespace, name, exc)
        return done

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.resync_once()
            except KubeError as exc:
                log.warning("resync listing failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
