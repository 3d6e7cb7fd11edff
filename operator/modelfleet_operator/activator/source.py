"""Where the activator's EndpointSlices come from: the API (list, then watch from that
resourceVersion, per namespace or cluster-wide) or, for development and tests without a
cluster, a YAML/JSON file read again when it changes.

Both hand a ``Sink`` the whole current set of slices after every change; the sink coalesces.
The watch is kubernetes_asyncio's typed ``DiscoveryV1Api`` with ``_preload_content=False``:
the events are read as raw JSON lines (no model objects), the same client and style as the
operator's ``kube.py``. Any failure (a dropped connection, 410 Gone, a 5xx, a 403) is logged,
shown on /readyz through ``Sink.trouble`` and retried with a growing pause; the last good set
of slices keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from kubernetes_asyncio import client

from .routes import SELECTOR

log = logging.getLogger("modelfleet.activator")
# Pauses between failed tries: a restarted apiserver answers 503/429 for a while.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
SERVER_TIMEOUT_S = 300  # the apiserver ends each watch after this; it is then resumed
PAGE = 500
MAX_EVENT_BYTES = 16 << 20  # one watch event (an EndpointSlice holds <= 1000 endpoints)
FILE_POLL_S = 0.5


class Sink(Protocol):
    def offer(self, slices: Sequence[Mapping[str, Any]]) -> None: ...

    def trouble(self, problem: str | None) -> None: ...


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def trim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``routes`` reads of a slice: the rest (managedFields, hints, zones) is dropped so
    thousands of slices cost little memory."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    endpoints = obj.get("endpoints")
    kept: list[dict[str, Any]] = []
    for ep in endpoints if isinstance(endpoints, list) else ():
        if isinstance(ep, Mapping):
            kept.append({k: ep[k] for k in ("addresses", "conditions", "targetRef") if k in ep})
    return {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "labels", "annotations") if k in meta
        },
        "addressType": obj.get("addressType"),
        "ports": obj.get("ports"),
        "endpoints": kept,
    }


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def apply_event(store: dict[str, dict[str, Any]], event: Mapping[str, Any]) -> str | None:
    """Apply one watch event to ``store`` (uid -> slice). Returns the new resourceVersion
    (None: the event had none). Raises Gone on 410, ValueError on other ERROR events."""
    kind = event.get("type")
    obj = event.get("object")
    if not isinstance(obj, Mapping):
        raise ValueError(f"a watch event without an object: {str(event)[:200]}")
    if kind == "ERROR":
        code = obj.get("code")
        if code == 410:
            raise Gone(str(obj.get("message") or "resourceVersion too old"))
        raise ValueError(f"watch error {code}: {obj.get('message') or obj}")
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    if kind in ("ADDED", "MODIFIED"):
        store[_key(obj)] = trim(obj)
    elif kind == "DELETED":
        store.pop(_key(obj), None)
    elif kind != "BOOKMARK":
        raise ValueError(f"unknown watch event type {kind!r}")
    return str(version) if version else None


async def lines(content: aiohttp.StreamReader) -> Any:
    """The newline-separated JSON events of a watch response, each at most MAX_EVENT_BYTES
    (aiohttp's own readline stops at 128 KiB, less than a full EndpointSlice)."""
    buf = bytearray()
    async for chunk in content.iter_any():
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 1]
            if line.strip():
                yield line
        if len(buf) > MAX_EVENT_BYTES:
            raise ValueError(f"a watch event over {MAX_EVENT_BYTES} bytes")
    if bytes(buf).strip():
        yield bytes(buf)


class ApiSource:
    """List and watch the slices of ``namespaces`` (empty: every namespace)."""

    def __init__(self, api: client.ApiClient, namespaces: Sequence[str], sink: Sink) -> None:
        self.discovery = client.DiscoveryV1Api(api)
        self.namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.sink = sink
        self.stores: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.problems: dict[str | None, str] = {}

    def _offer(self) -> None:
        if len(self.stores) < len(self.namespaces):
            return  # every namespace listed once before the first table
        self.sink.offer([s for store in self.stores.values() for s in store.values()])

    def _trouble(self, namespace: str | None, problem: str | None) -> None:
        if problem is None:
            self.problems.pop(namespace, None)
        else:
            self.problems[namespace] = problem
        joined = "; ".join(self.problems[n] for n in sorted(self.problems, key=str))
        self.sink.trouble(joined or None)

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(ns) for ns in self.namespaces))

    async def _request(self, namespace: str | None, **params: Any) -> Any:
        if namespace is None:
            everywhere = self.discovery.list_endpoint_slice_for_all_namespaces
            return await everywhere(label_selector=SELECTOR, _preload_content=False, **params)
        return await self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=SELECTOR, _preload_content=False, **params
        )

    async def _list(self, namespace: str | None) -> tuple[dict[str, dict[str, Any]], str]:
        store: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            extra = {"_continue": token} if token else {}
            resp = await self._request(namespace, limit=PAGE, _request_timeout=60, **extra)
            async with resp:
                data = await resp.read()
                if resp.status != 200:
                    raise ValueError(
                        f"list: HTTP {resp.status}: {data[:300].decode(errors='replace')}"
                    )
            page = json.loads(data)
            for item in page.get("items") or ():
                store[_key(item)] = trim(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return store, str(meta.get("resourceVersion") or "")

    async def _watch(self, namespace: str | None, store: dict[str, dict[str, Any]], rv: str) -> str:
        resp = await self._request(
            namespace,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=SERVER_TIMEOUT_S,
            _request_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=SERVER_TIMEOUT_S + 30
            ),
        )
        async with resp:
            if resp.status == 410:
                raise Gone("410 on watch")
            if resp.status != 200:
                data = await resp.read()
                raise ValueError(
                    f"watch: HTTP {resp.status}: {data[:300].decode(errors='replace')}"
                )
            async for line in lines(resp.content):
                event = json.loads(line)
                version = apply_event(store, event)
                rv = version or rv
                if event.get("type") != "BOOKMARK":
                    self._offer()
        return rv

    async def _follow(self, namespace: str | None) -> None:
        where = f"namespace {namespace}" if namespace else "all namespaces"
        failures = 0
        while True:
            try:
                store, rv = await self._list(namespace)
                self.stores[namespace] = store
                self._offer()
                self._trouble(namespace, None)
                failures = 0
                while True:  # resume the watch where it ended until it fails
                    rv = await self._watch(namespace, store, rv)
                    failures = 0
            except Gone:
                log.info("EndpointSlice watch (%s): resourceVersion expired; listing again", where)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: keep the last good table, retry
                pause = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                problem = f"EndpointSlices of {where}: {type(exc).__name__}: {exc}"[:500]
                log.warning("%s; trying again in %g s", problem, pause)
                self._trouble(namespace, problem)
                await asyncio.sleep(pause)


def read_slices_file(path: Path) -> list[Mapping[str, Any]]:
    """A YAML/JSON file of slices: one object, a list, a ``kind: List`` or a stream of
    documents. Raises ValueError naming what is wrong."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    out: list[Mapping[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        items = doc.get("items") if isinstance(doc, Mapping) else doc
        for item in items if isinstance(items, list) else [doc]:
            if not isinstance(item, Mapping):
                raise ValueError(f"{path}: an item is a {type(item).__name__}, not an object")
            out.append(item)
    return out


class FileSource:
    """Development and tests: the slices in ``path``, read again whenever it changes."""

    def __init__(self, path: Path, sink: Sink) -> None:
        self.path = path
        self.sink = sink

    async def run(self) -> None:
        seen: tuple[int, int] | None = None
        while True:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != seen:
                    slices = read_slices_file(self.path)
                    seen = stamp
                    self.sink.offer(slices)
                    self.sink.trouble(None)
            except (OSError, ValueError) as exc:
                self.sink.trouble(f"slices file: {exc}")
                seen = None
            await asyncio.sleep(FILE_POLL_S)
