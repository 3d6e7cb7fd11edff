"""kopf wiring only: what is watched, what each watch keeps (indexes), and which keys an
event queues for a reconcile.

Every handler is ``async def``: kopf runs a plain ``def`` in a thread pool, and these touch
the work queue, which lives on kopf's event loop.

Only ``@kopf.index`` and ``@kopf.on.event`` handlers: kopf writes nothing to the objects for
those (no progress annotations, no finalizers), so `kubectl delete` never waits for the
operator, and kopf starts the event handlers only once every index has its initial list, so
the first reconcile already sees every child that exists (a stranger's included).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf

from .autoscale.loop import Autoscaler, pod_addresses, simulated_addresses
from .coldstart import describe, ready_time, startup_phases
from .kube import Kube
from .metrics import OperatorMetrics
from .nodewatch import NodeEventWatch
from .observe import (
    is_generated_slice,
    md_key,
    owner_of_child,
    pod_owner,
    trim_activator_slice,
    trim_child,
    trim_gpu_pod,
    trim_md,
    trim_node,
    trim_pod,
    trim_pvc,
    warm_key,
)
from .reconcile import Key, PortBook, Reconciler, View, WorkQueue, resync
from .render.activator import SERVICE_NAME_LABEL
from .render.common import MANAGED_BY_LABEL, MANAGER, RenderConfig
from .render.deployment import CONTAINER
from .render.warm import KIND as WARM_KIND
from .secretwatch import SecretWatch
from .spec import GROUP, PLURAL, VERSION
from .usage import INTERVAL_S as USAGE_INTERVAL_S
from .usagewatch import UsageWatch

log = logging.getLogger("modelfleet.operator")
# Events of children and pods come in bursts (a rollout): they fold into one reconcile this
# much later. A spec change is reconciled at once.
SETTLE_S = 1.0
MD = (GROUP, VERSION, PLURAL)
# (group, version, plural) of each child kind, and the index that keeps them.
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    # KEDA's CRD may be absent: kopf then warns once and leaves this index empty.
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    # The activator's slice of the Service (scale to zero); controllers' slices are skipped.
    "EndpointSlice": ("discovery.k8s.io", "v1", "endpointslices"),
}
# Everything watched: (group, version, plural). The chart's RBAC grants list+watch on each
# (tests/unit/test_chart_render.py checks).
WATCHED = (
    MD,
    *CHILDREN.values(),
    ("", "v1", "pods"),
    ("", "v1", "nodes"),
    ("", "v1", "persistentvolumeclaims"),
)
INDEX = {
    "ModelDeployment": "mf_mds",
    "Deployment": "mf_deployments",
    "Service": "mf_services",
    "PodDisruptionBudget": "mf_pdbs",
    "HorizontalPodAutoscaler": "mf_hpas",
    "ScaledObject": "mf_scaledobjects",
    "EndpointSlice": "mf_endpointslices",
    WARM_KIND: "mf_warm",
}


@dataclass
class Runtime:
    """What the handlers share, kept in kopf's memo."""

    kube_factory: Callable[[], Awaitable[Kube]]
    config: RenderConfig
    metrics: OperatorMetrics
    workers: int
    resync_seconds: float
    usage_seconds: float = USAGE_INTERVAL_S
    queue: WorkQueue | None = None
    reconciler: Reconciler | None = None
    ready: asyncio.Event | None = None
    node_facts: dict[str, str] | None = None
    tasks: tuple[asyncio.Task[None], ...] = ()
    autoscaler: Autoscaler | None = None
    # Scale to zero: the activator's Service (namespace, name), None: no activator; and the
    # ports the operator hands out to ModelDeployments on it.
    activator_service: tuple[str, str] | None = None
    activator_ports: tuple[int, int] = (20000, 29999)
    # spec.auth: watch labelled API key Secrets, GET unlabelled ones (--read-api-key-secrets)
    read_api_key_secrets: bool = True
    # Pods whose start was counted (pod_startup), until they are deleted; and when we began.
    started_pods: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)


def _rt(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


def _queue(memo: Any) -> WorkQueue | None:
    rt = _rt(memo)
    if rt.ready is not None and not rt.ready.is_set():
        rt.ready.set()  # kopf runs event handlers only after every index is listed
    return rt.queue


def _key_of(namespace: str | None, name: str | None) -> Key | None:
    return (namespace, name) if namespace and name else None


def _echo(memo: Any, kind: str, body: kopf.Body) -> bool:
    """Whether this event is the watch showing our own last write of the object (no news:
    the reconcile that wrote it already used the API's answer)."""
    rec = _rt(memo).reconciler
    meta = body.get("metadata") or {}
    rv = str(meta.get("resourceVersion") or "")
    whats = [(kind, str(meta.get("namespace")), str(meta.get("name")))]
    warm = warm_key(body) if kind == "Deployment" else None
    if warm is not None:  # named <md>-warm: maybe that one's placeholder Deployment
        whats.append((WARM_KIND, *warm))
    return rec is not None and any(rec.inflight.is_echo(what, rv) for what in whats)


class _Loop(Protocol):
    async def run(self) -> None: ...


async def _after_ready(loop: _Loop, ready: asyncio.Event) -> None:
    """A background loop (autoscaler, usage, Secret and node-event watches), started once
    the indexes hold every ModelDeployment and pod."""
    await ready.wait()
    await loop.run()


def _observe_startup(rt: Runtime, body: kopf.Body, event: Mapping[str, Any], nodes: Any) -> None:
    """Once per pod that became Ready while this operator ran: its start, phase by phase."""
    uid = str((body.get("metadata") or {}).get("uid") or "")
    if event.get("type") == "DELETED":
        rt.started_pods.discard(uid)
        return
    if not uid or uid in rt.started_pods:
        return
    node_name = (body.get("spec") or {}).get("nodeName")
    node = next(
        (n for n in nodes.get(None) or () if (n.get("metadata") or {}).get("name") == node_name),
        None,
    )
    phases = startup_phases(body, node, CONTAINER)
    if phases is None:
        return
    rt.started_pods.add(uid)
    ready_at = ready_time(body)
    if ready_at is None or ready_at < rt.started_at - 5:
        return  # Ready before this process started: counted by an earlier one
    for phase, seconds in phases.items():
        rt.metrics.pod_startup.labels(phase).observe(seconds)
    meta = body.get("metadata") or {}
    log.info("%s/%s: pod %s ready: %s", meta.get("namespace"), pod_owner(body), meta.get("name"),
             describe(phases))  # fmt: skip


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers to ``registry`` (explicit, so tests can build their own)."""

    # A custom registry has none of kopf's default login handlers: in a pod, the service
    # account; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube/config).
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        return info or kopf.login_with_kubeconfig(**kwargs)

    kopf.on.login(registry=registry)(login)

    # --- indexes: the cluster as the watches last saw it -------------------------------------

    async def index_md(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {md_key(body): trim_md(body)}

    kopf.index(*MD, registry=registry, id=INDEX["ModelDeployment"])(index_md)

    async def index_child(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        if body.get("kind") == "EndpointSlice" and is_generated_slice(body):
            return {}  # a controller's (the Service's own endpoints): never a child
        return {md_key(body): trim_child(body)}

    for kind, resource in CHILDREN.items():
        kopf.index(*resource, registry=registry, id=INDEX[kind])(index_child)

    async def index_warm(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        # spec.warmCapacity's placeholder Deployment, filed under its ModelDeployment (it is
        # in mf_deployments too, by its own name: a ModelDeployment named like it conflicts).
        key = warm_key(body)
        return {key: trim_child(body)} if key is not None else {}

    kopf.index(*CHILDREN["Deployment"], registry=registry, id=INDEX[WARM_KIND])(index_warm)

    async def index_pod(body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, Any]:
        owner = pod_owner(body)
        return {(namespace, owner): trim_pod(body)} if owner and namespace else {}

    async def index_gpu_pod(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        trimmed = trim_gpu_pod(body)
        return {None: trimmed} if trimmed else {}

    kopf.index("", "v1", "pods", registry=registry, id="mf_pods")(index_pod)
    kopf.index("", "v1", "pods", registry=registry, id="mf_gpu_pods")(index_gpu_pod)

    async def index_activator(
        body: kopf.Body, namespace: str | None, memo: Any, **_: Any
    ) -> dict[Any, Any]:
        wanted = _rt(memo).activator_service
        labels = (body.get("metadata") or {}).get("labels") or {}
        if wanted is None or (namespace, labels.get(SERVICE_NAME_LABEL)) != wanted:
            return {}
        return {None: trim_activator_slice(body)}

    kopf.index("discovery.k8s.io", "v1", "endpointslices", registry=registry, id="mf_activator")(
        index_activator
    )

    async def index_node(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {None: trim_node(body)}

    kopf.index("", "v1", "nodes", registry=registry, id="mf_nodes")(index_node)

    async def index_pvc(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {md_key(body): trim_pvc(body)}

    kopf.index("", "v1", "persistentvolumeclaims", registry=registry, id="mf_pvcs")(index_pvc)

    # --- events: which ModelDeployment to reconcile ------------------------------------------

    async def on_md(
        *, memo: Any, body: kopf.Body, namespace: str | None, name: str | None, **_: Any
    ) -> None:
        queue, key = _queue(memo), _key_of(namespace, name)
        if queue is not None and key is not None and not _echo(memo, "ModelDeployment", body):
            queue.add(key, "md")

    kopf.on.event(*MD, registry=registry, id="md")(on_md)

    async def on_child(*, memo: Any, body: kopf.Body, namespace: str | None, **kw: Any) -> None:
        kind = str(body.get("kind"))
        if kind == "EndpointSlice" and _on_activator_slice(
            memo, body, namespace, kw[INDEX["ModelDeployment"]]
        ):
            return
        if kind == "EndpointSlice" and is_generated_slice(body):
            return  # a Service's own endpoints: pod events already tell
        queue = _queue(memo)
        keys = {_key_of(namespace, owner_of_child(body))}
        if kind == "Deployment":
            keys.add(warm_key(body))  # the placeholder Deployment of <md>, if <md>-warm
        mds = kw[INDEX["ModelDeployment"]]
        if queue is None or _echo(memo, kind, body):
            return
        for key in keys:
            if key is not None and key in mds:
                queue.add_soon(key, f"child-{kind}", SETTLE_S)

    for kind, resource in CHILDREN.items():
        kopf.on.event(*resource, registry=registry, id=f"child-{kind}")(on_child)

    def _on_activator_slice(memo: Any, body: kopf.Body, namespace: str | None, mds: Any) -> bool:
        """Whether this is one of the activator Service's slices. Its pods changed: every
        scale-to-zero ModelDeployment's slice lists them (or stops listing a gone one)."""
        rt, queue = _rt(memo), _queue(memo)
        labels = (body.get("metadata") or {}).get("labels") or {}
        if rt.activator_service != (namespace, labels.get(SERVICE_NAME_LABEL)):
            return False
        if queue is None:
            return True
        for key in list(mds):
            md = next(iter(mds.get(key) or ()), None) or {}
            auto = (md.get("spec") or {}).get("autoscaling") or {}
            if isinstance(auto, Mapping) and auto.get("minReplicas") == 0:
                queue.add_soon(key, "activator", SETTLE_S)
        return True

    async def on_pod(
        *,
        memo: Any,
        body: kopf.Body,
        namespace: str | None,
        event: Mapping[str, Any],
        **kw: Any,
    ) -> None:
        queue, key = _queue(memo), _key_of(namespace, pod_owner(body))
        if queue is not None and key is not None:
            queue.add_soon(key, "pod", SETTLE_S)
            _observe_startup(_rt(memo), body, event, kw["mf_nodes"])

    kopf.on.event(
        "", "v1", "pods", registry=registry, id="pod", labels={MANAGED_BY_LABEL: MANAGER}
    )(on_pod)

    async def on_node(
        *, memo: Any, body: kopf.Body, name: str | None, event: Mapping[str, Any], **kw: Any
    ) -> None:
        # Heartbeats change nodes all the time; only what a plan reads matters.
        rt = _rt(memo)
        queue = _queue(memo)
        facts = rt.node_facts if rt.node_facts is not None else {}
        rt.node_facts = facts
        seen = "" if event.get("type") == "DELETED" else repr(trim_node(body))
        if queue is None or not name or facts.get(name) == seen:
            return
        first = name not in facts
        facts[name] = seen
        if not first:
            for key in kw[INDEX["ModelDeployment"]]:
                queue.add(key, "node")

    kopf.on.event("", "v1", "nodes", registry=registry, id="node")(on_node)

    async def on_pvc(*, memo: Any, name: str | None, namespace: str | None, **kw: Any) -> None:
        mds = kw[INDEX["ModelDeployment"]]
        queue = _queue(memo)
        if queue is None or not namespace:
            return
        prefix = f"pvc://{name}/"
        for key in mds:
            if key[0] == namespace and any(
                str(((m.get("spec") or {}).get("model") or {}).get("uri", "")).startswith(prefix)
                for m in mds[key]
            ):
                queue.add(key, "pvc")

    kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry, id="pvc")(on_pvc)

    # --- lifecycle ---------------------------------------------------------------------------

    async def startup(memo: Any, **kwargs: Any) -> None:
        rt = _rt(memo)
        view = View(
            mds=kwargs[INDEX["ModelDeployment"]],
            children={kind: kwargs[INDEX[kind]] for kind in (*CHILDREN, WARM_KIND)},
            pods=kwargs["mf_pods"],
            gpu_pods=kwargs["mf_gpu_pods"],
            nodes=kwargs["mf_nodes"],
            pvcs=kwargs["mf_pvcs"],
            activator=kwargs["mf_activator"] if rt.activator_service is not None else None,
        )
        kube: Kube = await rt.kube_factory()
        rt.reconciler = Reconciler(
            kube, view, rt.config, rt.metrics, ports=PortBook(port_range=rt.activator_ports)
        )
        rt.queue = WorkQueue(rt.reconciler.reconcile, workers=rt.workers, metrics=rt.metrics)
        rt.queue.start()
        rt.ready = asyncio.Event()
        queue = rt.queue
        # The builtin engine (spec.autoscaling.engine builtin): scrapes the pods the index
        # holds, writes /scale, and queues a reconcile when what status says would change.
        rt.autoscaler = Autoscaler(
            view.mds,
            view.pods,
            kube.patch_scale,
            notify=lambda key: queue.add(key, "autoscale"),
            resolver=(
                simulated_addresses
                if os.environ.get("MODELFLEET_SIMULATED_METRICS") == "1"
                else pod_addresses
            ),
            activators=view.activator_metrics,
            routed=view.has_activator_slice,
        )
        rt.reconciler.scaling = rt.autoscaler.report
        # What a node autoscaler says of pending pods (WaitingForNode / NoNodeGroupFits).
        node_watch = NodeEventWatch(
            view.pods, kube.list_events, notify=lambda key: queue.add(key, "node-events")
        )
        view.node_events = node_watch.for_pods
        # spec.auth: the labelled API key Secrets of the namespaces that use them.
        secret_watch = SecretWatch(
            view.mds,
            kube.list_secrets,
            kube.watch_secrets,
            notify=lambda key: queue.add(key, "api-keys"),
        )
        # spec.gpu: the pods' idle GPU-hours for status.usage (the autoscaler's scraper).
        usage_watch = UsageWatch(
            view.mds,
            view.pods,
            rt.autoscaler.scraper,
            rt.autoscaler.resolver,
            notify=lambda key: queue.add(key, "usage"),
            interval_s=rt.usage_seconds,
        )
        rt.reconciler.usage = usage_watch.get
        if rt.read_api_key_secrets:
            view.api_key_secrets = secret_watch.get
        else:
            rt.reconciler.read_api_key_secrets = False
        rt.tasks = (
            asyncio.create_task(
                resync(view, rt.queue, rt.resync_seconds, rt.ready), name="modelfleet-resync"
            ),
            asyncio.create_task(
                _after_ready(rt.autoscaler, rt.ready), name="modelfleet-autoscaler"
            ),
            asyncio.create_task(_after_ready(node_watch, rt.ready), name="modelfleet-node-events"),
            asyncio.create_task(_after_ready(usage_watch, rt.ready), name="modelfleet-usage"),
        )
        if rt.read_api_key_secrets:
            rt.tasks += (
                asyncio.create_task(
                    _after_ready(secret_watch, rt.ready),
                    name="modelfleet-api-key-secrets",
                ),
            )

    async def cleanup(memo: Any, **_: Any) -> None:
        rt = _rt(memo)
        for task in rt.tasks:
            task.cancel()
        if rt.queue is not None:
            await rt.queue.stop()
        if rt.autoscaler is not None:
            await rt.autoscaler.close()
        if rt.reconciler is not None:
            await rt.reconciler.kube.close()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
