"""kopf wiring only: which events call the reconciler, and how failures map to kopf's
permanent (do not retry) and temporary (retry with backoff) errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from .kube import KubeError
from .reconcile import Outcome, Reconciler, Resyncer
from .render.common import MANAGED_BY_LABEL, MANAGER
from .spec import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("modelfleet.operator")
MD = (GROUP, VERSION, PLURAL)
OWNED = {MANAGED_BY_LABEL: MANAGER}
# (group, version, plural, full reconcile?) of children whose changes the operator hears:
# a hand-edited or deleted child is put back at once, not at the next resync; pods only
# refresh status.
CHILD_WATCHES = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("", "v1", "pods", "Pod"),
)
RETRY_DELAY_S = 15.0


def _reconciler(memo: Any) -> Reconciler:
    rec: Reconciler = memo.reconciler
    return rec


def _run(memo: Any, namespace: str, name: str, trigger: str) -> Outcome | None:
    try:
        outcome = _reconciler(memo).request(namespace, name, trigger=trigger)
    except KubeError as exc:
        if exc.retryable:
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from exc
        # e.g. 403 or 422: the status already says so; retrying cannot help until
        # something changes, and a change (or the resync) brings us back.
        raise kopf.PermanentError(str(exc)) from exc
    if outcome is not None and outcome.invalid is not None:
        # Status says InvalidSpec; do not retry until the spec changes.
        raise kopf.PermanentError(f"invalid spec: {outcome.invalid}")
    return outcome


def _owner_name(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return str(ref.get("name"))
    # Pods are owned by a ReplicaSet; the instance label names the ModelDeployment.
    return (meta.get("labels") or {}).get("app.kubernetes.io/instance")


def register(registry: kopf.OperatorRegistry, *, resync_seconds: float,
             namespaces: Sequence[str] | None = None) -> None:
    """Attach the handlers to ``registry`` (explicit, so tests can build their own).

    No timers, daemons or deletion handlers: any of them makes kopf add a finalizer, and a
    finalizer would block `kubectl delete` whenever the operator is down. Deletion is
    garbage collection's job (owner references); periodic resync is a Resyncer thread.
    """

    # A custom registry has none of kopf's default login handlers: in a pod, the service
    # account; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube/config).
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        return info or kopf.login_with_kubeconfig(**kwargs)

    kopf.on.login(registry=registry)(login)

    def on_change(*, memo: Any, namespace: str | None, name: str, reason: str,
                  **_: Any) -> None:
        _run(memo, namespace or "", name, str(reason))

    for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorator(*MD, registry=registry, id="reconcile", backoff=RETRY_DELAY_S)(on_change)

    def start_resync(*, memo: Any, **_: Any) -> None:
        # Drift backstop and slow re-check of cluster facts (GPU product, PVC).
        memo.resyncer = Resyncer(_reconciler(memo), resync_seconds, namespaces)
        memo.resyncer.start()

    def stop_resync(*, memo: Any, **_: Any) -> None:
        resyncer = getattr(memo, "resyncer", None)
        if resyncer is not None:
            resyncer.stop()

    kopf.on.startup(registry=registry)(start_resync)
    kopf.on.cleanup(registry=registry)(stop_resync)

    for group, version, plural, kind in CHILD_WATCHES:
        def on_child(*, memo: Any, body: Mapping[str, Any], namespace: str | None,
                     event: Mapping[str, Any], kind: str = kind, **_: Any) -> None:
            owner = _owner_name(body)
            if not owner or not namespace:
                return
            rec = _reconciler(memo)
            try:
                if kind == "Pod":  # pods only change what status says
                    rec.request(namespace, owner, full=False, trigger="child-Pod")
                else:
                    rec.child_event(kind, str(event.get("type") or ""), body, owner)
            except KubeError as exc:  # the resync or the next event retries
                log.warning("reconcile of %s/%s after a %s event failed: %s", namespace,
                            owner, kind, exc)

        kopf.on.event(group, version, plural, registry=registry, labels=OWNED,
                      id=f"child-{plural}")(on_child)
