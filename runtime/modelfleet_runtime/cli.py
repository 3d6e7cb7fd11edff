"""Command line: ``serve`` and ``fetch``. Every serve flag also reads ``MODELFLEET_<FLAG>``.

The operator renders these flags into pod specs; a test parses its output with
``build_parser()``, so renaming a flag here is a breaking change.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ServeConfig, write_termination_log

ENV_PREFIX = "MODELFLEET_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be >= 0 and finite, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _digest(text: str) -> str:
    hexpart = text.removeprefix("sha256:").lower()
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise argparse.ArgumentTypeError("expected sha256:<64 hex digits>")
    return "sha256:" + hexpart


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    help_text: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    choices: Sequence[Any] | None = None,
    required: bool = False,
    metavar: str | None = None,
) -> None:
    """A flag whose default comes from its MODELFLEET_* variable when that is set."""
    env = env_name(flag)
    raw = os.environ.get(env)
    if raw is not None and raw.startswith(("tcp://", "udp://", "sctp://")):
        # Kubernetes service links: a Service named "modelfleet" injects MODELFLEET_PORT=tcp://…
        # into every pod of its namespace. That is not a setting for us.
        raw = None
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{env}={raw!r}: {exc}")
        required = False
    shown = "" if default is None else " (default: %(default)s)"
    parser.add_argument(
        flag,
        type=type,
        default=default,
        choices=choices,
        required=required,
        metavar=metavar,
        help=f"{help_text}{shown} [env {env}]",
    )


def _serve_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model directory over the Open Inference Protocol v2",
        description="Serve the model in --model-dir (described by its model.yaml) over HTTP.",
    )
    d = ServeConfig(model_dir=Path("."))
    _add(
        p,
        "--model-dir",
        "directory holding model.yaml and the weights",
        type=Path,
        required=True,
        metavar="DIR",
    )
    _add(p, "--name", "served model name (default: model.yaml name, else the directory name)")
    _add(p, "--version", "served model version (default: model.yaml version, else 1)")
    _add(
        p,
        "--format",
        "model format, overrides model.yaml",
        choices=("torchscript", "torch-export", "safetensors"),
    )
    _add(
        p,
        "--entrypoint",
        "module:callable that builds the module for safetensors weights",
        metavar="MODULE:CALLABLE",
    )
    _add(
        p,
        "--digest",
        "expected sha256 of the weights file; a mismatch refuses to start",
        type=_digest,
        metavar="sha256:HEX",
    )
    _add(p, "--device", "where to run the model", default=d.device, choices=("auto", "cpu", "cuda"))
    _add(
        p,
        "--dtype",
        "cast the model's floating point weights and inputs (default: as saved)",
        choices=("float32", "float16", "bfloat16"),
    )
    _add(
        p,
        "--max-batch-size",
        "most rows merged into one forward pass (1 = no batching)",
        type=_positive_int,
        default=d.max_batch_size,
        metavar="N",
    )
    _add(
        p,
        "--max-batch-delay-ms",
        "longest a request waits for companions under concurrent load",
        type=_non_negative_float,
        default=d.max_batch_delay_ms,
        metavar="MS",
    )
    _add(
        p,
        "--max-queue-size",
        "requests allowed to wait; more are refused at once",
        type=_positive_int,
        default=d.max_queue_size,
        metavar="N",
    )
    _add(p, "--host", "address to listen on", default=d.host)
    _add(p, "--port", "port to listen on", type=_port, default=d.port)
    _add(
        p,
        "--drain-timeout",
        "seconds to answer accepted requests after SIGTERM",
        type=_non_negative_float,
        default=d.drain_timeout,
        metavar="SECONDS",
    )
    _add(
        p,
        "--max-body-bytes",
        "largest request body accepted (larger: 413)",
        type=_positive_int,
        default=d.max_body_bytes,
        metavar="N",
    )
    _add(
        p,
        "--max-connections",
        "most client connections held open; past it the longest-idle "
        "keep-alive one is closed, or the newcomer gets 503 (lowered to fit the descriptor "
        "limit)",
        type=_positive_int,
        default=d.max_connections,
        metavar="N",
    )
    _add(
        p,
        "--keepalive-timeout",
        "seconds an idle keep-alive connection stays open",
        type=_positive_float,
        default=d.keepalive_timeout,
        metavar="SECONDS",
    )
    _add(
        p,
        "--request-timeout",
        "seconds a request (head and body) may take to arrive; later: 408",
        type=_positive_float,
        default=d.request_timeout,
        metavar="SECONDS",
    )
    _add(
        p,
        "--write-timeout",
        "seconds a client may leave answers unread before it is disconnected",
        type=_positive_float,
        default=d.write_timeout,
        metavar="SECONDS",
    )
    _add(
        p,
        "--overload-status",
        "status answered when the queue is full",
        type=int,
        default=d.overload_status,
        choices=(503, 429),
    )
    _add(
        p,
        "--threads",
        "torch intra-op threads (default: the CPUs the cgroup quota and affinity allow)",
        type=_positive_int,
        metavar="N",
    )
    _add(p, "--log-level", "logging level", default=d.log_level,
         choices=("debug", "info", "warning", "error"))  # fmt: skip
    _add(
        p,
        "--api-keys",
        "require an API key on every route but the health probes: DIR holds one file per "
        "key id with its sha256:<hex> hash (a mounted Secret; read again every second); "
        "mint keys with `modelfleet-runtime mint-key`",
        type=Path,
        metavar="DIR",
    )
    _add(p, "--key-rate", "requests/s each API key may make (429 past it)",
         type=_positive_float, metavar="RPS")  # fmt: skip
    _add(p, "--key-burst", "requests an API key may make at once above --key-rate "
         "(default: --key-rate rounded up)", type=_positive_int, metavar="N")  # fmt: skip
    _add(p, "--key-concurrency", "requests each API key may have in flight (429 past it)",
         type=_positive_int, metavar="N")  # fmt: skip
    _add(
        p,
        "--metrics-port",
        "serve /metrics (and the health probes) on this port instead of --port; with "
        "--api-keys, /metrics is served nowhere else",
        type=_port,
        metavar="PORT",
    )


def _mint_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mint-key",
        help="make a new API key: the key once on stderr, only its hash on stdout",
        description="Print a new API key for KEY_ID once (stderr) and, on stdout, what to "
        "store: a Secret manifest holding only the key's hash (--secret), a merge patch that "
        "adds it to an existing Secret (--patch), or the bare hash.",
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the key's name: 1-32 of a-z, 0-9, '-'")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--secret", metavar="NAME", help="print a Secret manifest named NAME")
    out.add_argument(
        "--patch",
        action="store_true",
        help="print a JSON merge patch for `kubectl patch secret --type merge`",
    )
    p.add_argument("--namespace", help="the Secret manifest's namespace")


def _fetch_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "fetch",
        help="download a model into a directory (for init containers)",
        description="Fetch URI into DEST: a single file lands as DEST/<name>, a .tar.gz is "
        "unpacked into DEST. Supports file:// and http(s)://; written atomically.",
    )
    p.add_argument("uri", help="file://PATH, http(s)://URL (a file or a .tar.gz of a model dir)")
    p.add_argument("dest", type=Path, help="destination model directory")
    _add(p, "--digest", "expected sha256 of the downloaded file", type=_digest,
         metavar="sha256:HEX")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet-runtime",
        description="modelfleet serving runtime: a PyTorch model over the Open Inference "
        "Protocol v2, with dynamic batching and Prometheus metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,fetch,mint-key}")
    _serve_parser(sub)
    _fetch_parser(sub)
    _mint_parser(sub)
    return parser


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model_dir=args.model_dir,
        name=args.name,
        version=args.version,
        format=args.format,
        entrypoint=args.entrypoint,
        digest=args.digest,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_queue_size=args.max_queue_size,
        host=args.host,
        port=args.port,
        drain_timeout=args.drain_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        keepalive_timeout=args.keepalive_timeout,
        request_timeout=args.request_timeout,
        write_timeout=args.write_timeout,
        overload_status=args.overload_status,
        threads=args.threads,
        log_level=args.log_level,
        api_keys=args.api_keys,
        key_rate=args.key_rate,
        key_burst=args.key_burst,
        key_concurrency=args.key_concurrency,
        metrics_port=args.metrics_port,
    )


# The label the operator's Secret watch selects: a labelled Secret's change reaches the
# pods within seconds (without it, within the kubelet's sync period, about a minute).
API_KEYS_LABEL = "modelfleet.io/api-keys"


def mint_key(args: argparse.Namespace) -> int:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    from .auth import mint  # noqa: PLC0415

    try:
        key, digest = mint(args.key_id)
    except ValueError as exc:
        print(f"modelfleet-runtime mint-key: {exc}", file=sys.stderr)
        return 2
    # data, not stringData: stringData is write-only, so an entry later left out of an
    # applied manifest (a revoked key) would stay in the Secret; a data entry goes.
    data = {args.key_id: base64.b64encode(digest.encode()).decode()}
    if args.secret:
        meta: dict[str, Any] = {"name": args.secret, "labels": {API_KEYS_LABEL: "true"}}
        if args.namespace:
            meta["namespace"] = args.namespace
        doc: Any = {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                    "type": "Opaque", "data": data}  # fmt: skip
        print(json.dumps(doc, indent=2))
    elif args.patch:
        print(json.dumps({"data": data}))
    else:
        print(digest)
    print(f"API key {args.key_id} (shown once; only its hash is stored): {key}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "mint-key":
        return mint_key(args)
    if args.command == "serve":
        from .app import run  # noqa: PLC0415 (torch is imported only here)

        return run(serve_config(args))
    from .fetch import FetchError, fetch  # noqa: PLC0415

    try:
        path = fetch(args.uri, args.dest, args.digest)
    except FetchError as exc:
        print(f"modelfleet-runtime fetch: {exc}", file=sys.stderr)
        write_termination_log(f"model fetch failed: {exc}")
        return 1
    print(path)
    return 0
