"""Leader election on a Lease: the pure decision, and two electors sharing one in-memory
Lease store with optimistic concurrency (a stale resourceVersion is a 409, as on the API
server)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from modelfleet_operator.kube import KubeError
from modelfleet_operator.leader import LeaderElector, LeaseRecord, decide, lease_body, parse_lease

NOW = dt.datetime(2026, 12, 2, 4, 0, 0, tzinfo=dt.UTC)


def rec(holder: str, transitions: int = 0, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, transitions, "7")


@pytest.mark.parametrize(
    ("record", "unchanged", "action"),
    [
        (None, 0.0, "create"),
        (rec("me"), 0.0, "renew"),
        (rec("me"), 100.0, "renew"),  # ours even if we could not renew for a while
        (rec("other"), 0.0, "wait"),
        (rec("other"), 14.9, "wait"),
        (rec("other"), 15.0, "take"),
        (rec(""), 0.0, "take"),  # released on a clean stop: no need to wait
        (rec("other", duration=60), 20.0, "wait"),  # the holder's own duration counts
    ],
)
def test_decide(record: LeaseRecord | None, unchanged: float, action: str) -> None:
    assert decide(record, "me", unchanged, 15).action == action


def test_wait_says_how_long_is_left() -> None:
    assert decide(rec("other"), "me", 5.0, 15).wait_s == pytest.approx(10.0)


def test_taking_over_counts_a_transition_and_renewing_keeps_acquire_time() -> None:
    taken = lease_body(
        name="l", namespace="ns", me="me", duration_s=15, now=NOW, previous=rec("other", 3)
    )
    assert taken["spec"]["leaseTransitions"] == 4
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"]
    assert taken["metadata"]["resourceVersion"] == "7"
    renewed = lease_body(
        name="l", namespace="ns", me="me", duration_s=15, now=NOW, previous=rec("me", 4)
    )
    assert renewed["spec"]["leaseTransitions"] == 4 and "acquireTime" not in renewed["spec"]
    first = lease_body(name="l", namespace="ns", me="me", duration_s=15, now=NOW, previous=None)
    assert first["spec"]["leaseTransitions"] == 0 and "resourceVersion" not in first["metadata"]
    assert parse_lease(first).holder == "me"


class Store:
    """One Lease, with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise KubeError(0, "ClientConnectorError", "connection refused")

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.obj)

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if self.obj is not None:
            raise KubeError(409, "AlreadyExists", "leases already exists")
        return self._store(body)

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._check()
        assert self.obj is not None
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict", "the object has been modified")
        return self._store(body)

    def _store(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.obj = copy.deepcopy(dict(body))
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(store: Store, me: str, clock: Clock) -> LeaderElector:
    return LeaderElector(
        store, namespace="ns", identity=me, duration_s=15, renew_deadline_s=10, retry_s=2,
        clock=clock,
    )  # fmt: skip


def test_only_one_of_two_holds_and_the_other_takes_over_after_expiry() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        a, b = elector(store, "a", clock), elector(store, "b", clock)
        assert (await a.try_once()).action == "create"
        assert (await b.try_once()).action == "wait"
        clock.t += 10
        assert (await a.try_once()).action == "renew"  # a renewed: b's wait starts over
        assert (await b.try_once()).action == "wait"
        clock.t += 14.9
        assert (await b.try_once()).action == "wait"
        clock.t += 0.1  # 15 s without a change seen by b
        assert (await b.try_once()).action == "take"
        assert store.obj is not None and store.obj["spec"]["holderIdentity"] == "b"
        assert store.obj["spec"]["leaseTransitions"] == 1
        assert (await a.try_once()).action == "wait"  # a is now a standby

    asyncio.run(scenario())


def test_a_lost_race_is_a_conflict_not_two_leaders() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        a, b = elector(store, "a", clock), elector(store, "b", clock)
        await a.try_once()
        stale = await store.read_lease("ns", "x")
        clock.t += 20
        await b.try_once()  # b reads, sees expiry... (first sighting: waits)
        clock.t += 20
        assert (await b.try_once()).action == "take"
        assert stale is not None
        with pytest.raises(KubeError) as exc:  # a writing from what it read before b took it
            await store.replace_lease("ns", "x", stale)
        assert exc.value.status == 409

    asyncio.run(scenario())


def test_holder_gives_up_after_the_renew_deadline_and_release_hands_over_at_once() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        a = LeaderElector(
            store, namespace="ns", identity="a", duration_s=3, renew_deadline_s=0.2,
            retry_s=0.01,
        )  # fmt: skip
        await a.acquire()
        store.down = True
        lost: list[str] = []
        await asyncio.wait_for(a.hold(lost.append), timeout=5)
        assert lost and "not renewed" in lost[0]
        store.down = False
        await a.acquire()
        await a.release()
        b = elector(store, "b", clock)
        assert (await b.try_once()).action == "take"  # no 15 s wait after a clean release

    asyncio.run(scenario())


def test_timings_must_leave_the_holder_time_to_stop_first() -> None:
    with pytest.raises(ValueError):
        LeaderElector(Store(), namespace="ns", identity="a", duration_s=10, renew_deadline_s=10)
