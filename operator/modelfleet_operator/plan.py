"""Facts in, what to do out (pure): the desired children, which of them to write, the rollout
strategy, and the problems only the operator can judge. Table-tested in
tests/unit/test_operator_plan.py; reconcile.py carries the plan out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .apikeys import missing_secret, pods_to_tell
from .capacity import gpu_capacity
from .diff import differences, list_paths
from .observe import CHILD_KINDS, OPTIONAL_KINDS, Facts, child_object, is_ours
from .render import Owner, RenderConfig, Strategy, child_kind, render_all
from .render.activator import render_activator_slice
from .render.deployment import (
    choose_strategy,
    existing_strategy,
    render_pod_template,
    template_hash,
)
from .render.service import service_url
from .spec import (
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPUSpec,
    InvalidSpec,
    ModelDeploymentSpec,
    parse_spec,
)
from .status import Problem, Reason, diagnose_pods

APPLY = "apply"  # server-side apply (creates the child when absent)
REPLACE = "replace"  # replace foreign-edited lists, then apply
DELETE = "delete"  # prune: ours, of a kind no longer wanted


@dataclass(frozen=True)
class Action:
    kind: str
    op: str
    desired: Mapping[str, Any] | None = None
    live: Mapping[str, Any] | None = None
    lists: tuple[str, ...] = ()  # JSON pointers of lists to replace whole (REPLACE)
    drift: tuple[str, ...] = ()  # what differs, for the log


@dataclass(frozen=True)
class Plan:
    owner: Owner
    spec: ModelDeploymentSpec | None = None
    invalid: InvalidSpec | None = None
    strategy: Strategy | None = None
    actions: tuple[Action, ...] = ()
    problems: tuple[Problem, ...] = ()
    url: str | None = None
    wanted: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # spec.auth: running pods to tell about a new revision of the key Secret (apikeys.py)
    tell_pods: tuple[str, ...] = ()


def plan(facts: Facts, config: RenderConfig) -> Plan:
    owner = Owner.from_body(facts.md)
    try:
        spec = parse_spec(facts.md.get("spec"), name=owner.name)
    except InvalidSpec as exc:
        return Plan(owner, invalid=exc, problems=tuple(_conflicts(facts, owner)))
    strategy = _strategy(owner, spec, facts, config)
    children = {child_kind(c): c for c in render_all(owner, spec, config, strategy)}
    if spec.autoscaling is not None and spec.autoscaling.to_zero and facts.activator is not None:
        children["EndpointSlice"] = render_activator_slice(
            owner, spec, facts.activator, serving=serving(spec, facts)
        )
    problems = _conflicts(facts, owner, set(children)) + judge(spec, facts)
    actions: list[Action] = []
    for kind in CHILD_KINDS:
        live = facts.children.get(kind)
        ours = live is not None and is_ours(live, owner.uid)
        if kind not in children:
            if ours:
                actions.append(Action(kind, DELETE, live=live))
            continue
        if live is not None and not ours:
            continue  # a stranger's: reported by _conflicts, never written
        desired = children[kind]
        if live is None:
            actions.append(Action(kind, APPLY, desired))
            continue
        diffs = differences(desired, live)
        if not diffs:
            continue
        lists = list_paths(desired, diffs)
        actions.append(
            Action(kind, REPLACE if lists else APPLY, desired, live, tuple(lists), tuple(diffs))
        )
    return Plan(
        owner,
        spec,
        strategy=strategy,
        actions=tuple(actions),
        problems=tuple(problems),
        url=service_url(owner, spec),
        wanted=children,
        tell_pods=tuple(pods_to_tell(facts.api_key_secret, facts.pods)) if spec.auth else (),
    )


def serving(spec: ModelDeploymentSpec, facts: Facts) -> bool:
    """Whether callers can reach a replica without the activator: one is ready (and not
    on its way out) and spec.replicas does not ask for none."""
    if spec.desired_replicas() == 0:
        return False
    for pod in facts.pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return True
    return False


def _conflicts(facts: Facts, owner: Owner, wanted: set[str] | None = None) -> list[Problem]:
    out = []
    for kind in CHILD_KINDS:
        live = facts.children.get(kind)
        if kind in OPTIONAL_KINDS and (wanted is None or kind not in wanted):
            continue  # e.g. someone's EndpointSlice named like us: only ours if we want one
        if live is not None and not is_ours(live, owner.uid):
            api_kind, name = child_object(kind, owner.name)
            out.append(
                Problem(
                    Reason.CHILD_CONFLICT,
                    (
                        f"{api_kind} {name} exists and is not controlled by this "
                        f"ModelDeployment; rename the ModelDeployment or delete that {api_kind}"
                    ),
                )
            )
    return out


def _strategy(
    owner: Owner, spec: ModelDeploymentSpec, facts: Facts, config: RenderConfig
) -> Strategy:
    """Kept per pod template (read back from the live Deployment); decided afresh for a new
    template from the GPUs free right now."""
    template = render_pod_template(owner, spec, config)
    live = facts.children.get("Deployment")
    if live is not None and not is_ours(live, owner.uid):
        live = None
    kept = existing_strategy(live, template_hash(template))
    replicas = spec.desired_replicas()
    if kept is None:
        return choose_strategy(spec, replicas, spare_pods(spec, facts))
    if _surge_stuck(spec, kept, facts.pods):
        # The free GPU seen when the rollout began is gone: stop waiting for a surge pod.
        return choose_strategy(spec, replicas, 0)
    return kept


def spare_pods(spec: ModelDeploymentSpec, facts: Facts) -> int | None:
    if spec.gpu is None or spec.rollout.strategy != "Auto":
        return None
    if facts.nodes is None or facts.gpu_pods is None:
        return None
    return gpu_capacity(facts.nodes, facts.gpu_pods, spec.gpu).spare_pods


def _surge_stuck(
    spec: ModelDeploymentSpec, strategy: Strategy, pods: Sequence[Mapping[str, Any]]
) -> bool:
    if (
        spec.rollout.strategy != "Auto"
        or spec.gpu is None
        or strategy.max_surge == 0
        or (strategy.type != "RollingUpdate")
    ):
        return False
    return any(p.reason == Reason.INSUFFICIENT_GPU for p in diagnose_pods(pods, spec))


def judge(spec: ModelDeploymentSpec, facts: Facts) -> list[Problem]:
    """What only the operator can tell: cluster facts the API server cannot validate."""
    out: list[Problem] = []
    if (
        spec.gpu is not None
        and facts.nodes is not None
        and gpu_capacity(facts.nodes, [], spec.gpu).offering == 0
    ):
        out.append(
            Problem(
                Reason.GPU_PRODUCT_UNAVAILABLE,
                (
                    f"no node offers {describe_gpu_request(spec.gpu)}; GPU nodes in the cluster: "
                    f"{describe_gpu_nodes(facts.nodes)}"
                ),
            )
        )
    claim = spec.model.pvc_claim
    if claim:
        namespace = (facts.md.get("metadata") or {}).get("namespace")
        phase = ((facts.pvc or {}).get("status") or {}).get("phase")
        if facts.pvc is None:
            out.append(
                Problem(
                    Reason.MODEL_PVC_NOT_FOUND,
                    (
                        f"PersistentVolumeClaim {claim!r} (from spec.model.uri) does not exist in "
                        f"namespace {namespace}"
                    ),
                )
            )
        elif phase != "Bound":
            out.append(
                Problem(
                    Reason.MODEL_PVC_NOT_BOUND,
                    (
                        f"PersistentVolumeClaim {claim!r} (from spec.model.uri) is "
                        f"{phase or 'not'} bound to a volume yet; pods wait until it is"
                    ),
                )
            )
    if spec.auth is not None and not facts.api_key_secret_found:
        namespace = str((facts.md.get("metadata") or {}).get("namespace"))
        out.append(Problem(Reason.API_KEY_SECRET_NOT_FOUND, missing_secret(spec.auth, namespace)))
    return out


def describe_gpu_request(gpu: GPUSpec) -> str:
    what = f"{gpu.quantity} {gpu.resource}"
    if gpu.mig:
        what += f" (spec.gpu.mig {gpu.mig})"
    if gpu.products:
        what += f" of product {'|'.join(gpu.products)}"
    if gpu.min_memory_mib:
        what += f" with at least {gpu.min_memory_mib} MiB ({GPU_MEMORY_LABEL})"
    return what


def describe_gpu_nodes(nodes: Sequence[Mapping[str, Any]]) -> str:
    seen: dict[str, int] = {}
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        alloc = (node.get("status") or {}).get("allocatable") or {}
        resources = sorted(
            k for k, v in alloc.items() if k.startswith("nvidia.com/") and str(v) not in ("0", "")
        )
        if not resources:
            continue
        text = labels.get(GPU_PRODUCT_LABEL, "unlabelled")
        if labels.get(GPU_MEMORY_LABEL):
            text += f" {labels[GPU_MEMORY_LABEL]} MiB"
        text += f" ({', '.join(resources)})"
        seen[text] = seen.get(text, 0) + 1
    return "; ".join(f"{n}x {t}" for t, n in sorted(seen.items())) or "none"
