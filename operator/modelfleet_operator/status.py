"""Observed children and pods -> status and conditions (pure).

Conditions follow the Kubernetes API conventions: a fixed set of types, CamelCase reasons
that are constants (so alerts and tests can match them), messages for humans, and a
lastTransitionTime that only moves when the status flips.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .apikeys import auth_status, secret_message
from .nodescale import WAITING, NodeScaleEvent
from .render.deployment import CONTAINER, FETCH_CONTAINER, Strategy
from .spec import InvalidSpec, ModelDeploymentSpec
from .usage import UsageReport, usage_status

READY = "Ready"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SCALING_ACTIVE = "ScalingActive"  # only while spec.autoscaling is set
CONDITION_TYPES = (READY, AVAILABLE, PROGRESSING, DEGRADED, SCALING_ACTIVE)


class Reason:
    ALL_READY = "AllReplicasReady"
    INVALID_SPEC = "InvalidSpec"
    INSUFFICIENT_GPU = "InsufficientGPU"
    GPU_PRODUCT_UNAVAILABLE = "GPUProductUnavailable"
    MODEL_PVC_NOT_FOUND = "ModelPVCNotFound"
    MODEL_PVC_NOT_BOUND = "ModelPVCNotBound"
    PRIORITY_CLASS_NOT_FOUND = "PriorityClassNotFound"
    POD_CREATION_FAILED = "PodCreationFailed"
    RECONCILE_ERROR = "ReconcileError"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    MODEL_FETCH_FAILED = "ModelFetchFailed"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    UNSCHEDULABLE = "Unschedulable"
    # A node autoscaler's word on a pending pod (nodescale.py)
    WAITING_FOR_NODE = "WaitingForNode"
    NO_NODE_GROUP_FITS = "NoNodeGroupFits"
    APPLY_FAILED = "ApplyFailed"
    CHILD_CONFLICT = "ChildConflict"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    WAITING_FOR_DEPLOYMENT = "WaitingForDeployment"
    SCALED_TO_ZERO = "ScaledToZero"
    ACTIVATING_FROM_ZERO = "ActivatingFromZero"
    MIN_AVAILABLE = "MinimumReplicasAvailable"
    NO_REPLICAS_AVAILABLE = "NoReplicasAvailable"
    AS_EXPECTED = "AsExpected"
    # ScalingActive (the HPA's and KEDA's own reasons are copied as they are)
    VALID_METRIC_FOUND = "ValidMetricFound"
    FAILED_GET_PODS_METRIC = "FailedGetPodsMetric"
    NO_PODS_TO_SCRAPE = "NoPodsToScrape"
    FAILED_UPDATE_SCALE = "FailedUpdateScale"
    WAITING_FOR_AUTOSCALER = "WaitingForAutoscaler"
    WARM_CAPACITY_UNAVAILABLE = "WarmCapacityUnavailable"
    API_KEY_SECRET_NOT_FOUND = "APIKeySecretNotFound"
    API_KEY_SECRET_INVALID = "APIKeySecretInvalid"


# Worst first: the first problem found names the Ready/Degraded reason.
_SEVERITY = [
    Reason.RECONCILE_ERROR,
    Reason.CHILD_CONFLICT,
    Reason.APPLY_FAILED,
    Reason.GPU_PRODUCT_UNAVAILABLE,
    Reason.PRIORITY_CLASS_NOT_FOUND,
    Reason.POD_CREATION_FAILED,
    Reason.API_KEY_SECRET_NOT_FOUND,
    Reason.MODEL_PVC_NOT_FOUND,
    Reason.MODEL_PVC_NOT_BOUND,
    Reason.IMAGE_PULL_FAILED,
    Reason.MODEL_FETCH_FAILED,
    Reason.MODEL_LOAD_FAILED,
    Reason.NO_NODE_GROUP_FITS,
    Reason.INSUFFICIENT_GPU,
    Reason.UNSCHEDULABLE,
    Reason.PROGRESS_DEADLINE_EXCEEDED,
]
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition that changed; becomes an Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def event_type(self) -> str:
        bad = (
            (self.type == DEGRADED and self.status == "True")
            or (
                self.type in (READY, AVAILABLE)
                and self.status == "False"
                and self.reason in [*_SEVERITY, Reason.INVALID_SPEC, Reason.NO_REPLICAS_AVAILABLE]
            )
            or (
                self.type == SCALING_ACTIVE
                and self.status == "False"
                and self.reason not in (Reason.NO_PODS_TO_SCRAPE, Reason.WAITING_FOR_AUTOSCALER)
            )
        )
        return "Warning" if bad else "Normal"


@dataclass(frozen=True)
class ScalingReport:
    """What the autoscaling engine says: the builtin one's last tick (autoscale/loop.py), or
    an HPA's / ScaledObject's status read by ``scaling_from_hpa``/``scaling_from_keda``."""

    engine: str
    active: bool | None  # None: not known yet
    reason: str
    message: str
    current: int | None = None
    desired: int | None = None
    last_decision: str | None = None  # e.g. "3 -> 5: 18 in flight over 3 ready at target 4"
    last_decision_time: str | None = None


def _conditions_by_type(obj: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {
        str(c.get("type")): c for c in ((obj or {}).get("status") or {}).get("conditions") or []
    }


def scaling_from_hpa(hpa: Mapping[str, Any] | None) -> ScalingReport:
    """The HPA's own verdict: AbleToScale False or ScalingActive False (e.g.
    FailedGetPodsMetric: no custom metrics API registered) make ours False, with its words."""
    if hpa is None:
        return ScalingReport("hpa", None, Reason.WAITING_FOR_AUTOSCALER, "no HPA yet")
    st = hpa.get("status") or {}
    conds = _conditions_by_type(hpa)
    able, active = conds.get("AbleToScale"), conds.get("ScalingActive")
    current, desired = st.get("currentReplicas"), st.get("desiredReplicas")
    when = st.get("lastScaleTime")
    if able is not None and able.get("status") == "False":
        chosen = able
    elif active is not None:
        chosen = active
    else:
        return ScalingReport(
            "hpa", None, Reason.WAITING_FOR_AUTOSCALER, "the HPA has not reported yet",
            current, desired, None, when,
        )  # fmt: skip
    status = chosen.get("status")
    return ScalingReport(
        "hpa",
        None if status == "Unknown" else status == "True",
        str(chosen.get("reason") or "Unknown"),
        _truncate(f"HPA: {chosen.get('message') or ''}"),
        current,
        desired,
        None,
        when,
    )


def scaling_from_keda(so: Mapping[str, Any] | None) -> ScalingReport:
    """KEDA's ScaledObject: Ready False (a trigger cannot be read) makes ours False."""
    if so is None:
        return ScalingReport("keda", None, Reason.WAITING_FOR_AUTOSCALER, "no ScaledObject yet")
    conds = _conditions_by_type(so)
    ready, active = conds.get("Ready"), conds.get("Active")
    if ready is None or ready.get("status") == "Unknown":
        return ScalingReport(
            "keda", None, Reason.WAITING_FOR_AUTOSCALER,
            "KEDA has not reconciled the ScaledObject yet (is KEDA installed?)",
        )  # fmt: skip
    message = f"KEDA: {ready.get('message') or ''}"
    if ready.get("status") == "True" and active is not None and active.get("message"):
        message += f"; {active.get('message')}"
    return ScalingReport(
        "keda",
        ready.get("status") == "True",
        str(ready.get("reason") or "Unknown"),
        _truncate(message),
        last_decision_time=(so.get("status") or {}).get("lastActiveTime"),
    )


def _scaling_status(report: ScalingReport) -> dict[str, Any]:
    out = {
        "engine": report.engine,
        "currentReplicas": report.current,
        "desiredReplicas": report.desired,
        "lastDecision": report.last_decision,
        "lastDecisionTime": report.last_decision_time,
    }
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    selector: str
    spec: ModelDeploymentSpec | None = None
    invalid: InvalidSpec | None = None
    url: str | None = None
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    problems: Sequence[Problem] = ()  # judged by the operator (cluster facts, API errors)
    strategy: Strategy | None = None
    # spec.autoscaling set: the builtin engine's report, or None to read the HPA/ScaledObject
    scaling: ScalingReport | None = None
    hpa: Mapping[str, Any] | None = None
    scaled_object: Mapping[str, Any] | None = None
    # pod name -> the newest node autoscaler Event on it (nodewatch.py)
    node_events: Mapping[str, NodeScaleEvent] = field(default_factory=dict)
    # spec.warmCapacity's placeholder Deployment (ours), as the watch last saw it
    warm: Mapping[str, Any] | None = None
    # spec.auth's Secret (apikeys.trim_secret; None: none) and whether it exists
    api_key_secret: Mapping[str, Any] | None = None
    api_key_secret_found: bool = True
    # spec.gpu set: the serving pods' idle and energy figures (usagewatch.py); None: none yet
    usage: UsageReport | None = None


def _truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_NODES_RE = re.compile(r"^(\d+)/(\d+) nodes are available")
# The scheduler names a missing claim as `persistentvolumeclaim "x" not found`; an unbound
# one as `pod has unbound immediate PersistentVolumeClaims` (sometimes followed by an
# unrelated "not found", e.g. of a StorageClass), so "not found" alone decides nothing.
_PVC_MISSING_RE = re.compile(r'persistentvolumeclaim "[^"]*" not found', re.IGNORECASE)
_PVC_REASONS = (Reason.MODEL_PVC_NOT_FOUND, Reason.MODEL_PVC_NOT_BOUND)
# Pending for want of a node: what a node autoscaler can change (and speaks about).
_NODE_FIXABLE = (Reason.INSUFFICIENT_GPU, Reason.UNSCHEDULABLE)
_NODE_AUTOSCALER = (Reason.WAITING_FOR_NODE, Reason.NO_NODE_GROUP_FITS)


def _pending_problem(pod: Mapping[str, Any], spec: ModelDeploymentSpec | None) -> Problem | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") != "PodScheduled" or cond.get("status") != "False":
            continue
        message = str(cond.get("message") or "")
        if cond.get("reason") not in ("Unschedulable", None) and not message:
            return None
        if _PVC_MISSING_RE.search(message):
            return Problem(Reason.MODEL_PVC_NOT_FOUND, _truncate(message))
        if "unbound immediate persistentvolumeclaims" in message.lower():
            return Problem(Reason.MODEL_PVC_NOT_BOUND, _truncate(message))
        gpu = spec.gpu if spec else None
        if gpu is not None and f"Insufficient {gpu.resource}" in message:
            m = _NODES_RE.match(message)
            total = m.group(2) if m else "?"
            product = f" of product {'|'.join(gpu.products)}" if gpu.products else ""
            return Problem(
                Reason.INSUFFICIENT_GPU,
                _truncate(
                    f"0/{total} nodes have {gpu.quantity} free {gpu.resource}{product} "
                    f"(scheduler: {message})"
                ),
            )
        return Problem(Reason.UNSCHEDULABLE, _truncate(message or "pod cannot be scheduled"))
    return None


def _container_problem(pod: Mapping[str, Any]) -> Problem | None:
    status = pod.get("status") or {}
    groups = (
        (status.get("initContainerStatuses") or [], True),
        (status.get("containerStatuses") or [], False),
    )
    for statuses, is_init in groups:
        for cs in statuses:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return Problem(
                    Reason.IMAGE_PULL_FAILED,
                    _truncate(
                        f"{cs.get('name')}: {waiting.get('message') or waiting.get('reason')}"
                    ),
                )
            terminated = state.get("terminated") or {}
            last = (cs.get("lastState") or {}).get("terminated") or {}
            crashed = waiting.get("reason") == "CrashLoopBackOff" or (
                terminated and terminated.get("exitCode", 0) != 0
            )
            if not crashed:
                continue
            info = terminated if terminated.get("exitCode") else last
            detail = str(info.get("message") or "").strip() or (
                f"exit code {info.get('exitCode', '?')} ({info.get('reason') or 'Error'})"
            )
            fetch = is_init or cs.get("name") == FETCH_CONTAINER
            reason = Reason.MODEL_FETCH_FAILED if fetch else Reason.MODEL_LOAD_FAILED
            what = "model fetch failed" if fetch else "model server exited"
            restarts = cs.get("restartCount", 0)
            return Problem(
                reason,
                _truncate(f"{what} ({cs.get('name') or CONTAINER}, {restarts} restarts): {detail}"),
            )
    return None


def diagnose_pods(
    pods: Sequence[Mapping[str, Any]],
    spec: ModelDeploymentSpec | None,
    node_events: Mapping[str, NodeScaleEvent] | None = None,
) -> list[Problem]:
    """One problem per distinct reason, from pods that are not being deleted."""
    found: dict[str, Problem] = {}
    counts: dict[str, int] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        phase = (pod.get("status") or {}).get("phase")
        problem = _container_problem(pod)
        if problem is None and phase == "Pending":
            problem = _pending_problem(pod, spec)
            said = (node_events or {}).get(str(meta.get("name")))
            if said is not None and problem is not None and problem.reason in _NODE_FIXABLE:
                # The scheduler found no node; the node autoscaler says what it does about it.
                problem = Problem(
                    Reason.WAITING_FOR_NODE
                    if said.outcome == WAITING
                    else Reason.NO_NODE_GROUP_FITS,
                    _truncate(f"{said.describe()} (scheduler: {problem.message})"),
                )
        if problem is not None:
            found.setdefault(problem.reason, problem)
            counts[problem.reason] = counts.get(problem.reason, 0) + 1
    out = []
    for reason, problem in found.items():
        n = counts[reason]
        prefix = f"{n} pods: " if n > 1 else ""
        out.append(Problem(reason, _truncate(prefix + problem.message)))
    return out


def _sort_problems(problems: Sequence[Problem]) -> list[Problem]:
    def key(p: Problem) -> int:
        return _SEVERITY.index(p.reason) if p.reason in _SEVERITY else len(_SEVERITY)

    return sorted(problems, key=key)


def _cond(
    type_: str, status: bool | str, reason: str, message: str, generation: int
) -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": _truncate(message),
        "observedGeneration": generation,
    }


def _deployment_numbers(dep: Mapping[str, Any] | None) -> dict[str, int]:
    st = (dep or {}).get("status") or {}
    return {
        k: int(st.get(k) or 0)
        for k in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")
    }


def _deadline_exceeded(dep: Mapping[str, Any] | None) -> str | None:
    for cond in ((dep or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return str(cond.get("message") or "rollout made no progress")
    return None


_PRIORITY_RE = re.compile(r"no PriorityClass with name (\S+) was found")


def _replica_failure(
    dep: Mapping[str, Any] | None, spec: ModelDeploymentSpec | None
) -> Problem | None:
    """The ReplicaSet cannot create pods (the Deployment's ReplicaFailure condition): a
    missing PriorityClass, a quota, an admission policy. Pods never appear, so nothing
    else would say why."""
    for cond in ((dep or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") != "ReplicaFailure" or cond.get("status") != "True":
            continue
        message = str(cond.get("message") or cond.get("reason") or "pods cannot be created")
        m = _PRIORITY_RE.search(message)
        if m:
            asked = spec.scheduling.priority_class_name if spec else None
            return Problem(
                Reason.PRIORITY_CLASS_NOT_FOUND,
                _truncate(
                    f"spec.scheduling.priorityClassName {asked or m.group(1)!r}: no PriorityClass "
                    f"with that name exists, so no pod can be created ({message})"
                ),
            )
        return Problem(
            Reason.POD_CREATION_FAILED, _truncate(f"the ReplicaSet cannot create pods: {message}")
        )
    return None


def _warm_status(obs: Observed) -> tuple[dict[str, Any] | None, Problem | None]:
    """status.warmCapacity, and a problem when its pods cannot even be created (a missing
    PriorityClass): room that will never be held, which waiting does not fix."""
    wanted = obs.spec.warm_capacity if obs.spec is not None else None
    if wanted is None:
        return None, None
    dep = obs.warm
    st = (dep or {}).get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    # message None: a merge patch's null, so a message that no longer holds goes
    out: dict[str, Any] = {"replicas": wanted.replicas, "readyReplicas": ready, "message": None}
    problem = None
    failure = next(
        (
            c
            for c in st.get("conditions") or []
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
        ),
        None,
    )
    if dep is None:
        out["message"] = "waiting for the placeholder Deployment to be created"
    elif failure is not None:
        why = str(failure.get("message") or failure.get("reason") or "pods cannot be created")
        out["message"] = _truncate(f"placeholder pods cannot be created: {why}")
        problem = Problem(Reason.WARM_CAPACITY_UNAVAILABLE, out["message"])
    elif ready < wanted.replicas:
        out["message"] = (
            f"{wanted.replicas - ready} of {wanted.replicas} placeholder pods hold no room yet "
            "(pending: a node autoscaler may be bringing a node up)"
        )
    return out, problem


def _scaling_report(obs: Observed) -> ScalingReport | None:
    auto = obs.spec.autoscaling if obs.spec is not None else None
    if auto is None:
        return None
    if auto.engine == "hpa":
        return scaling_from_hpa(obs.hpa)
    if auto.engine == "keda":
        return scaling_from_keda(obs.scaled_object)
    return obs.scaling or ScalingReport(
        "builtin", None, Reason.WAITING_FOR_AUTOSCALER, "the builtin autoscaler has not run yet"
    )


def compute_status(
    obs: Observed, previous: Mapping[str, Any] | None, now: str
) -> tuple[dict[str, Any], list[Transition]]:
    """The new .status and the condition transitions (for Events)."""
    previous = previous or {}
    spec = obs.spec
    dep = obs.deployment
    nums = _deployment_numbers(dep)
    dep_spec = (dep or {}).get("spec") or {}
    desired = spec.desired_replicas() if spec is not None else int(dep_spec.get("replicas") or 0)
    dep_current = dep is not None and int(
        ((dep.get("status") or {}).get("observedGeneration")) or 0
    ) >= int((dep.get("metadata") or {}).get("generation") or 0)
    from_pods = diagnose_pods(obs.pods, spec, obs.node_events)
    judged = list(obs.problems)
    if any(p.reason in _NODE_AUTOSCALER for p in from_pods):
        # A node autoscaler acts on the pending pods: that no node offers the GPU today (the
        # operator's view of the nodes there are) is no longer the news.
        judged = [p for p in judged if p.reason != Reason.GPU_PRODUCT_UNAVAILABLE]
    if any(p.reason == Reason.WAITING_FOR_NODE for p in from_pods):
        # pods without an Event yet wait for the same node group
        from_pods = [p for p in from_pods if p.reason not in _NODE_FIXABLE]
    if any(p.reason in _PVC_REASONS for p in obs.problems):
        # The operator looked at the claim itself; the scheduler's words about it are stale
        # or vaguer.
        from_pods = [p for p in from_pods if p.reason not in _PVC_REASONS]
    problems = judged + from_pods
    failure = _replica_failure(dep, spec)
    if failure is not None:
        problems.append(failure)
    deadline = _deadline_exceeded(dep)
    if deadline:
        problems.append(Problem(Reason.PROGRESS_DEADLINE_EXCEEDED, deadline))
    problems = _sort_problems(problems)
    gen = obs.generation
    scaling = _scaling_report(obs)
    ready, avail, updated, total = (
        nums["readyReplicas"],
        nums["availableReplicas"],
        nums["updatedReplicas"],
        nums["replicas"],
    )
    settled = (
        dep is not None
        and dep_current
        and updated >= desired
        and ready >= desired
        and total <= desired
    )
    strategy_text = (
        f"{obs.strategy.describe()}: {obs.strategy.reason}"
        if obs.strategy
        else previous.get("rolloutStrategy")
    )

    # Ready
    if obs.invalid is not None:
        ready_c = _cond(READY, False, Reason.INVALID_SPEC, str(obs.invalid), gen)
    elif problems:
        ready_c = _cond(READY, False, problems[0].reason, problems[0].message, gen)
    elif desired == 0 and scaling is not None and scaling.reason == Reason.SCALED_TO_ZERO:
        # Scale to zero behind the activator: callers are answered (after a cold start).
        ready_c = _cond(READY, True, Reason.SCALED_TO_ZERO, scaling.message, gen)
    elif desired == 0:
        ready_c = _cond(READY, False, Reason.SCALED_TO_ZERO, "spec.replicas is 0", gen)
    elif dep is None:
        ready_c = _cond(
            READY,
            False,
            Reason.WAITING_FOR_DEPLOYMENT,
            "waiting for the Deployment to be created",
            gen,
        )
    elif settled:
        ready_c = _cond(
            READY,
            True,
            Reason.ALL_READY,
            f"{ready}/{desired} replicas ready"
            + (f"; autoscaling cannot act: {scaling.reason}: {scaling.message}"
               if scaling is not None and scaling.active is False else ""),
            gen,
        )  # fmt: skip
    elif not dep_current or updated < desired or total > desired:
        ready_c = _cond(
            READY,
            False,
            Reason.ROLLOUT_IN_PROGRESS,
            f"{updated}/{desired} replicas updated, {ready} ready, {total} total"
            + (f"; {strategy_text}" if strategy_text else ""),
            gen,
        )
    else:
        ready_c = _cond(
            READY,
            False,
            Reason.REPLICAS_NOT_READY,
            f"{ready}/{desired} replicas ready (waiting for model load)",
            gen,
        )

    # Available: is anything serving?
    if desired == 0 and avail == 0:
        avail_c = _cond(AVAILABLE, False, Reason.SCALED_TO_ZERO, "no replicas requested", gen)
    elif avail >= 1:
        avail_c = _cond(
            AVAILABLE, True, Reason.MIN_AVAILABLE, f"{avail}/{desired} replicas available", gen
        )
    else:
        avail_c = _cond(
            AVAILABLE, False, Reason.NO_REPLICAS_AVAILABLE, f"0/{desired} replicas available", gen
        )

    # Progressing: is a rollout or scale change under way?
    if obs.invalid is not None:
        prog_c = _cond(
            PROGRESSING, False, Reason.INVALID_SPEC, "not rolling out an invalid spec", gen
        )
    elif deadline:
        prog_c = _cond(PROGRESSING, False, Reason.PROGRESS_DEADLINE_EXCEEDED, deadline, gen)
    elif (
        dep is not None
        and dep_current
        and updated >= desired
        and total <= desired
        and (ready >= desired)
    ):
        prog_c = _cond(
            PROGRESSING,
            False,
            Reason.ROLLOUT_COMPLETE,
            f"{updated}/{desired} replicas run the current spec",
            gen,
        )
    else:
        prog_c = _cond(
            PROGRESSING,
            True,
            Reason.ROLLOUT_IN_PROGRESS,
            f"{updated}/{desired} updated, {ready} ready"
            + (f"; {strategy_text}" if strategy_text else ""),
            gen,
        )

    # Degraded: something is wrong that will not fix itself by waiting a little (a node on
    # its way will).
    warm, warm_problem = _warm_status(obs)
    wrong = [p for p in problems if p.reason != Reason.WAITING_FOR_NODE]
    if warm_problem is not None:
        wrong.append(warm_problem)  # serving is not affected: Degraded, not Ready
    auth = spec.auth if spec is not None else None
    auth_st = auth_status(auth, obs.api_key_secret, obs.api_key_secret_found)
    if auth is not None and obs.api_key_secret_found:
        trouble = secret_message(auth, obs.api_key_secret)
        if trouble:  # the other keys still work: Degraded, not Ready
            wrong.append(Problem(Reason.API_KEY_SECRET_INVALID, _truncate(trouble)))
    if obs.invalid is not None:
        deg_c = _cond(DEGRADED, True, Reason.INVALID_SPEC, str(obs.invalid), gen)
    elif wrong:
        deg_c = _cond(
            DEGRADED,
            True,
            wrong[0].reason,
            "; ".join(f"{p.reason}: {p.message}" for p in wrong),
            gen,
        )
    else:
        deg_c = _cond(DEGRADED, False, Reason.AS_EXPECTED, "", gen)

    computed = [ready_c, avail_c, prog_c, deg_c]
    if scaling is not None:
        active = "Unknown" if scaling.active is None else scaling.active
        computed.append(_cond(SCALING_ACTIVE, active, scaling.reason, scaling.message, gen))
    prev_conds = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = []
    transitions = []
    for cond in computed:
        old = prev_conds.get(cond["type"])
        if old is not None and old.get("status") == cond["status"]:
            cond["lastTransitionTime"] = old.get("lastTransitionTime") or now
        else:
            cond["lastTransitionTime"] = now
        # Events only for what a reader of `kubectl describe` needs: Ready changes, and
        # Degraded turning True (or recovering); Available/Progressing are in the status.
        changed = (
            old is None
            or old.get("status") != cond["status"]
            or (old.get("reason") != cond["reason"])
        )
        # Ready turning True, a problem, or losing readiness; not the "not ready yet" steps
        # of a rollout (at 1000 creates those would be thousands of Events).
        was_ready = old is not None and old.get("status") == "True"
        worth = (
            (
                cond["type"] == READY
                and (
                    was_ready
                    or cond["status"] == "True"
                    or cond["reason"] in _SEVERITY
                    or cond["reason"] == Reason.INVALID_SPEC
                )
            )
            or (
                cond["type"] == DEGRADED
                and (cond["status"] == "True" or (old is not None and old.get("status") == "True"))
            )
            or (cond["type"] == SCALING_ACTIVE and cond["status"] != "Unknown")
        )
        if changed and worth:
            transitions.append(
                Transition(cond["type"], cond["status"], cond["reason"], cond["message"])
            )
        conditions.append(cond)

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conditions,
        "replicas": total,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "availableReplicas": avail,
        "selector": obs.selector,
        "rolloutStrategy": strategy_text,
    }
    if spec is not None:
        status["url"] = obs.url
        status["model"] = {
            "name": spec.model.name,
            "version": spec.model.version,
            "digest": spec.model.digest,
        }
        if scaling is not None:
            status["autoscaling"] = _scaling_status(scaling)
        if warm is not None:
            status["warmCapacity"] = warm
        elif "warmCapacity" in previous:
            status["warmCapacity"] = None  # a merge patch's null: removed with the spec
        if auth_st is not None:
            status["auth"] = auth_st
        elif "auth" in previous:
            status["auth"] = None
        usage = usage_status(obs.usage, previous.get("usage")) if spec.gpu is not None else None
        if usage is not None:
            status["usage"] = usage
        elif "usage" in previous:
            status["usage"] = None
        status["summary"] = {
            "replicas": f"{ready}/{desired}",
            "gpu": spec.gpu.summary() if spec.gpu else "none",
            "model": f"{spec.model.name}:{spec.model.version}",
        }
    else:
        # Keep describing what still runs: the Deployment keeps the last valid spec.
        for key in ("url", "model", "summary"):
            if key in previous:
                status[key] = previous[key]
    return status, transitions


def _strip_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def status_changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything (keys we do not own are ignored)."""
    prev = _strip_none(dict(previous or {}))
    return any(prev.get(k) != _strip_none(v) for k, v in new.items())
