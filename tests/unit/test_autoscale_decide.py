"""The builtin engine's decision function on a simulated clock and synthetic load: steps,
spikes, flapping under noise, scrape failures, clamps, pods still loading."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from modelfleet_operator.autoscale.decide import Decision, Observation, Policy, State, decide

TICK_S = 1.0


@dataclass
class Sim:
    """A ModelDeployment whose pods take ``load_s`` to load: what the engine writes becomes
    spec.replicas at once, new pods count as loading until they are ready."""

    policy: Policy
    replicas: int = 1
    load_s: float = 20.0
    at: float = 0.0
    state: State = field(default_factory=State)
    pods: list[float] = field(default_factory=list)  # ready-at time of each pod
    decisions: list[Decision] = field(default_factory=list)
    history: list[tuple[float, int]] = field(default_factory=list)  # (at, replicas)

    def __post_init__(self) -> None:
        self.pods = [0.0] * self.replicas

    def tick(
        self, demand: float, failed: int = 0, queued: float = 0.0, held: float = 0.0
    ) -> Decision:
        self.at += TICK_S
        ready = sum(1 for p in self.pods if p <= self.at)
        obs = Observation(
            at=self.at,
            demand=demand,
            ready=ready - failed,
            loading=len(self.pods) - ready,
            failed=failed,
            queued=queued,
            held=held,
        )
        decision, self.state = decide(self.policy, self.state, obs, self.replicas)
        self.decisions.append(decision)
        if decision.changed:
            if decision.desired > self.replicas:
                self.pods += [self.at + self.load_s] * (decision.desired - self.replicas)
            else:
                self.pods = sorted(self.pods)[: decision.desired]
            self.replicas = decision.desired
        self.history.append((self.at, self.replicas))
        return decision

    def run(self, seconds: float, demand: Callable[[float], float] | float, **kw: float) -> None:
        for _ in range(int(seconds / TICK_S)):
            value = demand(self.at) if callable(demand) else demand
            self.tick(value, **kw)  # type: ignore[arg-type]

    def first_change_after(self, at: float) -> float | None:
        previous = next((r for t, r in reversed(self.history) if t <= at), None)
        for t, r in self.history:
            if t > at and r != previous:
                return t - at
        return None


def reversals(history: list[tuple[float, int]]) -> int:
    """Changes of direction (up then down, or down then up)."""
    out, direction, last = 0, 0, None
    for _, r in history:
        if last is not None and r != last:
            d = 1 if r > last else -1
            if direction and d != direction:
                out += 1
            direction = d
        last = r
    return out


POLICY = Policy(min_replicas=1, max_replicas=10, target=4, scale_down_window_s=60)


def test_step_up_scales_within_the_panic_window_and_once() -> None:
    sim = Sim(POLICY)
    sim.run(90, 2)  # settled at 1 replica
    assert sim.replicas == 1
    start = sim.at
    sim.run(60, 20)  # 20 in flight at target 4: 5 pods
    latency = sim.first_change_after(start)
    assert latency is not None and latency <= POLICY.panic_window_s
    assert sim.replicas == 5
    # The loading pods count as capacity on the way: one decision, not a climb per tick.
    assert sum(1 for d in sim.decisions if d.changed) == 1


def test_loading_pods_are_capacity_on_the_way() -> None:
    sim = Sim(POLICY, load_s=300)
    sim.run(70, 0.5)
    sim.run(120, 20)  # the new pods never finish loading in this test
    assert sim.replicas == 5
    assert [d.desired for d in sim.decisions if d.changed] == [5]
    assert "4 loading" in sim.decisions[-1].why


def test_load_removed_scales_down_only_after_the_stable_window() -> None:
    policy = Policy(min_replicas=2, max_replicas=10, target=4, scale_down_window_s=120)
    sim = Sim(policy, replicas=6)
    sim.run(120, 24)
    assert sim.replicas == 6
    start = sim.at
    sim.run(600, 0)
    latency = sim.first_change_after(start)
    assert latency is not None and latency >= policy.scale_down_window_s
    assert sim.replicas == 2  # never below min
    assert "2 ready" not in sim.decisions[-1].why or sim.decisions[-1].desired == 2


def test_spike_panics_and_never_scales_down_in_panic() -> None:
    sim = Sim(POLICY, replicas=2)
    sim.run(90, 8)
    assert sim.replicas == 2
    sim.run(3, 60)  # a 3 s spike: 60 in flight needs 15 pods, 7.5x the capacity
    spike = [d for d in sim.decisions[-3:] if d.panic]
    assert spike and spike[-1].desired >= 8
    peak = sim.replicas
    sim.run(50, 1)  # the spike is gone, but panic holds for a stable window
    assert sim.replicas == peak
    assert all(d.desired >= d.current for d in sim.decisions[-50:] if d.panic)
    sim.run(300, 1)
    assert sim.replicas == 1
    assert "panic" not in sim.decisions[-1].why


def test_no_panic_when_demand_is_within_capacity() -> None:
    sim = Sim(POLICY, replicas=4)
    sim.run(120, 18)  # 5 pods wanted, 4 there: not 2x
    assert not any(d.panic for d in sim.decisions)
    assert sim.replicas == 5


@pytest.mark.parametrize("seed", [3, 12])
@pytest.mark.parametrize("mean", [10, 12, 14, 30])
def test_constant_noisy_load_reverses_at_most_once(mean: float, seed: int) -> None:
    rng = random.Random(seed)
    # Mean demand on or near a boundary (12 in flight = exactly 3 pods at target 4), +-40%
    # uniform noise every second, for 10 simulated minutes.
    policy = Policy(min_replicas=1, max_replicas=10, target=4, scale_down_window_s=60)
    sim = Sim(policy, math.ceil(mean / 4))
    sim.run(600, lambda _t: mean * rng.uniform(0.6, 1.4))
    assert reversals(sim.history) <= 1, [d.why for d in sim.decisions if d.changed]
    assert math.ceil(mean / 4) <= sim.replicas <= math.ceil(mean / 4 / 0.8) + 1


def test_square_wave_faster_than_the_windows_does_not_flap() -> None:
    sim = Sim(Policy(min_replicas=1, max_replicas=10, target=4, scale_down_window_s=120))
    sim.run(600, lambda t: 16 if int(t) % 20 < 10 else 8)  # 4 or 2 pods every 10 s
    assert reversals(sim.history) <= 1


def test_no_scale_down_while_a_scrape_failed_in_the_window() -> None:
    sim = Sim(POLICY, replicas=4)
    sim.run(90, 16)
    sim.run(5, 0, failed=1)  # one pod's /metrics did not answer
    sim.run(50, 0)  # the failure is still in the stable window
    assert sim.replicas == 4
    assert "scrapes failed" in sim.decisions[-1].why
    sim.run(200, 0)  # the window has passed without failures
    assert sim.replicas == 1


def test_scale_up_still_happens_on_the_pods_that_answered() -> None:
    sim = Sim(POLICY, replicas=2)
    sim.run(90, 8)
    sim.run(10, 40, failed=1)
    assert sim.replicas == 10


def test_no_pod_to_scrape_holds_the_replicas() -> None:
    sim = Sim(POLICY, replicas=3)
    sim.pods = []  # every pod gone (evicted, node lost): nothing serves, nothing to read
    sim.run(300, 0)
    assert sim.replicas == 3
    assert "no pod to scrape" in sim.decisions[-1].why


def test_clamped_to_min_and_max() -> None:
    policy = Policy(min_replicas=2, max_replicas=4, target=1, scale_down_window_s=0)
    sim = Sim(policy, replicas=1)
    sim.tick(0)
    assert sim.replicas == 2  # below min comes up at once
    sim.run(30, 100)
    assert sim.replicas == 4
    assert "at maxReplicas" in sim.decisions[-1].why
    sim = Sim(policy, replicas=9)
    sim.tick(100)
    assert sim.replicas == 4  # above max comes down at once


def test_no_scale_down_before_a_whole_stable_window_is_observed() -> None:
    sim = Sim(Policy(min_replicas=1, max_replicas=10, target=4, scale_down_window_s=0), replicas=5)
    sim.run(30, 0)  # e.g. the operator just restarted
    assert sim.replicas == 5
    assert "before 60s of observation" in sim.decisions[-1].why
    sim.run(60, 0)
    assert sim.replicas == 1


def test_scale_up_stabilization_waits_for_a_sustained_demand() -> None:
    policy = Policy(min_replicas=1, max_replicas=10, target=4, scale_up_window_s=30)
    sim = Sim(policy)
    sim.run(90, 2)
    start = sim.at
    sim.run(60, 20)
    latency = sim.first_change_after(start)
    assert latency is not None and latency >= 30
    assert sim.replicas == 5


def test_why_says_what_was_seen() -> None:
    sim = Sim(POLICY, replicas=3)
    sim.run(90, 12)
    d = sim.tick(26, queued=2)  # not 2x the capacity: the stable window decides
    assert d.why == "3 -> 4: 26 in flight (2 queued) over 3 ready at target 4"
    d = sim.tick(200)
    assert d.why == (
        "4 -> 10: 200 in flight over 3 ready + 1 loading at target 4, panic; at maxReplicas"
    )


def test_rps_metric_text() -> None:
    policy = Policy(min_replicas=1, max_replicas=10, target=50, metric="rps")
    d, _ = decide(policy, State(), Observation(at=1, demand=120.5, ready=1, loading=0), 1)
    assert d.desired == 3 and "120.5 req/s over 1 ready at target 50" in d.why


# --- scale to zero (minReplicas 0) ----------------------------------------------------------


def _to_zero(**kw: float) -> Policy:
    return Policy(min_replicas=0, max_replicas=4, target=2, scale_down_window_s=30, **kw)


def test_idle_scales_to_zero_only_after_the_stable_and_scale_down_windows() -> None:
    sim = Sim(_to_zero(), replicas=1)
    sim.run(59, 0.0)
    assert sim.replicas == 1  # never before a whole stable window has been seen
    sim.run(5, 0.0)
    assert sim.replicas == 0


def test_a_held_request_at_zero_asks_for_one_replica_at_the_next_tick() -> None:
    sim = Sim(_to_zero(), replicas=0)
    sim.pods = []
    sim.run(120, 0.0)
    assert sim.replicas == 0
    decision = sim.tick(1.0, held=1.0)  # concurrency: held requests are in the demand
    assert decision.desired == 1
    assert "held by the activator" in decision.why


def test_held_requests_on_rps_ask_for_one_replica_though_no_rate_is_seen() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, target=10, metric="rps")
    sim = Sim(policy, replicas=0)
    sim.pods = []
    assert sim.tick(0.0, held=3.0).desired == 1


def test_a_burst_held_at_zero_sizes_the_first_step() -> None:
    sim = Sim(_to_zero(), replicas=0)
    sim.pods = []
    decision = sim.tick(7.0, held=7.0)  # 7 in flight at target 2
    assert decision.desired == 4  # at maxReplicas, in one write


def test_nothing_scales_to_zero_while_requests_are_held() -> None:
    sim = Sim(_to_zero(), replicas=1, load_s=1000.0)
    sim.pods = [1000.0]  # the one replica is still loading
    for _ in range(200):
        sim.tick(0.0, held=1.0)
    assert sim.replicas == 1
