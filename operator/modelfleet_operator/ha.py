"""Wiring of leader election into the process: wait as a standby before kopf starts (still
answering the liveness probe, so the kubelet does not restart a healthy standby), then keep
renewing on kopf's loop, and give the Lease back on a clean stop."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import kopf
from aiohttp import web

from .kube import Kube
from .leader import LeaderElector

log = logging.getLogger(__name__)

_SA_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace() -> str:
    """The operator's own namespace: POD_NAMESPACE (the chart sets it), else the service
    account's, else "default" (a developer's kubeconfig)."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    # The pod name says which replica leads; the suffix keeps two processes with one name
    # (a restart racing its old self) apart.
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


async def _standby_liveness(url: str | None) -> web.AppRunner | None:
    if not url:
        return None
    parsed = urlparse(url)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(parsed.path or "/", alive)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, parsed.hostname or "0.0.0.0", parsed.port or 80).start()
    return runner


async def wait_for_leadership(
    elector: LeaderElector, kube_factory: Callable[[], Awaitable[Kube]], liveness: str | None
) -> None:
    """Block (as a standby) until this process holds the Lease. Runs on its own short-lived
    loop before kopf's: its client and its liveness server are closed before kopf starts."""
    kube = await kube_factory()
    runner = await _standby_liveness(liveness)
    try:
        elector.api = kube
        await elector.acquire()
    finally:
        if runner is not None:
            await runner.cleanup()
        await kube.close()


def _lost(why: str) -> None:
    log.critical("lost the leader Lease (%s); exiting so that one replica acts", why)
    logging.shutdown()
    os._exit(1)


def register(
    registry: kopf.OperatorRegistry,
    elector: LeaderElector,
    kube_factory: Callable[[], Awaitable[Kube]],
) -> None:
    state: dict[str, Any] = {}

    async def start_renewing(**_: Any) -> None:
        kube = await kube_factory()
        elector.api = kube
        state["kube"] = kube
        state["task"] = asyncio.create_task(elector.hold(_lost), name="modelfleet-lease")

    async def release(**_: Any) -> None:
        task = state.get("task")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if "kube" in state:
            await elector.release()
            await state["kube"].close()

    kopf.on.startup(registry=registry, id="leader-lease")(start_renewing)
    kopf.on.cleanup(registry=registry, id="leader-lease")(release)
