"""The activator's pure parts: the routing table from EndpointSlices, who may wait, which
backend, which headers cross, and the watch's event bookkeeping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelfleet_operator.activator import routes
from modelfleet_operator.activator.admission import Admission, Balancer
from modelfleet_operator.activator.headers import to_backend, to_client
from modelfleet_operator.activator.routes import Backend, build_table
from modelfleet_operator.activator.source import Gone, apply_event, lines, read_slices_file, trim
from modelfleet_operator.autoscale.loop import SIMULATED_METRICS_ANNOTATION
from modelfleet_operator.render.activator import ActivatorRoute, render_activator_slice
from modelfleet_operator.render.common import Owner
from modelfleet_operator.spec import parse_spec


def activator_slice(
    name: str = "m", ns: str = "ns", port: Any = 20000, **annotations: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "activator.modelfleet.io",
                "app.kubernetes.io/managed-by": "modelfleet-operator",
            },
            "annotations": annotations,
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}],
    }


def service_slice(
    md: str = "m", ns: str = "ns", *endpoints: tuple[str, str, bool | None], port: int = 8080
) -> dict[str, Any]:
    eps: list[dict[str, Any]] = []
    for pod, ip, ready in endpoints:
        ep: dict[str, Any] = {"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod}}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {
        "metadata": {
            "name": f"{md}-abcde",
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": md,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": eps,
    }


def test_the_operators_slice_is_a_route_with_its_annotations() -> None:
    spec = parse_spec(
        {
            "model": {"uri": "pvc://models/m.pt"},
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 3,
                "metric": "concurrency",
                "target": 4,
                "scaleToZero": {"maxHeldRequests": 7, "holdTimeoutSeconds": 90},
            },
        },
        name="bert",
    )
    owner = Owner(name="bert", namespace="team", uid="u1")
    rendered = render_activator_slice(owner, spec, ActivatorRoute(port=20001), serving=False)
    table = build_table([rendered])
    assert table.problems == ()
    route = table.routes[("team", "bert")]
    assert (route.port, route.max_held, route.hold_timeout_s) == (20001, 7, 90.0)
    assert table.by_port == {20001: ("team", "bert")}


def test_backends_are_the_ready_endpoints_of_the_services_own_slices() -> None:
    table = build_table(
        [
            activator_slice(),
            service_slice("m", "ns", ("p1", "10.0.0.1", True), ("p2", "10.0.0.2", False)),
            service_slice("m", "ns", ("p3", "10.0.0.3", None)),  # nil ready reads as true
            service_slice("m", "other", ("x", "10.0.0.4", True)),  # another namespace
            service_slice("n", "ns", ("y", "10.0.0.5", True)),  # another Service
        ]
    )
    backends = table.routes[("ns", "m")].backends
    assert backends == (Backend("p1", "10.0.0.1:8080"), Backend("p3", "10.0.0.3:8080"))


def test_one_replica_in_two_slices_is_one_backend_and_ipv6_is_bracketed() -> None:
    v6 = service_slice("m", "ns", ("p1", "fd00::1", True))
    v6["addressType"] = "IPv6"
    twice = service_slice("m", "ns", ("p1", "10.0.0.1", True))
    table = build_table([activator_slice(), twice, v6, twice])
    addresses = [b.address for b in table.routes[("ns", "m")].backends]
    assert addresses == ["10.0.0.1:8080", "[fd00::1]:8080"]


@pytest.mark.parametrize(
    ("port", "why"),
    [
        (80, "below 1024"),
        (9090, "the activator's own"),
        ("20000", "not a number"),
        (70000, "not a number"),
        (True, "not a number"),
    ],
)
def test_a_refused_port_is_named_and_other_routes_still_work(port: Any, why: str) -> None:
    table = build_table(
        [activator_slice("bad", port=port), activator_slice("good", port=20002)],
        reserved_ports=(9090,),
    )
    assert list(table.routes) == [("ns", "good")]
    assert len(table.problems) == 1 and "ns/bad" in table.problems[0]
    assert why in table.problems[0]


def test_two_modeldeployments_on_one_port_the_first_by_name_keeps_it() -> None:
    table = build_table([activator_slice("zeta", port=20005), activator_slice("alpha", port=20005)])
    assert table.by_port == {20005: ("ns", "alpha")}
    assert any("ns/zeta" in p and "already ns/alpha" in p for p in table.problems)


def test_bad_annotations_fall_back_to_the_defaults_and_say_so() -> None:
    table = build_table(
        [
            activator_slice(
                **{
                    "modelfleet.io/max-held-requests": "-3",
                    "modelfleet.io/hold-timeout-seconds": "nan",
                }
            )
        ]
    )
    route = table.routes[("ns", "m")]
    assert (route.max_held, route.hold_timeout_s) == (100, 1200.0)
    assert len(table.problems) == 2


def test_a_slice_without_a_service_name_is_named_not_raised() -> None:
    broken = activator_slice()
    del broken["metadata"]["labels"]["kubernetes.io/service-name"]
    table = build_table([broken, "junk", {"metadata": None}])  # type: ignore[list-item]
    assert table.routes == {}
    assert len(table.problems) == 3


def test_simulated_addresses_go_to_the_endpoints_in_pod_name_order() -> None:
    assert SIMULATED_METRICS_ANNOTATION == routes.SIMULATED_ADDRESSES_ANNOTATION
    table = build_table(
        [
            activator_slice(**{SIMULATED_METRICS_ANNOTATION: "127.0.0.1:7001 127.0.0.1:7002"}),
            service_slice(
                "m",
                "ns",
                ("p-b", "10.0.0.2", True),
                ("p-a", "10.0.0.1", True),
                ("p-c", "10.0.0.3", True),
            ),
        ],
        simulate=True,
    )
    route = table.routes[("ns", "m")]
    assert route.backends == (
        Backend("p-a", "127.0.0.1:7001"),
        Backend("p-b", "127.0.0.1:7002"),
        Backend("p-c", None),
    )
    assert [b.pod for b in route.reachable] == ["p-a", "p-b"]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            JSONISH,
            st.builds(
                lambda s, meta, ports, eps: {
                    **s,
                    "metadata": meta or s["metadata"],
                    "ports": ports,
                    "endpoints": eps,
                },
                st.sampled_from(
                    [activator_slice(), service_slice("m", "ns", ("p", "10.0.0.1", True))]
                ),
                JSONISH,
                JSONISH,
                JSONISH,
            ),
        ),
        max_size=6,
    )
)
def test_no_slice_content_makes_the_table_raise(slices: list[Any]) -> None:
    table = build_table(slices)
    for key, route in table.routes.items():
        assert table.by_port[route.port] == key
        assert route.max_held >= 0 and route.hold_timeout_s > 0


def test_admission_counts_per_modeldeployment_and_in_all() -> None:
    adm = Admission(max_total=3)
    a, b = ("ns", "a"), ("ns", "b")
    assert adm.admit(a, cap=2) is None and adm.admit(a, cap=2) is None
    why = adm.admit(a, cap=2)
    assert why is not None and "ns/a" in why and "max-held-requests 2" in why
    assert adm.admit(b, cap=5) is None
    why = adm.admit(b, cap=5)
    assert why is not None and "--max-held-total 3" in why
    adm.release(a)
    adm.release(a)
    adm.release(a)  # one too many: never below zero
    assert (adm.count(a), adm.total) == (0, 1)
    assert adm.admit(a, cap=0) is not None  # a cap of 0 holds nothing


def test_balancer_prefers_the_least_busy_and_skips_refused_and_unreachable() -> None:
    bal = Balancer()
    one, two, dark = Backend("p1", "a:1"), Backend("p2", "b:1"), Backend("p3", None)
    bal.start("a:1")
    assert bal.pick([one, two, dark]) == two
    assert bal.pick([one, two], exclude={"b:1"}) == one
    assert bal.pick([dark]) is None
    bal.done("a:1")
    picks = {bal.pick([one, two]) for _ in range(4)}
    assert picks == {one, two}  # ties go round robin


def test_hop_by_hop_headers_never_cross_and_via_and_forwarded_for_are_added() -> None:
    sent = [
        ("Host", "svc"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("Via", "1.0 lb"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("Authorization", "Bearer k"),
        ("Content-Length", "3"),
    ]
    out = dict(to_backend(sent, "10.1.1.1"))
    assert out == {
        "Host": "svc",
        "Authorization": "Bearer k",
        "Content-Length": "3",
        "Via": "1.0 lb, 1.1 modelfleet-activator",
        "X-Forwarded-For": "1.2.3.4, 10.1.1.1",
        "X-Forwarded-Proto": "http",
    }
    back = dict(to_client([("Connection", "close"), ("Content-Type", "application/json")]))
    assert back == {"Content-Type": "application/json", "Via": "1.1 modelfleet-activator"}


def test_watch_events_keep_the_store_and_410_means_list_again() -> None:
    store: dict[str, dict[str, Any]] = {}
    obj = activator_slice()
    obj["metadata"].update(uid="u1", resourceVersion="5", managedFields=[{"huge": "x"}])
    assert apply_event(store, {"type": "ADDED", "object": obj}) == "5"
    assert "managedFields" not in store["u1"]["metadata"]
    assert build_table(store.values()).routes  # the trimmed slice still routes
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert apply_event(store, bookmark) == "9"
    assert apply_event(store, {"type": "DELETED", "object": obj}) == "5"
    assert store == {}
    with pytest.raises(Gone):
        apply_event(store, {"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    with pytest.raises(ValueError, match="500"):
        apply_event(store, {"type": "ERROR", "object": {"code": 500}})
    with pytest.raises(ValueError, match="without an object"):
        apply_event(store, {"type": "ADDED"})
    assert trim({"metadata": "junk"})["metadata"] == {}


def test_watch_lines_are_split_across_chunks_and_bounded() -> None:
    class Content:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        async def iter_any(self) -> Any:
            for c in self.chunks:
                yield c

    async def collect(chunks: list[bytes]) -> list[bytes]:
        return [line async for line in lines(Content(chunks))]  # type: ignore[arg-type]

    assert asyncio.run(collect([b'{"a"', b":1}\n\n{", b'"b":2}\n{"c":3}'])) == [
        b'{"a":1}',
        b'{"b":2}',
        b'{"c":3}',
    ]
    with pytest.raises(ValueError, match="over"):
        asyncio.run(collect([b"x" * (17 << 20)]))


def test_slices_file_reads_lists_streams_and_names_what_is_wrong(tmp_path: Path) -> None:
    f = tmp_path / "slices.yaml"
    f.write_text("kind: List\nitems:\n- {metadata: {name: a}}\n---\n- {metadata: {name: b}}\n")
    assert [s["metadata"]["name"] for s in read_slices_file(f)] == ["a", "b"]
    f.write_text("- 3\n")
    with pytest.raises(ValueError, match="an item is a int"):
        read_slices_file(f)
    f.write_text("{unclosed")
    with pytest.raises(ValueError, match=str(f)):
        read_slices_file(f)
    with pytest.raises(ValueError, match="missing"):
        read_slices_file(tmp_path / "missing.yaml")
