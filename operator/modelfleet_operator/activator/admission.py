"""Who may wait, and where a request goes. Pure bookkeeping: no I/O, no clock, no asyncio."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .routes import Backend, Key


@dataclass
class Admission:
    """Requests held now, per ModelDeployment and in all: a request is admitted to wait only
    under both caps, and leaves the count the moment it stops waiting."""

    max_total: int
    held: dict[Key, int] = field(default_factory=dict)
    total: int = 0

    def admit(self, key: Key, cap: int) -> str | None:
        """None: admitted (counted); else why not, for the caller's 503."""
        now = self.held.get(key, 0)
        if now >= cap:
            return (
                f"ModelDeployment {key[0]}/{key[1]} already has {now} requests waiting for a "
                f"replica, its cap (modelfleet.io/max-held-requests {cap})"
            )
        if self.total >= self.max_total:
            return (
                f"the activator already holds {self.total} requests waiting for replicas, "
                f"its cap (--max-held-total {self.max_total})"
            )
        self.held[key] = now + 1
        self.total += 1
        return None

    def release(self, key: Key) -> None:
        now = self.held.get(key, 0)
        if now <= 0:
            return
        self.total -= 1
        if now == 1:
            del self.held[key]
        else:
            self.held[key] = now - 1

    def count(self, key: Key) -> int:
        return self.held.get(key, 0)


@dataclass
class Balancer:
    """The reachable backend with the fewest requests in flight through this process; ties
    go round robin."""

    inflight: dict[str, int] = field(default_factory=dict)
    turn: int = 0

    def pick(self, backends: Sequence[Backend], exclude: Collection[str] = ()) -> Backend | None:
        candidates = [b for b in backends if b.address and b.address not in exclude]
        if not candidates:
            return None
        least = min(self.inflight.get(b.address or "", 0) for b in candidates)
        tied = [b for b in candidates if self.inflight.get(b.address or "", 0) == least]
        self.turn += 1
        return tied[self.turn % len(tied)]

    def start(self, address: str) -> None:
        self.inflight[address] = self.inflight.get(address, 0) + 1

    def done(self, address: str) -> None:
        now = self.inflight.get(address, 0)
        if now <= 1:
            self.inflight.pop(address, None)
        else:
            self.inflight[address] = now - 1
