"""``modelfleet-activator``: hold requests of ModelDeployments scaled to zero until a
replica is ready (docs/operator.md, scale to zero)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..kube import make_api_client
from .proxy import Limits
from .server import Activator, Settings
from .source import ApiSource, FileSource

log = logging.getLogger("modelfleet.activator")
SIMULATED_ENV = "MODELFLEET_SIMULATED_METRICS"


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or value != value:  # noqa: PLR0124 (NaN)
            raise argparse.ArgumentTypeError(f"{text!r}: need a number > 0")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelfleet-activator",
        description="Hold the requests of ModelDeployments scaled to zero until a replica is "
        "ready, then proxy them there.",
    )
    p.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch the EndpointSlices of this namespace (repeatable; default: every namespace)",
    )  # fmt: skip
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, else $KUBECONFIG)"
    )
    p.add_argument(
        "--slices-file", type=Path, default=None,
        help="development/tests: read the EndpointSlices from this YAML/JSON file (read again "
        "when it changes) instead of the API",
    )  # fmt: skip
    p.add_argument("--host", default="0.0.0.0", help="address of every listener")
    p.add_argument("--metrics-port", type=_port, default=9090, help="/metrics /healthz /readyz")
    p.add_argument(
        "--drain-seconds", type=_positive(float), default=30.0,
        help="on SIGTERM: how long held and proxied requests may still finish",
    )  # fmt: skip
    p.add_argument(
        "--max-held-total", type=_positive(int), default=10000,
        help="requests held at once by this process, all ModelDeployments together",
    )  # fmt: skip
    p.add_argument("--max-body-bytes", type=_positive(int), default=64 << 20)
    p.add_argument("--max-connections", type=_positive(int), default=20000)
    p.add_argument(
        "--idle-timeout-seconds", type=_positive(float), default=60.0,
        help="close a connection with no request in progress after this",
    )  # fmt: skip
    p.add_argument(
        "--body-timeout-seconds", type=_positive(float), default=60.0,
        help="longest pause of a client while it sends its body",
    )  # fmt: skip
    p.add_argument("--connect-timeout-seconds", type=_positive(float), default=5.0)
    p.add_argument(
        "--backend-timeout-seconds", type=_positive(float), default=600.0,
        help="longest silence of a replica while it answers",
    )  # fmt: skip
    level = p.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true")
    level.add_argument("-q", "--quiet", action="store_true")
    return p


def settings_from(args: argparse.Namespace, simulate: bool) -> Settings:
    return Settings(
        host=args.host,
        metrics_port=args.metrics_port,
        max_held_total=args.max_held_total,
        max_connections=args.max_connections,
        drain_s=args.drain_seconds,
        idle_timeout_s=args.idle_timeout_seconds,
        connect_timeout_s=args.connect_timeout_seconds,
        backend_read_timeout_s=args.backend_timeout_seconds,
        simulate=simulate,
        limits=Limits(max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout_seconds),
    )


async def serve(args: argparse.Namespace) -> int:
    activator = Activator(settings_from(args, os.environ.get(SIMULATED_ENV) == "1"))
    try:
        await activator.start()
    except OSError as exc:
        log.error("cannot serve /metrics on port %d: %s", args.metrics_port, exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = None
    if args.slices_file is not None:
        source: FileSource | ApiSource = FileSource(args.slices_file, activator)
    else:
        api = await make_api_client(args.kubeconfig)
        source = ApiSource(api, args.namespace, activator)
    following = asyncio.create_task(source.run(), name="activator-source")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if following.done():  # never ends by itself: a bug
        log.error("the EndpointSlice source stopped: %r", following.exception())
        code = 1
    log.info("stopping: draining for up to %g s", args.drain_seconds)
    await activator.drain()
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    await activator.close()
    if api is not None:
        await api.close()
    log.info("stopped")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
