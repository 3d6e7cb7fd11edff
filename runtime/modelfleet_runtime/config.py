"""The serve command's settings (no torch here: the CLI builds this before importing it)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

TERMINATION_LOG_ENV = "MODELFLEET_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: Path
    name: str | None = None
    version: str | None = None
    format: str | None = None
    entrypoint: str | None = None
    digest: str | None = None
    device: str = "auto"
    dtype: str | None = None
    max_batch_size: int = 8
    max_batch_delay_ms: float = 2.0
    max_queue_size: int = 256
    host: str = "0.0.0.0"
    port: int = 8080
    drain_timeout: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_connections: int = 1000
    keepalive_timeout: float = 75.0
    request_timeout: float = 30.0
    write_timeout: float = 30.0
    overload_status: int = 503
    threads: int | None = None
    log_level: str = "info"
    # API keys (auth.py): a directory of sha256 hashes, one file per key id; None: no keys
    api_keys: Path | None = None
    key_rate: float | None = None  # requests/s per key
    key_burst: int | None = None  # token bucket size per key (default: ceil(key_rate))
    key_concurrency: int | None = None  # requests in flight per key
    metrics_port: int | None = None  # /metrics (and the probes) on a port of their own


def write_termination_log(message: str) -> None:
    """Tell Kubernetes why we exit: it shows this file in the pod's last state."""
    override = os.environ.get(TERMINATION_LOG_ENV)
    path = Path(override or DEFAULT_TERMINATION_LOG)
    if override is None and not path.exists():
        return
    with contextlib.suppress(OSError):
        path.write_text(message[:4096])
