"""observe -> plan -> apply what differs -> status, for one ModelDeployment, on kopf's loop.

Level-based: ``reconcile(key)`` reads the cluster as the watches last saw it (``View``) and
never depends on which event fired, so create, update, restart, a child's drift and the resync
all call the same thing. Everything that decides status comes from the cluster; the only
process memory is which writes are already on their way (so one is not sent twice while its
watch event is in flight) and the retry backoff, both of which a restart may lose harmlessly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .apikeys import trim_secret
from .diff import value_at
from .kube import Kube, KubeError
from .memory import release_freed_memory
from .metrics import OperatorMetrics
from .observe import (
    CHILD_KINDS,
    Facts,
    activator_endpoints,
    activator_metrics_port,
    child_object,
    is_ours,
    trim_child,
)
from .plan import APPLY, DELETE, REPLACE, Action, Plan, plan
from .render import Owner, RenderConfig, Strategy
from .render.activator import ActivatorEndpoint, ActivatorRoute, allocate_port, slice_port
from .render.common import STRATEGY_ANNOTATION, selector_string
from .render.deployment import API_KEYS_REVISION_ANNOTATION
from .render.warm import KIND as WARM_KIND
from .status import Observed, Problem, Reason, ScalingReport, compute_status, status_changed
from .usage import UsageReport

log = logging.getLogger("modelfleet.operator")
TRIM_AFTER = 100  # reconciles in a burst before the drained queue gives memory back
Key = tuple[str, str]
_PVC_RE = re.compile(r"^pvc://([^/]+)/")


class Lookup(Protocol):
    """What kopf's indexes offer (kopf.Index): key -> the values stored under it."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __iter__(self) -> Any: ...


def _one(store: Iterable[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    for value in store or ():
        return value
    return None


@dataclass
class View:
    """The watched cluster, read through kopf's indexes (handlers.py keeps them)."""

    mds: Lookup
    children: Mapping[str, Lookup]  # kind -> index by (namespace, name)
    pods: Lookup  # (namespace, ModelDeployment) -> its pods
    gpu_pods: Lookup  # None -> every pod holding GPUs on a node
    nodes: Lookup  # None -> every node
    pvcs: Lookup  # (namespace, name) -> the claim
    # None -> the activator Service's EndpointSlices (None: no activator configured)
    activator: Lookup | None = None
    # (namespace, pods) -> the node autoscaler's newest Event per pod (nodewatch.py)
    node_events: Callable[[str, Sequence[Mapping[str, Any]]], Mapping[str, Any]] | None = None
    # (namespace, name) -> a labelled API key Secret as secretwatch.py keeps it, or None
    api_key_secrets: Callable[[str, str], Mapping[str, Any] | None] | None = None

    def activator_pods(self) -> tuple[ActivatorEndpoint, ...] | None:
        if self.activator is None:
            return None
        seen: dict[str, ActivatorEndpoint] = {}
        for body in self.activator.get(None) or ():
            for ep in activator_endpoints(body):
                seen.setdefault(ep.ip, ep)
        return tuple(seen[ip] for ip in sorted(seen))

    def activator_metrics(self) -> list[str] | None:
        """host:port of each ready activator pod's /metrics (the Service's 'metrics' port)."""
        if self.activator is None:
            return None
        out: set[str] = set()
        for body in self.activator.get(None) or ():
            port = activator_metrics_port(body)
            if port is not None:
                out |= {f"{ep.ip}:{port}" for ep in activator_endpoints(body)}
        return sorted(out)

    def has_activator_slice(self, key: Key) -> bool:
        slices = self.children.get("EndpointSlice")
        return slices is not None and _one(slices.get(key)) is not None

    def activator_ports(self) -> dict[Key, int]:
        """The port each live activator slice holds, by its ModelDeployment."""
        out: dict[Key, int] = {}
        slices = self.children.get("EndpointSlice")
        for key in list(slices or ()):
            port = slice_port(_one(slices.get(key))) if slices is not None else None
            if port is not None:
                out[key] = port
        return out

    def facts(self, key: Key) -> Facts | None:
        md = _one(self.mds.get(key))
        if md is None or (md.get("metadata") or {}).get("deletionTimestamp"):
            return None  # garbage collection removes the children
        uri = str((((md.get("spec") or {}).get("model") or {}).get("uri")) or "")
        claim = _PVC_RE.match(uri)
        nodes = list(self.nodes.get(None) or ())
        pods = list(self.pods.get(key) or ())
        return Facts(
            md=md,
            children={
                kind: child
                for kind in CHILD_KINDS
                if kind in self.children
                and (child := _one(self.children[kind].get(key))) is not None
            },
            pods=pods,
            node_events=dict(self.node_events(key[0], pods)) if self.node_events else {},
            pvc=_one(self.pvcs.get((key[0], claim.group(1)))) if claim else None,
            # No node at all means the operator cannot see them (RBAC): capacity unknown.
            nodes=nodes or None,
            gpu_pods=list(self.gpu_pods.get(None) or ()) if nodes else None,
        )

    def md_keys(self) -> list[Key]:
        return list(self.mds)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fingerprint(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class InFlight:
    """Writes already sent, by object: (resourceVersion the plan saw, what was sent).

    While the watch still shows the version a write was based on, the same write is not
    sent again; the write's own watch event brings the next reconcile."""

    sent: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)
    # The API's answer to a Deployment write, which status reads until the watch shows it.
    answers: dict[tuple[str, ...], Mapping[str, Any]] = field(default_factory=dict)
    # resourceVersion each write produced: its watch event is our own echo, no news.
    echoes: dict[tuple[str, ...], str] = field(default_factory=dict)

    def is_echo(self, what: tuple[str, ...], resource_version: str) -> bool:
        """Whether the watch now shows our own last write of ``what``: no news, and no
        longer in flight (else a deletion that follows, with no reconcile between, would
        look like the write still on its way and never be restored)."""
        echo = bool(resource_version) and self.echoes.get(what) == resource_version
        if echo:
            self.settled(what)
        return echo

    def pending(self, what: tuple[str, ...], seen_rv: str, payload: str) -> bool:
        if self.sent.get(what) == (seen_rv, payload):
            return True
        self.answers.pop(what, None)
        return False

    def remember(
        self,
        what: tuple[str, ...],
        seen_rv: str,
        payload: str,
        answer: Mapping[str, Any] | None = None,
        new_rv: str = "",
    ) -> None:
        self.sent[what] = (seen_rv, payload)
        if new_rv:
            self.echoes[what] = new_rv
        if answer is not None:
            self.answers[what] = answer

    def settled(self, what: tuple[str, ...]) -> None:
        """The watch shows what was wanted: nothing is on its way any more."""
        self.sent.pop(what, None)
        self.answers.pop(what, None)

    def forget(self, key: Key) -> None:
        for what in [w for w in {*self.sent, *self.echoes} if w[1:3] == key]:
            self.sent.pop(what, None)
            self.answers.pop(what, None)
            self.echoes.pop(what, None)


def _ours(child: Mapping[str, Any] | None, uid: str) -> Mapping[str, Any] | None:
    return child if child is not None and is_ours(child, uid) else None


def _rv(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class PortBook:
    """Which activator port each scale-to-zero ModelDeployment has. The cluster holds the
    allocation (each activator slice's port, read back after a restart); this only keeps
    ports handed out in this process whose slice the watch does not show yet, so two
    reconciles running at once cannot pick the same one."""

    port_range: tuple[int, int] = (20000, 29999)
    reserved: dict[Key, int] = field(default_factory=dict)

    def port_for(self, key: Key, live: Mapping[Key, int]) -> int | None:
        # Two live slices holding one port (a race before a restart, a hand edit): the
        # first ModelDeployment by name keeps it.
        holder: dict[int, Key] = {}
        for k, p in sorted(live.items()):
            holder.setdefault(p, k)
        taken = {p for p, k in holder.items() if k != key}
        taken |= {p for k, p in self.reserved.items() if k != key}
        mine = self.reserved.get(key, live.get(key))
        port = allocate_port(mine, taken, self.port_range)
        if port is not None:
            self.reserved[key] = port
        return port

    def release(self, key: Key) -> None:
        self.reserved.pop(key, None)


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        view: View,
        config: RenderConfig | None = None,
        metrics: OperatorMetrics | None = None,
        ports: PortBook | None = None,
    ) -> None:
        self.kube = kube
        self.view = view
        self.config = config or RenderConfig()
        self.metrics = metrics or kube.metrics
        self.ports = ports or PortBook()
        self.inflight = InFlight()
        # The builtin autoscaler's last report per ModelDeployment (handlers.py sets it).
        self.scaling: Callable[[Key], ScalingReport | None] | None = None
        # spec.auth's Secrets may be read (--read-api-key-secrets); False: never
        self.read_api_key_secrets = True
        # The serving pods' idle GPU-hours per ModelDeployment (usagewatch.py; handlers.py)
        self.usage: Callable[[Key], UsageReport | None] | None = None

    async def reconcile(self, key: Key, trigger: str = "event") -> None:
        start = time.perf_counter()
        result = "error"
        try:
            result = await self._reconcile(key)
        finally:
            self.metrics.reconciles.labels(trigger, result).inc()
            self.metrics.duration.labels(trigger).observe(time.perf_counter() - start)

    async def _reconcile(self, key: Key) -> str:
        facts = self.view.facts(key)
        if facts is None:
            self.inflight.forget(key)
            self.ports.release(key)
            return "gone"
        facts = self._with_activator(key, facts)
        facts = await self._with_api_keys(key, facts)
        try:
            the_plan = plan(facts, self.config)
        except Exception as exc:  # a bug or an input nobody foresaw: this object only
            log.exception("%s/%s: planning failed", *key)
            problem = Problem(Reason.RECONCILE_ERROR, f"{type(exc).__name__}: {exc}")
            await self._write_status(
                facts,
                Observed(
                    generation=Owner.from_body(facts.md).generation,
                    selector=selector_string(Owner.from_body(facts.md)),
                    problems=[problem],
                ),
            )
            raise
        acting = {a.kind for a in the_plan.actions}
        for kind in CHILD_KINDS:
            if kind not in acting:
                self.inflight.settled((kind, *key))
        problems = list(the_plan.problems)
        children = dict(facts.children)
        failed: KubeError | None = None
        wrote = False
        # The activator's slice first: scaling to zero, it must take the Service's traffic
        # before the last replica goes. The other children are independent of each other:
        # written concurrently, one request each.
        first = [a for a in the_plan.actions if a.kind == "EndpointSlice"]
        rest = [a for a in the_plan.actions if a.kind != "EndpointSlice"]
        actions = first + rest
        outcomes: list[Any] = []
        for batch in (first, rest):
            outcomes += await asyncio.gather(
                *(self._execute(key, the_plan.owner, a) for a in batch),
                return_exceptions=True,
            )
        for action, out in zip(actions, outcomes, strict=True):
            if isinstance(out, BaseException) and not isinstance(out, KubeError):
                raise out
            if isinstance(out, KubeError):
                log.warning("%s/%s: %s %s failed: %s", *key, action.op, action.kind, out)
                problems.append(
                    Problem(
                        Reason.APPLY_FAILED,
                        (
                            f"{action.kind} {the_plan.owner.name}: {out.status} {out.reason}: "
                            f"{out.message}"
                        ),
                    )
                )
                failed = failed or out
                continue
            wrote = True
            assert not isinstance(out, BaseException)
            if action.op == DELETE:
                children.pop(action.kind, None)
            elif out is not None:
                children[action.kind] = out
        told = await self._tell_pods(key, the_plan, facts)
        failed = failed or told
        observed = self._observed(the_plan, facts, children, problems)
        wrote = await self._write_status(facts, observed) or wrote
        if failed is not None:
            raise failed  # retried with backoff; the status already says what failed
        if the_plan.invalid:
            return "invalid"
        return "wrote" if wrote else "converged"

    def _with_activator(self, key: Key, facts: Facts) -> Facts:
        """Scale to zero: this ModelDeployment's activator port and the activator's pods."""
        auto = ((facts.md.get("spec") or {}).get("autoscaling")) or {}
        pods = self.view.activator_pods()
        if not isinstance(auto, Mapping) or auto.get("minReplicas") != 0 or pods is None:
            self.ports.release(key)
            return facts
        port = self.ports.port_for(key, self.view.activator_ports())
        if port is None:
            return facts  # the range is full: the autoscaler keeps a replica (status says)
        return replace(facts, activator=ActivatorRoute(port=port, endpoints=pods))

    async def _with_api_keys(self, key: Key, facts: Facts) -> Facts:
        """spec.auth's Secret: from the label-selected watch, else one GET (an unlabelled
        Secret, or a namespace whose watch has not listed yet). Ids only are kept."""
        auth = (facts.md.get("spec") or {}).get("auth")
        keys = auth.get("apiKeys") if isinstance(auth, Mapping) else None
        name = keys.get("secretName") if isinstance(keys, Mapping) else None
        if not isinstance(name, str) or not name or not self.read_api_key_secrets:
            return facts
        seen = self.view.api_key_secrets(key[0], name) if self.view.api_key_secrets else None
        if seen is None:
            try:
                body = await self.kube.read_secret(key[0], name)
            except KubeError as exc:  # RBAC, the API down: judge nothing about the Secret
                log.warning("%s/%s: reading Secret %s failed: %s", *key, name, exc)
                return facts
            if body is None:
                return replace(facts, api_key_secret=None, api_key_secret_found=False)
            seen = trim_secret(body)
        return replace(facts, api_key_secret=seen)

    async def _tell_pods(self, key: Key, the_plan: Plan, facts: Facts) -> KubeError | None:
        """Write the key Secret's new revision into each running pod that has not seen it:
        the kubelet then rewrites the mounted Secret at once (apikeys.py)."""
        secret = facts.api_key_secret
        if not the_plan.tell_pods or secret is None:
            return None
        revision = {API_KEYS_REVISION_ANNOTATION: str(secret["resourceVersion"])}
        outcomes = await asyncio.gather(
            *(self.kube.annotate_pod(key[0], pod, revision) for pod in the_plan.tell_pods),
            return_exceptions=True,
        )
        failed: KubeError | None = None
        for pod, out in zip(the_plan.tell_pods, outcomes, strict=True):
            if isinstance(out, KubeError):
                log.warning("%s/%s: telling pod %s of the new API keys failed: %s", *key, pod, out)
                failed = failed or out
            elif isinstance(out, BaseException):
                raise out
        log.info("%s/%s: told %d pods of API key Secret revision %s", *key,
                 len(the_plan.tell_pods), secret["resourceVersion"])  # fmt: skip
        return failed

    async def _execute(self, key: Key, owner: Owner, action: Action) -> Mapping[str, Any] | None:
        what = (action.kind, *key)
        live_rv = _rv(action.live)
        payload = _fingerprint(action.desired) if action.desired is not None else action.op
        if self.inflight.pending(what, live_rv, payload):
            return self.inflight.answers.get(what)
        api_kind, name = child_object(action.kind, owner.name)
        if action.op == DELETE:
            live = action.live or {}
            uid = str((live.get("metadata") or {}).get("uid") or "")
            if await self.kube.delete(api_kind, owner.namespace, name, uid):
                self.metrics.prunes.labels(action.kind).inc()
                log.info("%s/%s: pruned %s", *key, action.kind)
            self.inflight.remember(what, live_rv, payload)
            return None
        assert action.desired is not None
        if action.op == REPLACE:
            log.info(
                "%s/%s: %s drifted at %s; replacing %s",
                *key,
                action.kind,
                ", ".join(action.drift[:5]),
                ", ".join(action.lists),
            )
            await self.kube.replace_lists(
                api_kind,
                owner.namespace,
                name,
                live_rv,
                [(p, value_at(action.desired, p)) for p in action.lists],
            )
        elif action.live is not None and action.op == APPLY:
            log.info(
                "%s/%s: %s drifted at %s; re-applying",
                *key,
                action.kind,
                ", ".join(action.drift[:5]),
            )
        out = await self.kube.apply(action.desired)
        self.metrics.applies.labels(action.kind).inc()
        answer = trim_child(out) if action.kind == "Deployment" else None
        self.inflight.remember(what, live_rv, payload, answer, _rv(out))
        return out

    def _observed(
        self, the_plan: Plan, facts: Facts, children: Mapping[str, Any], problems: list[Problem]
    ) -> Observed:
        owner = the_plan.owner
        deployment = children.get("Deployment")
        if deployment is not None and not is_ours(deployment, owner.uid):
            deployment = None  # a stranger's: ChildConflict says so
        strategy = the_plan.strategy
        if strategy is None and deployment is not None:
            strategy = Strategy.from_manifest(
                (deployment.get("spec") or {}).get("strategy"),
                ((deployment.get("metadata") or {}).get("annotations") or {}).get(
                    STRATEGY_ANNOTATION, ""
                ),
            )
        return Observed(
            generation=owner.generation,
            selector=selector_string(owner),
            spec=the_plan.spec,
            invalid=the_plan.invalid,
            url=the_plan.url,
            deployment=deployment,
            pods=facts.pods,
            node_events=facts.node_events,
            problems=problems,
            strategy=strategy,
            scaling=self.scaling((owner.namespace, owner.name)) if self.scaling else None,
            hpa=_ours(children.get("HorizontalPodAutoscaler"), owner.uid),
            scaled_object=_ours(children.get("ScaledObject"), owner.uid),
            warm=_ours(children.get(WARM_KIND), owner.uid),
            api_key_secret=facts.api_key_secret,
            api_key_secret_found=facts.api_key_secret_found,
            usage=self.usage((owner.namespace, owner.name)) if self.usage else None,
        )

    async def _write_status(self, facts: Facts, observed: Observed) -> bool:
        md = facts.md
        meta = md.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        previous = md.get("status") or {}
        status, transitions = compute_status(observed, previous, _now())
        what = ("ModelDeployment", *key)
        if not status_changed(previous, status):
            self.inflight.settled(what)
            return False
        payload = _fingerprint(
            {k: v for k, v in status.items() if k != "conditions"}
            | {
                "conditions": [
                    {k: v for k, v in c.items() if k != "lastTransitionTime"}
                    for c in status["conditions"]
                ]
            }
        )
        if self.inflight.pending(what, _rv(md), payload):
            return False
        answer = await self.kube.patch_status(key[0], key[1], status)
        self.inflight.remember(what, _rv(md), payload, new_rv=_rv(answer))
        self.metrics.status_writes.inc()
        for t in transitions:
            log.info("%s/%s: %s=%s %s: %s", *key, t.type, t.status, t.reason, t.message)
            text = (
                f"{t.type} is {t.status}: {t.message}" if t.message else (f"{t.type} is {t.status}")
            )
            try:
                await self.kube.event(md, t.event_type, t.reason, text)
                self.metrics.events.labels(t.event_type, t.reason).inc()
            except KubeError as exc:  # an Event is best effort
                log.warning("%s/%s: event not posted: %s", *key, exc)
        return True


class WorkQueue:
    """ModelDeployments to reconcile, by key: at most one reconcile per key at a time,
    requests arriving meanwhile fold into one re-run, a failure comes back after an
    exponential backoff. asyncio only: no threads, no locks (one event loop)."""

    def __init__(
        self,
        handler: Callable[[Key, str], Awaitable[None]],
        *,
        workers: int = 16,
        metrics: OperatorMetrics | None = None,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> None:
        self.handler = handler
        self.workers = workers
        self.metrics = metrics or OperatorMetrics()
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._why: dict[Key, str] = {}
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}  # retries after a failure
        self._soon: dict[Key, asyncio.TimerHandle] = {}  # debounced events
        self._tasks: list[asyncio.Task[None]] = []
        self._since_trim = 0  # reconciles since memory was last given back

    def add(self, key: Key, why: str = "event") -> None:
        """Queue a reconcile of ``key``; ``why`` (the trigger) only labels the metrics."""
        self._why.setdefault(key, why)
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            self.metrics.queue_depth.set(len(self._queued))

    def add_soon(self, key: Key, why: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` unless already due: a burst of events (a rollout's
        pods and Deployment status updates) folds into one reconcile."""
        if key not in self._soon:
            self._soon[key] = asyncio.get_running_loop().call_later(delay, self._soon_due, key, why)

    def _soon_due(self, key: Key, why: str) -> None:
        self._soon.pop(key, None)
        self.add(key, why)

    def add_after(self, key: Key, delay: float) -> None:
        if key not in self._timers:
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._due, key)

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key, "retry")

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def idle(self) -> bool:
        return not (self._queued or self._active or self._again or self._soon)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self.metrics.queue_depth.set(len(self._queued))
            self._active.add(key)
            try:
                await self.handler(key, self._why.pop(key, "event"))
            except Exception as exc:
                count = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(self.max_backoff, self.backoff * 2 ** (count - 1))
                if not isinstance(exc, KubeError):
                    log.warning(
                        "%s/%s: reconcile failed (%s: %s); retry in %.0fs",
                        *key,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                else:
                    log.info("%s/%s: retry in %.0fs after %s", *key, delay, exc)
                self.metrics.retries.inc()
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
                timer = self._timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
                self._since_trim += 1
                if self._since_trim >= TRIM_AFTER and self.idle():
                    self._since_trim = 0
                    release_freed_memory()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"modelfleet-worker-{i}")
            for i in range(self.workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in [*self._timers.values(), *self._soon.values()]:
            timer.cancel()
        self._timers.clear()
        self._soon.clear()


async def resync(view: View, queue: WorkQueue, interval: float, ready: asyncio.Event) -> None:
    """Every ``interval``, queue every ModelDeployment: re-judges slow cluster facts from the
    watches' view; a converged object costs CPU for one plan and no API request."""
    await ready.wait()
    await asyncio.sleep(interval)
    while True:
        # Spread over the interval rather than all at once: 1000 plans in one burst were 1.8 s
        # of CPU at a time (bench/operator.py); spread, the converged operator stays flat.
        keys = list(view.md_keys())
        if not keys:
            await asyncio.sleep(interval)
            continue
        pause = interval / len(keys)
        for key in keys:
            queue.add(key, "resync")
            await asyncio.sleep(pause)
