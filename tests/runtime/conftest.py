"""Fixtures that run the runtime as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_models import build_affine_dir, build_slow_dir
from testnets import Affine

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runtime:
    """One ``python -m modelfleet_runtime serve`` process."""

    def __init__(
        self,
        model_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.port = free_port()
        self.model_dir = model_dir
        self.log_path = model_dir.parent / f"{model_dir.name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_runtime", "serve", "--model-dir", str(model_dir),
             "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
            preexec_fn=preexec_fn,  # noqa: PLW1509 (tests pass a bare setrlimit)
        )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> Runtime:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"runtime exited {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(OSError):
                status, _, _ = self.request("GET", "/v2/health/ready", timeout=2)
                if status == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"runtime not ready in {timeout}s:\n{self.log}")

    def conn(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.conn(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def infer(
        self, model: str, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        status, _hdrs, body = self.request(
            "POST", f"/v2/models/{model}/infer", json.dumps(doc).encode(), headers
        )
        return status, json.loads(body)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name:
            continue
        found = {
            kv.split("=", 1)[0]: kv.split("=", 1)[1].strip('"')
            for kv in rest.rstrip("}").split(",")
            if kv
        }
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


@pytest.fixture(scope="session")
def affine_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Affine]]:
    root = tmp_path_factory.mktemp("affine")
    out = {}
    for fmt in ("torchscript", "torch-export", "safetensors"):
        model_dir = root / f"affine-{fmt}"
        out[fmt] = (model_dir, build_affine_dir(model_dir, fmt))
    return out


@pytest.fixture(scope="session")
def affine_servers(
    affine_dirs: dict[str, tuple[Path, Affine]],
) -> Iterator[dict[str, tuple[Runtime, Affine]]]:
    """One server per format, started together (their start-up overlaps)."""
    servers = {
        fmt: Runtime(d, "--max-body-bytes", "65536", "--max-batch-size", "16")
        for fmt, (d, _) in affine_dirs.items()
    }
    try:
        out = {fmt: (s.wait_ready(), affine_dirs[fmt][1]) for fmt, s in servers.items()}
        yield out
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(params=["torchscript", "torch-export", "safetensors"])
def affine(
    request: pytest.FixtureRequest, affine_servers: dict[str, tuple[Runtime, Affine]]
) -> tuple[Runtime, Affine]:
    return affine_servers[request.param]


@pytest.fixture(scope="session")
def slow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("slow") / "slow"
    build_slow_dir(d, delay_s=0.02)
    return d


@pytest.fixture(scope="session")
def slow_server(slow_dir: Path) -> Iterator[Runtime]:
    """A 20 ms model with batching on: concurrency, errors from the model, deadlines."""
    server = Runtime(slow_dir, "--max-batch-size", "16", "--max-batch-delay-ms", "10",
                     "--max-queue-size", "512")  # fmt: skip
    try:
        yield server.wait_ready()
    finally:
        server.stop()
