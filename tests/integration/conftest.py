"""Fixtures for tests against a real Kubernetes control plane (kwok-simulated nodes).

- Every test in this directory is marked ``cluster``.
- ``kube_cluster`` (session): builds the binaries if needed, starts a dedicated cluster
  ``mf-test-<pid>`` and deletes it at the end. Build or start failures FAIL the tests.
- ``namespace`` (function): a fresh namespace, deleted (and waited for) afterwards.

Run against a cluster you already have, like envtest's USE_EXISTING_CLUSTER::

    MODELFLEET_USE_EXISTING_CLUSTER=1 KUBECONFIG=... pytest tests/integration
    pytest tests/integration --existing-cluster          # same, KUBECONFIG from the env

``MODELFLEET_KEEP_CLUSTER=1`` keeps the test cluster running after the session for debugging.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import kube_harness
from kube_harness import ClusterError, KubeCluster

_HERE = pathlib.Path(__file__).parent.resolve()
# Set when the binaries could not be built before the tests ran: every cluster test fails with it.
_state: dict[str, str] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--existing-cluster",
        action="store_true",
        default=False,
        help="run tests/integration against the cluster in $KUBECONFIG instead of starting one "
        "(also: MODELFLEET_USE_EXISTING_CLUSTER=1)",
    )


def _use_existing(config: pytest.Config) -> bool:
    flag = bool(config.getoption("--existing-cluster", default=False))
    env = os.environ.get("MODELFLEET_USE_EXISTING_CLUSTER", "").lower() in {"1", "true", "yes"}
    return flag or env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only the ones in this directory.
    for item in items:
        if _HERE in pathlib.Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
    # A test that stops and starts the whole shared control plane runs last: kwok finishes
    # no pod after that restart, which failed the cluster tests that ran after it.
    items.sort(key=lambda item: item.get_closest_marker("restarts_control_plane") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test runs, outside the per-test timeout.

    A cold build takes far longer than pytest-timeout's limit, so it must not happen inside the
    first test's fixture setup. `make test` has already built them; this is for plain pytest.
    """
    if _use_existing(session.config) or session.config.option.collectonly:
        return
    if not any("kube_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if kube_harness.is_built():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "modelfleet: building the local cluster binaries from Go modules "
            "(hack/cluster/build; a cold build takes a long time)..."
        )
    try:
        report = kube_harness.build()
    except ClusterError as exc:
        _state["build_error"] = str(exc)
        return
    if reporter is not None:
        reporter.write_line(report.strip() or "modelfleet: cluster binaries built")


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    if _use_existing(request.config):
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig:
            pytest.fail("--existing-cluster / MODELFLEET_USE_EXISTING_CLUSTER needs KUBECONFIG")
        try:
            existing = kube_harness.existing_cluster(pathlib.Path(kubeconfig.split(os.pathsep)[0]))
        except ClusterError as exc:
            pytest.fail(f"existing cluster is not usable: {exc}", pytrace=False)
        yield existing
        return

    if "build_error" in _state:
        pytest.fail(f"cluster binaries could not be built:\n{_state['build_error']}", pytrace=False)
    name = kube_harness.test_cluster_name()
    error: str | None = None
    try:
        kube_harness.remove_stale_test_clusters()
        if not kube_harness.is_built():  # e.g. collection ran with a fixture we did not see
            kube_harness.build()
        cluster = kube_harness.start_cluster(name)
    except ClusterError as exc:
        error = str(exc)
    if error is not None:
        # A half-started cluster would otherwise keep running: no teardown follows a failed setup.
        with contextlib.suppress(ClusterError):
            kube_harness.stop_cluster(name)
        pytest.fail(f"local cluster {name!r} could not be started:\n{error}", pytrace=False)
    try:
        yield cluster
    finally:
        if os.environ.get("MODELFLEET_KEEP_CLUSTER"):
            print(f"\nkept cluster {name}: export KUBECONFIG={cluster.kubeconfig}")
        else:
            kube_harness.stop_cluster(name)


@pytest.fixture
def namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with kube_harness.namespace(
        kube_cluster, kube_harness.unique_namespace(request.node.name)
    ) as ns:
        yield ns
