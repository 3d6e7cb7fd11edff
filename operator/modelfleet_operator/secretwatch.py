"""Watches the API key Secrets (label ``modelfleet.io/api-keys=true``) of the namespaces
where a ModelDeployment has spec.auth, and queues a reconcile of each ModelDeployment whose
Secret changed, so its running pods are told within a second or two (apikeys.py says why).

One LIST + WATCH per such namespace, filtered by the label on the API server: the operator
never receives any other Secret, and runs no watch at all while no ModelDeployment uses
spec.auth. kopf could not do this (its watches take no label selector: it would stream every
Secret in the cluster). What is kept per Secret is apikeys.trim_secret's: ids, never hashes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from .apikeys import API_KEYS_LABEL, trim_secret

log = logging.getLogger(__name__)

Key = tuple[str, str]
SELECTOR = f"{API_KEYS_LABEL}=true"
TICK_S = 2.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class Lookup(Protocol):
    def get(self, key: Any, default: Any = None) -> Any: ...

    def __iter__(self) -> Any: ...


# (namespace, label selector) -> (the Secrets, the list's resourceVersion)
ListSecrets = Callable[[str, str], Awaitable[tuple[list[dict[str, Any]], str]]]
# (namespace, label selector, resourceVersion) -> (event type, object) until the server ends it
WatchSecrets = Callable[[str, str, str], AsyncIterator[tuple[str, dict[str, Any]]]]


def secret_refs(mds: Lookup) -> dict[str, dict[str, set[Key]]]:
    """namespace -> Secret name -> the ModelDeployments naming it in spec.auth."""
    out: dict[str, dict[str, set[Key]]] = {}
    for key in list(mds):
        if not isinstance(key, tuple) or len(key) != 2:
            continue
        for md in mds.get(key) or ():
            spec = md.get("spec") if isinstance(md, Mapping) else None
            auth = spec.get("auth") if isinstance(spec, Mapping) else None
            keys = auth.get("apiKeys") if isinstance(auth, Mapping) else None
            name = keys.get("secretName") if isinstance(keys, Mapping) else None
            if isinstance(name, str) and name:
                ns = str(key[0])
                out.setdefault(ns, {}).setdefault(name, set()).add((ns, str(key[1])))
    return out


class SecretWatch:
    def __init__(
        self,
        mds: Lookup,
        list_secrets: ListSecrets,
        watch_secrets: WatchSecrets,
        notify: Callable[[Key], None],
        *,
        tick_s: float = TICK_S,
    ) -> None:
        self.mds = mds
        self.list_secrets = list_secrets
        self.watch_secrets = watch_secrets
        self.notify = notify
        self.tick_s = tick_s
        self.secrets: dict[Key, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get((namespace, name))

    def _changed(self, key: Key) -> None:
        namespace, name = key
        for md in sorted(secret_refs(self.mds).get(namespace, {}).get(name, ())):
            self.notify(md)

    def _store(self, body: Mapping[str, Any]) -> None:
        trimmed = trim_secret(body)
        key = (str(trimmed["namespace"]), str(trimmed["name"]))
        if self.secrets.get(key) != trimmed:
            self.secrets[key] = trimmed
            self._changed(key)

    def _drop(self, key: Key) -> None:
        if self.secrets.pop(key, None) is not None:
            self._changed(key)

    async def _list(self, namespace: str) -> str:
        items, rv = await self.list_secrets(namespace, SELECTOR)
        seen = set()
        for item in items:
            meta = item.get("metadata") or {}
            seen.add((namespace, str(meta.get("name"))))
            self._store({**item, "metadata": {**meta, "namespace": namespace}})
        for key in [k for k in self.secrets if k[0] == namespace and k not in seen]:
            self._drop(key)
        return rv

    async def _follow(self, namespace: str) -> None:
        """LIST, then WATCH from its resourceVersion; again after a failure (backoff) or
        when the server ends the watch (from the last version seen)."""
        failures = 0
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._list(namespace)
                async for kind, obj in self.watch_secrets(namespace, SELECTOR, rv):
                    meta = obj.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or rv)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self._drop((namespace, str(meta.get("name"))))
                    else:
                        self._store({**obj, "metadata": {**meta, "namespace": namespace}})
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # 410 Gone, RBAC, the API down: list again later
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("watching API key Secrets in %s failed (%s); again in %.0f s",
                            namespace, exc, delay)  # fmt: skip
                rv = ""
                await asyncio.sleep(delay)

    def tick(self) -> None:
        """Start a watch for each namespace that needs one, stop those no longer needed."""
        wanted = set(secret_refs(self.mds))
        for ns in wanted - set(self._tasks):
            self._tasks[ns] = asyncio.create_task(
                self._follow(ns), name=f"modelfleet-api-key-secrets-{ns}"
            )
        for ns in set(self._tasks) - wanted:
            self._tasks.pop(ns).cancel()
            for key in [k for k in self.secrets if k[0] == ns]:
                del self.secrets[key]

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.tick()
                except Exception:  # one bad tick must not end the watch
                    log.exception("API key Secret watch tick failed")
                await asyncio.sleep(self.tick_s)
        finally:
            for task in self._tasks.values():
                task.cancel()
