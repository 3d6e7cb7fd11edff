"""The dynamic batcher without HTTP or torch: grouping, limits, deadlines, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from modelfleet_runtime.batching import Batcher
from modelfleet_runtime.errors import DeadlineExceeded, Overloaded

Result = tuple[object, BaseException | None]


class Harness:
    """Runs the batcher with ``post`` executing callbacks inline (as the loop thread would)."""

    def __init__(self, delay_s: float = 0.0, **kwargs: float) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.results: dict[str, Result] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.delay_s = delay_s
        self.done = threading.Condition()
        self.batcher: Batcher[tuple[str, int], str] = Batcher(
            self.process,
            post=self.post,
            **kwargs,  # type: ignore[arg-type]
        )
        self.batcher.start()

    def process(self, payloads: list[tuple[str, int]]) -> list[str | BaseException]:
        self.gate.wait(5)
        time.sleep(self.delay_s)
        self.batches.append(payloads)
        out: list[str | BaseException] = []
        for name, rows in payloads:
            if name == "boom-all":
                raise RuntimeError("model broke")
            out.append(ValueError(name) if name.startswith("bad") else f"{name}:{rows}")
        return out

    def post(self, fn: Callable[[], None]) -> None:
        with self.done:
            fn()
            self.done.notify_all()

    def submit(self, name: str, rows: int = 1, deadline: float | None = None) -> object:
        def callback(result: object, error: BaseException | None, q: float, c: float) -> None:
            self.results[name] = (result, error)

        return self.batcher.submit((name, rows), rows, callback, deadline)

    def wait(self, n: int, timeout: float = 5.0) -> None:
        with self.done:
            assert self.done.wait_for(lambda: len(self.results) >= n, timeout), self.results


def test_requests_queued_while_busy_are_merged_up_to_max_rows() -> None:
    h = Harness(max_batch_size=4, max_delay_s=0.0)
    h.gate.clear()
    h.submit("first")
    time.sleep(0.05)  # first is in process(), blocked on the gate
    for name, rows in [("a", 1), ("b", 2), ("c", 1), ("d", 3), ("e", 1)]:
        h.submit(name, rows)
    h.gate.set()
    h.wait(6)
    assert [[p[0] for p in b] for b in h.batches] == [["first"], ["a", "b", "c"], ["d", "e"]]
    assert h.results["b"] == ("b:2", None)
    h.batcher.stop(5)


def test_lone_request_does_not_wait_for_the_delay() -> None:
    h = Harness(max_batch_size=8, max_delay_s=1.0)
    started = time.monotonic()
    h.submit("solo")
    h.wait(1)
    assert time.monotonic() - started < 0.5
    h.batcher.stop(5)


def test_delay_gathers_companions_under_concurrent_traffic() -> None:
    h = Harness(delay_s=0.15, max_batch_size=8, max_delay_s=0.3)  # waits <= one forward pass
    h.gate.clear()
    h.submit("x1")
    time.sleep(0.05)
    h.submit("x2")
    h.submit("x3")
    h.gate.set()  # x2+x3 run together: now traffic is concurrent
    h.wait(3)
    h.submit("y1")
    time.sleep(0.05)
    h.submit("y2")  # arrives inside y1's delay window
    h.wait(5)
    assert [p[0] for p in h.batches[-1]] == ["y1", "y2"]
    h.batcher.stop(5)


def test_cheap_model_does_not_wait_for_stragglers() -> None:
    h = Harness(max_batch_size=8, max_delay_s=1.0)  # process() takes ~0 s
    h.gate.clear()
    h.submit("x1")
    time.sleep(0.05)
    h.submit("x2")
    h.submit("x3")
    h.gate.set()
    h.wait(3)
    started = time.monotonic()
    h.submit("y1")  # last batch had 2 rows, but waiting longer than a forward pass is waste
    h.wait(4)
    assert time.monotonic() - started < 0.5
    h.batcher.stop(5)


def test_oversized_request_runs_alone() -> None:
    h = Harness(max_batch_size=2)
    h.submit("big", 5)
    h.wait(1)
    assert h.results["big"] == ("big:5", None)
    h.batcher.stop(5)


def test_full_queue_raises_overloaded_with_configured_status() -> None:
    h = Harness(max_batch_size=1, max_queue_size=2, overload_status=429)
    h.gate.clear()
    h.submit("running")
    time.sleep(0.05)
    h.submit("q1")
    h.submit("q2")
    with pytest.raises(Overloaded) as err:
        h.submit("q3")
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    h.gate.set()
    h.wait(3)
    h.batcher.stop(5)


def test_expired_requests_are_answered_without_compute() -> None:
    h = Harness(max_batch_size=4)
    h.gate.clear()
    h.submit("running")
    time.sleep(0.05)
    h.submit("late", deadline=time.monotonic() + 0.01)
    ticket = h.submit("timer", deadline=time.monotonic() + 10)
    h.batcher.expire(ticket)  # what the loop's timer does
    assert isinstance(h.results["timer"][1], DeadlineExceeded)
    assert h.batcher.depth == 1
    time.sleep(0.05)
    h.gate.set()
    h.wait(3)
    assert isinstance(h.results["late"][1], DeadlineExceeded)
    assert [p[0] for b in h.batches for p in b] == ["running"]
    h.batcher.stop(5)


def test_model_errors_reach_only_their_callers_and_the_worker_survives() -> None:
    h = Harness(max_batch_size=1)
    h.submit("bad-one")
    h.submit("boom-all")
    h.submit("fine")
    h.wait(3)
    assert isinstance(h.results["bad-one"][1], ValueError)
    assert isinstance(h.results["boom-all"][1], RuntimeError)
    assert h.results["fine"] == ("fine:1", None)
    h.batcher.stop(5)


def test_stop_finishes_queued_work_then_refuses() -> None:
    h = Harness(delay_s=0.01, max_batch_size=1)
    for i in range(5):
        h.submit(f"r{i}")
    h.batcher.stop(5)
    assert len(h.results) == 5 and h.batcher.idle
    with pytest.raises(Overloaded):
        h.submit("after")
