"""The only module that talks to the Kubernetes API.

Plain dicts in and out over the official client's REST layer (no model classes: they are
slow and drop unknown fields). Children are written with server-side apply under one field
manager, forcing conflicts: the operator is the authority over the fields it renders, and
fields it leaves out (e.g. a Deployment's replicas while an HPA owns them) stay with whoever
set them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .render.common import MANAGER
from .spec import GROUP, PLURAL, VERSION

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
TIMEOUT = (5, 30)


@dataclass(frozen=True)
class Kind:
    group_version: str  # "v1" or "apps/v1"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        root = "/api/" if "/" not in self.group_version else "/apis/"
        out = root + self.group_version
        if self.namespaced and namespace:
            out += f"/namespaces/{quote(namespace)}"
        out += f"/{self.plural}"
        if name:
            out += f"/{quote(name)}"
        if sub:
            out += f"/{sub}"
        return out


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "Service": Kind("v1", "services"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers"),
    "ModelDeployment": Kind(f"{GROUP}/{VERSION}", PLURAL),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Event": Kind("v1", "events"),
    "Node": Kind("v1", "nodes", namespaced=False),
}
# Children the operator creates, and may prune.
CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")


class KubeError(Exception):
    """An API call failed; ``retryable`` says whether trying again later can help."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        # 0: no response (network); 409: conflict; 429: throttled; 5xx: server trouble.
        return self.status in (0, 408, 409, 429) or self.status >= 500

    @property
    def forbidden(self) -> bool:
        return self.status == 403


def make_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        cfg = client.Configuration.get_default_copy()
    except config.ConfigException:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg)
    # Many executor threads share one client: size its connection pool for them.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.calls = 0  # for the bench and metrics
        self._lock = threading.Lock()

    # --- transport -----------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None,
                query: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        with self._lock:
            self.calls += 1
        url = self.api.configuration.host + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        headers.update(self.api.default_headers)
        self.api.update_params_for_auth(headers, None, ["BearerToken"], path, method, body)
        # JSON bodies go as dicts (the client serializes them); an apply body is sent as
        # JSON text, which is valid YAML, because the client would not serialize it.
        payload = json.dumps(body) if body is not None and content_type == APPLY else body
        try:
            resp = self.api.call_api(method, url, header_params=headers, body=payload,
                                     _request_timeout=TIMEOUT)
            data = resp.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _error(exc.status or 0, exc.reason or "", exc.body) from exc
        except Exception as exc:  # urllib3 connection errors and the like
            raise KubeError(0, type(exc).__name__, str(exc)) from exc
        if not 200 <= resp.status < 300:
            raise _error(resp.status, resp.reason or "", data)
        return json.loads(data) if data else None

    # --- reads ----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.request("GET", KINDS[kind].path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return out

    def list(self, kind: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, str] = {}
        if labels:
            query["labelSelector"] = labels
        if fields:
            query["fieldSelector"] = fields
        out = self.request("GET", KINDS[kind].path(namespace), query=query)
        return list(out.get("items") or [])

    # --- writes ---------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (force: we own these)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"])
        out: dict[str, Any] = self.request(
            "PATCH", path, body=obj, content_type=APPLY,
            query={"fieldManager": MANAGER, "force": "true"})
        return out

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}  # never delete a same-named stranger
        try:
            self.request("DELETE", KINDS[kind].path(namespace, name), body=body)
        except KubeError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.request("PATCH", KINDS["ModelDeployment"].path(namespace, name, "status"),
                     body={"status": status}, content_type=MERGE)

    def event(self, owner: Mapping[str, Any], event_type: str, reason: str,
              message: str) -> None:
        """A core/v1 Event on the ModelDeployment (what `kubectl describe` shows)."""
        meta = owner["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": owner.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": owner.get("kind", "ModelDeployment"),
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
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
        self.request("POST", KINDS["Event"].path(meta["namespace"]), body=body)


def _error(status: int, reason: str, body: Any) -> KubeError:
    message = body.decode() if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(message)
        message = parsed.get("message", message)
        reason = parsed.get("reason", reason)
    except (ValueError, AttributeError):
        pass
    return KubeError(status, reason, message)
