"""`modelfleet-operator` / `python -m modelfleet_operator`: run the operator.

Flags mirror kopf's own CLI where they overlap (--namespace, --all-namespaces, --liveness,
--verbose/--debug/--quiet, --log-format) so the Helm chart reads naturally.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

import kopf

from . import ha, handlers
from .kube import Kube, make_api_client
from .leader import LEASE_NAME, LeaderElector
from .metrics import OperatorMetrics
from .render.common import (
    DEFAULT_PAUSE_IMAGE,
    DEFAULT_RUNTIME_IMAGE,
    DEFAULT_WARM_PRIORITY_CLASS,
    RenderConfig,
)
from .usage import INTERVAL_S as USAGE_INTERVAL_S


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelfleet-operator",
        description="Reconcile ModelDeployments (modelfleet.io/v1alpha1) into GPU-scheduled "
        "serving Deployments, Services, PodDisruptionBudgets and HPAs.",
    )
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="watch this namespace (repeatable; a glob such as ml-* works)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument(
        "--runtime-image",
        default=os.environ.get("MODELFLEET_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
        help="serving image for ModelDeployments that do not set "
        "spec.runtime.image [env MODELFLEET_RUNTIME_IMAGE] (default: %(default)s)",
    )
    p.add_argument(
        "--runtime-image-pull-policy",
        default=os.environ.get("MODELFLEET_RUNTIME_IMAGE_PULL_POLICY", "IfNotPresent"),
        choices=("Always", "IfNotPresent", "Never"),
        help="pull policy of that image [env MODELFLEET_RUNTIME_IMAGE_PULL_POLICY]",
    )
    p.add_argument(
        "--warm-capacity-priority-class",
        default=DEFAULT_WARM_PRIORITY_CLASS,
        help="PriorityClass of spec.warmCapacity's placeholder pods; it must exist, with a "
        "value below the serving pods' (the chart makes one, value -1) (default: %(default)s)",
    )
    p.add_argument(
        "--warm-capacity-image",
        default=DEFAULT_PAUSE_IMAGE,
        help="image of the placeholder pods' pause containers (default: %(default)s)",
    )
    p.add_argument(
        "--liveness",
        metavar="URL",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint ('' disables) (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="port of the operator's Prometheus /metrics (0 disables)",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=600.0,
        help="re-plan every ModelDeployment this often (spread over the interval) from the "
        "watches' view "
        "(no API request when converged; drift itself is seen at once)",
    )
    p.add_argument(
        "--usage-seconds",
        type=float,
        default=USAGE_INTERVAL_S,
        help="read the GPU serving pods' idle figures for status.usage this often",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=16,
        help="ModelDeployments reconciled concurrently (asyncio tasks)",
    )
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("MODELFLEET_LEADER_ELECT", "").lower() in ("1", "true", "yes"),
        help="active/standby: reconcile only while holding the coordination.k8s.io Lease "
        f"{LEASE_NAME!r}; standbys wait and take over when it is not renewed "
        "[env MODELFLEET_LEADER_ELECT] (default: off; the Helm chart turns it on)",
    )
    p.add_argument(
        "--leader-elect-namespace",
        default=None,
        help="namespace of that Lease (default: $POD_NAMESPACE, else the service account's)",
    )
    p.add_argument(
        "--leader-elect-lease-duration",
        type=int,
        default=15,
        metavar="SECONDS",
        help="a standby takes over after the Lease went this long without renewal "
        "(the holder gives up at 2/3 of it) (default: %(default)s)",
    )
    p.add_argument(
        "--activator-service",
        type=_service_ref,
        default=os.environ.get("MODELFLEET_ACTIVATOR_SERVICE") or None,
        metavar="NAMESPACE/NAME",
        help="the activator's Service (its EndpointSlices list the activator pods and their "
        "'metrics' port): ModelDeployments with autoscaling.minReplicas 0 scale to zero "
        "behind it [env MODELFLEET_ACTIVATOR_SERVICE] (default: none; minReplicas 0 then "
        "keeps one replica, and status says why)",
    )
    p.add_argument(
        "--activator-ports",
        type=_port_range,
        default=os.environ.get("MODELFLEET_ACTIVATOR_PORTS", "20000-29999"),
        metavar="LOW-HIGH",
        help="ports handed out to scale-to-zero ModelDeployments, one each, on which the "
        "activator listens for them [env MODELFLEET_ACTIVATOR_PORTS] (default: %(default)s)",
    )
    p.add_argument(
        "--read-api-key-secrets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="spec.auth: watch the Secrets labelled modelfleet.io/api-keys=true (only in "
        "namespaces where a ModelDeployment names one) and tell the pods of a change within "
        "seconds; status says when a Secret is missing or holds no valid key. With "
        "--no-read-api-key-secrets the operator never reads a Secret (RBAC without secrets): "
        "keys then change in the pods with the kubelet's sync, about a minute "
        "(default: on)",
    )
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, else $KUBECONFIG)"
    )
    p.add_argument("--log-format", choices=("plain", "full", "json"), default="full")
    level = p.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true")
    level.add_argument("-d", "--debug", action="store_true")
    level.add_argument("-q", "--quiet", action="store_true")
    return p


def _service_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH (e.g. 20000-29999)") from None
    if not 1024 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


# Seconds between retries of kopf's own requests (its watches and lists).
ERROR_BACKOFFS = (1.0, 1.0, *([2.0] * 150))


def settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Only index and event handlers: kopf keeps no progress, so it writes nothing to the
    # objects; were that to change, its keys would be ours, not kopf.zalando.org/*.
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelfleet.io")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelfleet.io", key="last-handled-configuration"
    )
    # The reconciler posts one Event per condition transition; kopf adds only failures.
    s.posting.level = logging.WARNING
    # Server-side watch timeouts keep watches fresh through apiserver restarts.
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    # A restarted apiserver first answers 503 (paths not installed yet) and 429 (storage
    # initializing): kopf's default backoffs grow to 21 s, so a watch could come back 20 s
    # after the apiserver did, and a 5xx past their 54 s escapes kopf's watch loop (it only
    # retries connection errors and 429s). Retry every 2 s, for ~5 min.
    s.networking.error_backoffs = ERROR_BACKOFFS
    return s


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kopf.configure(
        debug=args.debug,
        verbose=args.verbose,
        quiet=args.quiet,
        log_format=kopf.LogFormat[args.log_format.upper()],
    )
    if not (args.verbose or args.debug):
        # kopf logs every handler call at INFO (one line per pod event); the reconciler
        # logs what matters: condition transitions, prunes, strategy changes.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it too
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)

    async def kube() -> Kube:  # made on kopf's event loop, which owns its connections
        return Kube(await make_api_client(args.kubeconfig, pool=args.workers * 2), metrics)

    elector = None
    if args.leader_elect:
        duration = max(3, args.leader_elect_lease_duration)
        elector = LeaderElector(
            api=None,  # type: ignore[arg-type]  # set per event loop by ha
            namespace=args.leader_elect_namespace or ha.default_namespace(),
            identity=ha.default_identity(),
            duration_s=duration,
            renew_deadline_s=duration * 2 / 3,
            retry_s=max(0.5, duration / 7.5),
        )
        asyncio.run(ha.wait_for_leadership(elector, kube, args.liveness or None))

    runtime = handlers.Runtime(
        kube_factory=kube,
        config=RenderConfig(
            runtime_image=args.runtime_image,
            image_pull_policy=args.runtime_image_pull_policy,
            warm_capacity_priority_class=args.warm_capacity_priority_class,
            warm_capacity_image=args.warm_capacity_image,
        ),
        metrics=metrics,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        usage_seconds=max(1.0, args.usage_seconds),
        activator_service=args.activator_service,
        activator_ports=args.activator_ports,
        read_api_key_secrets=args.read_api_key_secrets,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    if elector is not None:
        ha.register(registry, elector, kube)
    # kopf's own peering pauses equal-priority peers instead of electing a leader; the
    # Lease above is the election, so kopf runs standalone (docs/operator.md, HA).
    kopf.run(
        registry=registry,
        settings=settings(),
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(runtime=runtime),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
