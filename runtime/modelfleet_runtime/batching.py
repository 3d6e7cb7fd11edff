"""Dynamic batcher: merges queued requests into one forward pass on a dedicated thread.

No HTTP and no torch here. The event loop submits tickets; the worker thread forms batches
(up to ``max_batch_size`` rows, waiting at most ``max_delay_s`` for companions), calls
``process`` with the payloads and hands every caller its own result back on the loop thread
through ``post`` (``loop.call_soon_threadsafe`` in the server).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from .errors import DeadlineExceeded, Overloaded, ServingError

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

QUEUED, TAKEN, EXPIRED = 0, 1, 2

# callback(result, error, queue_seconds, compute_seconds), always run on the loop thread
Callback = Callable[[R | None, BaseException | None, float, float], None]


class BatchObserver(Protocol):
    def batch_done(self, requests: int, rows: int, compute_s: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...


@dataclasses.dataclass(slots=True, eq=False)
class Ticket(Generic[P, R]):
    payload: P
    rows: int
    deadline: float | None  # time.monotonic() value
    callback: Callback[R]
    enqueued: float
    state: int = QUEUED


class Batcher(Generic[P, R]):
    def __init__(
        self,
        process: Callable[[list[P]], Sequence[R | BaseException]],
        *,
        post: Callable[[Callable[[], None]], None],
        max_batch_size: int = 1,
        max_delay_s: float = 0.0,
        max_queue_size: int = 1024,
        overload_status: int = 503,
        observer: BatchObserver | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self._process = process
        self._post = post
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue_size = max(1, max_queue_size)
        self._overload_status = overload_status
        self._observer = observer
        self._thread_init = thread_init
        self._queue: collections.deque[Ticket[P, R]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._depth = 0  # queued tickets that have not expired
        self._busy = False
        self._stopping = False
        self._last_batch_rows = 1
        self._last_compute_s = 0.0
        self._thread: threading.Thread | None = None

    # -- loop thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modelfleet-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def idle(self) -> bool:
        return self._depth == 0 and not self._busy

    def check_admission(self) -> None:
        """Raise Overloaded when a submit now would be refused (full, or shutting down).
        Callers check before decoding a request, so an overloaded server spends no CPU on
        bodies it refuses (submit checks again under the lock)."""
        if self._stopping:
            raise Overloaded("server is shutting down", status=503, outcome="unavailable")
        if self._depth >= self.max_queue_size:
            raise Overloaded(
                f"queue full ({self.max_queue_size} requests waiting); retry later",
                status=self._overload_status,
            )

    def submit(
        self, payload: P, rows: int, callback: Callback[R], deadline: float | None = None
    ) -> Ticket[P, R]:
        """Queue a request, or raise Overloaded at once when the queue is full."""
        ticket: Ticket[P, R] = Ticket(payload, rows, deadline, callback, time.monotonic())
        with self._cond:
            self.check_admission()
            self._queue.append(ticket)
            self._depth += 1
            depth = self._depth
            self._cond.notify()
        if self._observer is not None:
            self._observer.queue_depth(depth)
        return ticket

    def expire(self, ticket: Ticket[P, R]) -> None:
        """Deadline timer: answer 504 now if the ticket is still waiting (no compute)."""
        with self._cond:
            if ticket.state != QUEUED:
                return
            ticket.state = EXPIRED
            self._depth -= 1
            depth = self._depth
        if self._observer is not None:
            self._observer.queue_depth(depth)
        waited = time.monotonic() - ticket.enqueued
        ticket.callback(None, _expired(waited), waited, 0.0)

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            batch, expired = self._gather()
            if not batch and not expired:
                return  # stopping and drained
            started = time.monotonic()
            if expired:
                self._post(_deliver_expired(expired, started))
            if not batch:
                continue
            try:
                results: Sequence[R | BaseException] = self._process([t.payload for t in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
            except BaseException as exc:  # the model raised: every caller gets the error
                log.exception("forward pass failed")
                results = [exc] * len(batch)
            compute_s = time.monotonic() - started
            self._last_batch_rows = sum(t.rows for t in batch)
            self._last_compute_s = compute_s
            with self._cond:
                self._busy = False
            if self._observer is not None:
                self._observer.batch_done(len(batch), sum(t.rows for t in batch), compute_s)
            self._post(_deliver(batch, results, started, compute_s))

    def _gather(self) -> tuple[list[Ticket[P, R]], list[Ticket[P, R]]]:
        batch: list[Ticket[P, R]] = []
        expired: list[Ticket[P, R]] = []
        rows = 0
        wait_until = 0.0
        # Wait for companions only up to the size of the last batch: a lone client (last
        # batch of one) never pays the delay, and steady concurrency N does not wait for an
        # N+1st request that is not coming. Whatever is already queued is taken regardless.
        target = min(self.max_batch_size, self._last_batch_rows)
        # Never wait longer than a forward pass takes: for a cheap model, running now and
        # again right after beats idling for stragglers.
        max_wait = min(self.max_delay_s, self._last_compute_s)
        with self._cond:
            while True:
                now = time.monotonic()
                queue = self._queue
                while queue:
                    head = queue[0]
                    if head.state != QUEUED:  # expired by its timer; already answered
                        queue.popleft()
                        continue
                    if batch and rows + head.rows > self.max_batch_size:
                        break
                    queue.popleft()
                    self._depth -= 1
                    if head.deadline is not None and head.deadline <= now:
                        head.state = EXPIRED
                        expired.append(head)
                        continue
                    head.state = TAKEN
                    if not batch:
                        wait_until = head.enqueued + max_wait
                    batch.append(head)
                    rows += head.rows
                full = rows >= target or bool(queue and queue[0].state == QUEUED)
                if batch and (full or now >= wait_until):
                    break
                if expired and not batch:
                    break
                if self._stopping and not queue:
                    break
                if batch:
                    self._cond.wait(wait_until - now)
                else:
                    self._cond.wait()
            if batch:
                self._busy = True
            depth = self._depth
        if self._observer is not None:
            self._observer.queue_depth(depth)
        return batch, expired


def _expired(waited_s: float) -> ServingError:
    return DeadlineExceeded(f"deadline exceeded after {waited_s * 1000:.1f} ms in the queue")


def _deliver(
    batch: list[Ticket[P, R]],
    results: Sequence[R | BaseException],
    started: float,
    compute_s: float,
) -> Callable[[], None]:
    def run() -> None:
        for ticket, result in zip(batch, results, strict=True):
            queue_s = started - ticket.enqueued
            try:
                if isinstance(result, BaseException):
                    ticket.callback(None, result, queue_s, compute_s)
                else:
                    ticket.callback(result, None, queue_s, compute_s)
            except Exception:  # one broken callback must not starve the others
                log.exception("result callback failed")

    return run


def _deliver_expired(expired: list[Ticket[P, R]], now: float) -> Callable[[], None]:
    def run() -> None:
        for ticket in expired:
            waited = now - ticket.enqueued
            try:
                ticket.callback(None, _expired(waited), waited, 0.0)
            except Exception:
                log.exception("result callback failed")

    return run
