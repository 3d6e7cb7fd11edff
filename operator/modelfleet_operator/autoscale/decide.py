"""The builtin engine's decision (pure): observed demand in, desired replicas out.

Knative-style: demand is averaged over a stable window (60 s) and a panic window (6 s).

- desired = ceil(demand / target) on the higher of the two windows' mean demand, demand
  being the in-flight requests of every pod
  (``modelfleet_inflight_requests`` counts a request from acceptance to answer, so the queued
  ones are in it) or their requests per second; clamped to [minReplicas, maxReplicas];
- pods still loading the model count as capacity on the way: the desired count comes from
  demand alone, so while the pods asked for are loading the same demand asks for no more;
- panic: when the panic window's demand needs at least ``panic_threshold`` times the
  capacity there is (ready + loading pods), the panic window (or the latest tick, if higher)
  decides and nothing scales down; panic ends a stable window after demand last crossed the
  threshold;
- scale-down only when both windows want fewer, never before a whole stable window has been seen
  (an operator restart), never while a scrape failed in it (what the failed pod carried is
  unknown), and only to the highest recommendation of the last scaleDownStabilizationSeconds;
- scale to zero (minReplicas 0): requests held by the activator (``held``) ask for at
  least one replica at once, and nothing scales to 0 while any are held;
- scale-up goes to the lowest recommendation of the last scaleUpStabilizationSeconds (0: at
  once).

The clock is the caller's (``at``, monotonic seconds), so tests simulate it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

STABLE_WINDOW_S = 60.0
PANIC_WINDOW_S = 6.0
PANIC_THRESHOLD = 2.0
# Scale down to n pods only while the demand fits n pods with this much room: a band
# between scaling up (demand above n x target) and down, so noise around a boundary does
# not flap.
DOWN_TOLERANCE = 0.2


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target: float  # per pod: in-flight requests, or requests/s
    metric: str = "concurrency"  # concurrency | rps (only for the why text)
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    stable_window_s: float = STABLE_WINDOW_S
    panic_window_s: float = PANIC_WINDOW_S
    panic_threshold: float = PANIC_THRESHOLD


@dataclass(frozen=True)
class Observation:
    """One tick's scrape of every pod, summed."""

    at: float
    demand: float  # in-flight requests (or req/s) of the pods scraped
    ready: int  # pods serving
    loading: int  # pods started and loading the model (capacity on the way)
    failed: int = 0  # pods whose scrape failed (their demand is unknown)
    queued: float = 0.0  # of the demand, waiting for a batch (for the why text)
    # requests the activator holds while no replica is ready (scale to zero; in the demand
    # for concurrency): while there are any, at least one replica is wanted
    held: float = 0.0


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    panic: bool
    why: str

    @property
    def changed(self) -> bool:
        return self.desired != self.current


@dataclass(frozen=True)
class State:
    """What the decision remembers between ticks (the caller keeps it per ModelDeployment)."""

    observations: tuple[Observation, ...] = ()
    # (at, unstabilized desired up, the same with the down tolerance's room)
    recommendations: tuple[tuple[float, int, int], ...] = ()
    panic_since: float | None = None
    over_threshold_at: float | None = None
    first_at: float | None = None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _clamp(policy: Policy, n: int) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, n))


def _want(policy: Policy, demand: float) -> int:
    # A tiny epsilon: 12 in flight at target 4 is 3 pods, not 4 from float noise.
    return math.ceil(demand / policy.target - 1e-9) if demand > 0 else 0


def decide(policy: Policy, state: State, obs: Observation, current: int) -> tuple[Decision, State]:
    """The decision at ``obs.at`` for a ModelDeployment whose spec.replicas is ``current``."""
    now = obs.at
    first_at = state.first_at if state.first_at is not None else now
    keep_s = max(policy.stable_window_s, policy.scale_down_window_s, policy.scale_up_window_s)
    observations = (*(o for o in state.observations if o.at > now - keep_s), obs)
    stable = [o for o in observations if o.at > now - policy.stable_window_s]
    panic_window = [o for o in observations if o.at > now - policy.panic_window_s]
    stable_demand = _mean([o.demand for o in stable])
    panic_demand = _mean([o.demand for o in panic_window])
    want_stable = _want(policy, stable_demand)
    want_panic = _want(policy, panic_demand)

    capacity = max(1, obs.ready + obs.loading)
    over = want_panic >= policy.panic_threshold * capacity and want_panic > capacity
    over_at = now if over else state.over_threshold_at
    panic_since = state.panic_since
    if over and panic_since is None:
        panic_since = now
    elif (
        panic_since is not None
        and not over
        and (over_at is None or now - over_at >= policy.stable_window_s)
    ):
        panic_since = None
    panic = panic_since is not None

    unknown = any(o.failed for o in stable) or (current > 0 and obs.ready + obs.loading == 0)
    seen_s = now - first_at
    # In panic the latest tick sizes the step (the window's mean lags a load step by up to
    # the window): one write for a step instead of a climb.
    want_now = _want(policy, obs.demand)
    # Up on either window (the short one is what makes a step take seconds), down only when
    # both want fewer: a short dip is no reason to drop a pod that took minutes to load.
    want = max(want_stable, want_panic)
    if obs.held > 0:
        want, want_now = max(want, 1), max(want_now, 1)
    raw = _clamp(policy, max(want, want_now, current) if panic else want)
    roomy = max(stable_demand, panic_demand) / (1 - DOWN_TOLERANCE)
    raw_down = max(raw, _clamp(policy, max(_want(policy, roomy), 1 if obs.held > 0 else 0)))
    recommendations = (
        *(r for r in state.recommendations if r[0] > now - keep_s),
        (now, raw, raw_down),
    )

    desired = raw
    held = None
    if desired > current and policy.scale_up_window_s > 0:
        window = [n for at, n, _ in recommendations if at > now - policy.scale_up_window_s]
        desired = max(current, min(window or [raw]))
        if desired < raw:
            held = f"scale-up stabilization ({_fmt(policy.scale_up_window_s)}s) wants {raw}"
    if desired < current:
        window = [n for at, _, n in recommendations if at > now - policy.scale_down_window_s]
        desired = min(current, max(window or [raw_down]))
        failed = sum(1 for o in stable if o.failed)
        if panic:
            desired, held = current, "no scale-down in panic"
        elif unknown:
            held = (
                f"no scale-down: {failed} scrapes failed in the last "
                f"{_fmt(policy.stable_window_s)}s"
                if failed
                else "no scale-down: no pod to scrape"
            )
            desired = current
        elif seen_s < policy.stable_window_s:
            held = f"no scale-down before {_fmt(policy.stable_window_s)}s of observation"
            desired = current
        elif desired > raw:
            held = (
                f"scale-down stabilization ({_fmt(policy.scale_down_window_s)}s) keeps "
                f"{desired}, wants {raw}"
            )
    desired = _clamp(policy, desired)  # spec.replicas outside [min, max] comes back in

    why = _why(policy, current=current, desired=desired, obs=obs, panic=panic, held=held)
    new_state = replace(
        state,
        observations=observations,
        recommendations=recommendations,
        panic_since=panic_since,
        over_threshold_at=over_at,
        first_at=first_at,
    )
    return Decision(current=current, desired=desired, panic=panic, why=why), new_state


def replace_decision(decision: Decision, desired: int, note: str) -> Decision:
    """The caller's override of the desired count (e.g. no activator to scale to zero)."""
    why = decision.why.replace(f"{decision.current} -> {decision.desired}:", "", 1).strip()
    return Decision(
        current=decision.current,
        desired=desired,
        panic=decision.panic,
        why=f"{decision.current} -> {desired}: {why}{note}",
    )


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _why(
    policy: Policy,
    *,
    current: int,
    desired: int,
    obs: Observation,
    panic: bool,
    held: str | None,
) -> str:
    what = (
        f"{_fmt(obs.demand)} in flight" + (f" ({_fmt(obs.queued)} queued)" if obs.queued else "")
        if policy.metric == "concurrency"
        else f"{_fmt(obs.demand)} req/s"
    )
    if obs.held:
        what += f", {_fmt(obs.held)} held by the activator"
    pods = f"{obs.ready} ready" + (f" + {obs.loading} loading" if obs.loading else "")
    if obs.failed:
        pods += f", {obs.failed} unscraped"
    text = f"{current} -> {desired}: {what} over {pods} at target {_fmt(policy.target)}"
    if panic:
        text += ", panic"
    if held:
        text += f"; {held}"
    elif desired == policy.max_replicas and current <= desired:
        text += "; at maxReplicas"
    return text
