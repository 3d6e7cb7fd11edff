"""The only module that writes to the Kubernetes API (reads come from the watches).

kubernetes_asyncio, the asyncio port of the official client, generated from the same OpenAPI
spec: it runs on kopf's event loop (no thread pool), its typed per-kind methods are its public
API across versions, and ``_preload_content=False`` hands back the raw JSON (its model
classes are slow and drop unknown fields). Children are written with server-side apply under
one field manager, forcing conflicts: the operator is the authority over the fields it
renders, and fields it leaves out (a Deployment's replicas while an HPA owns them) stay with
whoever set them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from .metrics import OperatorMetrics
from .render.common import MANAGER
from .spec import GROUP, PLURAL, VERSION

# The charset parameter makes the client send our bytes untouched: its own json.dumps
# escapes non-BMP characters (emoji) into surrogate pairs, which the API server's YAML
# decoder refuses. Raw UTF-8 JSON is valid YAML.
APPLY = "application/apply-patch+yaml; charset=utf-8"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
WATCH_SECONDS = 290  # the server ends a watch after this; it is opened again
WATCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=WATCH_SECONDS + 30)

# kind -> (API class, method suffix) of the generated client.
_APIS: dict[str, tuple[str, str]] = {
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "EndpointSlice": ("DiscoveryV1Api", "endpoint_slice"),
}
# Children of custom kinds, written through CustomObjectsApi: kind -> (group, version, plural).
_CUSTOM: dict[str, tuple[str, str, str]] = {
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
}


class KubeError(Exception):
    """An API call failed; ``retryable`` says whether the same call can succeed later
    without anything else changing."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        # 0: no response (network); 409: conflict; 429: throttled; 5xx: server trouble.
        return self.status in (0, 408, 409, 429) or self.status >= 500


async def make_api_client(kubeconfig: str | None = None, pool: int = 32) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(configuration=cfg)


def _error(status: int, reason: str, body: bytes) -> KubeError:
    message = body.decode(errors="replace")
    try:
        parsed = json.loads(message)
        message = str(parsed.get("message", message))
        reason = str(parsed.get("reason", reason))
    except (ValueError, AttributeError):
        pass
    return KubeError(status, reason, message)


class Kube:
    def __init__(self, api: client.ApiClient, metrics: OperatorMetrics | None = None) -> None:
        self.api = api
        self.metrics = metrics or OperatorMetrics()
        self._typed: dict[str, Any] = {}

    def _api(self, name: str) -> Any:
        if name not in self._typed:
            self._typed[name] = getattr(client, name)(self.api)
        return self._typed[name]

    async def _call(
        self, verb: str, kind: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """One request: raw JSON back, any failure as a KubeError, counted by verb/kind/code."""
        code = "0"
        started = time.monotonic()
        try:
            resp = await fn(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
            async with resp:
                data = await resp.read()
                code = str(resp.status)
                if not 200 <= resp.status < 300:
                    raise _error(resp.status, resp.reason or "", data)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeError(0, type(exc).__name__, str(exc) or "no response") from exc
        except client.ApiException as exc:  # raised before a response (bad arguments)
            code = str(exc.status or 0)
            raise KubeError(exc.status or 0, exc.reason or "", str(exc.body or "")) from exc
        finally:
            self.metrics.api_requests.labels(verb, kind, code).inc()
            self.metrics.api_seconds.labels(verb).observe(time.monotonic() - started)
        return json.loads(data) if data else None

    # --- children ----------------------------------------------------------------------------

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (force: we own these)."""
        meta = obj["metadata"]
        body = json.dumps(obj, ensure_ascii=False).encode()
        if obj["kind"] in _CUSTOM:
            custom: dict[str, Any] = await self._call(
                "apply",
                obj["kind"],
                self._api("CustomObjectsApi").patch_namespaced_custom_object,
                *_CUSTOM[obj["kind"]][:2],
                meta["namespace"],
                _CUSTOM[obj["kind"]][2],
                meta["name"],
                body,
                field_manager=MANAGER,
                force=True,
                _content_type=APPLY,
            )
            return custom
        cls, suffix = _APIS[obj["kind"]]
        out: dict[str, Any] = await self._call(
            "apply",
            obj["kind"],
            getattr(self._api(cls), f"patch_namespaced_{suffix}"),
            meta["name"],
            meta["namespace"],
            body,
            field_manager=MANAGER,
            force=True,
            _content_type=APPLY,
        )
        return out

    async def replace_lists(
        self,
        kind: str,
        namespace: str,
        name: str,
        resource_version: str,
        values: Sequence[tuple[str, Any]],
    ) -> dict[str, Any]:
        """Set whole lists (JSON Patch ``add`` replaces a member), only if the object is
        still the version the plan looked at."""
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
        ]
        ops += [{"op": "add", "path": path, "value": value} for path, value in values]
        if kind in _CUSTOM:
            group, version, plural = _CUSTOM[kind]
            custom: dict[str, Any] = await self._call(
                "patch",
                kind,
                self._api("CustomObjectsApi").patch_namespaced_custom_object,
                group,
                version,
                namespace,
                plural,
                name,
                ops,
                field_manager=MANAGER,
                _content_type=JSON_PATCH,
            )
            return custom
        cls, suffix = _APIS[kind]
        out: dict[str, Any] = await self._call(
            "patch",
            kind,
            getattr(self._api(cls), f"patch_namespaced_{suffix}"),
            name,
            namespace,
            ops,
            field_manager=MANAGER,
            _content_type=JSON_PATCH,
        )
        return out

    async def delete(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete one child, only the exact object (uid) the plan saw; False if it is gone."""
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            if kind in _CUSTOM:
                group, version, plural = _CUSTOM[kind]
                await self._call(
                    "delete",
                    kind,
                    self._api("CustomObjectsApi").delete_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    body=body,
                )
            else:
                cls, suffix = _APIS[kind]
                await self._call(
                    "delete",
                    kind,
                    getattr(self._api(cls), f"delete_namespaced_{suffix}"),
                    name,
                    namespace,
                    body=body,
                )
        except KubeError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    # --- the ModelDeployment ---------------------------------------------------------------

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(
            "patch",
            "ModelDeployment/status",
            self._api("CustomObjectsApi").patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type=MERGE,
        )
        return out

    async def patch_scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Set spec.replicas through the scale subresource (the builtin autoscaler's write;
        RBAC: modeldeployments/scale patch, not the spec)."""
        out: dict[str, Any] = await self._call(
            "patch",
            "ModelDeployment/scale",
            self._api("CustomObjectsApi").patch_namespaced_custom_object_scale,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE,
        )
        return out

    async def event(
        self, owner: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on the ModelDeployment (what `kubectl describe` shows)."""
        meta = owner["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ModelDeployment",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(
            "create",
            "Event",
            self._api("CoreV1Api").create_namespaced_event,
            meta["namespace"],
            body,
        )

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        """Events in ``namespace`` matching ``field_selector`` (at most 500: the newest
        matter, and a pod's Events are aggregated by the recorder into a series)."""
        out = await self._call(
            "list",
            "Event",
            self._api("CoreV1Api").list_namespaced_event,
            namespace,
            field_selector=field_selector,
            limit=500,
        )
        return list((out or {}).get("items") or [])

    # --- spec.auth: the API key Secrets (secretwatch.py) and the pods told of them --------

    async def list_secrets(
        self, namespace: str, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        out = await self._call(
            "list",
            "Secret",
            self._api("CoreV1Api").list_namespaced_secret,
            namespace,
            label_selector=label_selector,
        )
        meta = (out or {}).get("metadata") or {}
        return list((out or {}).get("items") or []), str(meta.get("resourceVersion") or "")

    async def watch_secrets(
        self, namespace: str, label_selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """A watch's events as (type, object) until the server ends it (~5 min); an ERROR
        event (410 Gone: the version is too old) raises KubeError."""
        code = "0"
        try:
            resp = await self._api("CoreV1Api").list_namespaced_secret(
                namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                watch=True,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _preload_content=False,
                _request_timeout=WATCH_TIMEOUT,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.metrics.api_requests.labels("watch", "Secret", code).inc()
            raise KubeError(0, type(exc).__name__, str(exc) or "no response") from exc
        async with resp:
            code = str(resp.status)
            self.metrics.api_requests.labels("watch", "Secret", code).inc()
            if not 200 <= resp.status < 300:
                raise _error(resp.status, resp.reason or "", await resp.read())
            try:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise KubeError(int(obj.get("code") or 0), str(obj.get("reason") or ""),
                                        str(obj.get("message") or "watch error"))  # fmt: skip
                    yield str(event.get("type")), obj
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise KubeError(0, type(exc).__name__, str(exc) or "watch broken") from exc

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, None when there is none (404)."""
        try:
            out: dict[str, Any] = await self._call(
                "get", "Secret", self._api("CoreV1Api").read_namespaced_secret, name, namespace
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return out

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """A merge patch of a pod's annotations (the kubelet syncs the pod at once)."""
        try:
            await self._call(
                "patch",
                "Pod",
                self._api("CoreV1Api").patch_namespaced_pod,
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type=MERGE,
            )
        except KubeError as exc:
            if exc.status != 404:  # gone already: nothing to tell
                raise

    # --- leader election (leader.py) -------------------------------------------------------

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = await self._call(
                "get",
                "Lease",
                self._api("CoordinationV1Api").read_namespaced_lease,
                name,
                namespace,
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return out

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(
            "create",
            "Lease",
            self._api("CoordinationV1Api").create_namespaced_lease,
            namespace,
            body,
        )
        return out

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A PUT carrying the resourceVersion we read: 409 if someone wrote it since."""
        out: dict[str, Any] = await self._call(
            "update",
            "Lease",
            self._api("CoordinationV1Api").replace_namespaced_lease,
            name,
            namespace,
            body,
        )
        return out

    async def close(self) -> None:
        await self.api.close()
