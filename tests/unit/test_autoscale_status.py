"""ScalingActive and status.autoscaling: what each engine says, told truthfully."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.render.deployment import Strategy
from modelfleet_operator.spec import parse_spec
from modelfleet_operator.status import (
    SCALING_ACTIVE,
    Observed,
    Reason,
    ScalingReport,
    compute_status,
    scaling_from_hpa,
    scaling_from_keda,
)
from operator_samples import md

NOW = "2026-01-01T00:00:00Z"
DEP = {
    "metadata": {"generation": 1},
    "spec": {"replicas": 2},
    "status": {
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
        "observedGeneration": 1,
    },
}


def spec(**auto: Any) -> Any:
    a = {"minReplicas": 2, "maxReplicas": 6, "target": 4, **auto}
    return parse_spec(md({"autoscaling": a})["spec"], name="resnet")


def status_of(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "generation": 1,
        "selector": "a=b",
        "spec": spec(),
        "deployment": DEP,
        "strategy": Strategy("RollingUpdate", 1, 0, "spare GPU"),
    }
    base.update(kw)
    status, _ = compute_status(Observed(**base), {}, NOW)
    return status


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status["conditions"] if c["type"] == type_), {})


NO_ADAPTER_HPA = {
    "status": {
        "currentReplicas": 2,
        "desiredReplicas": 2,
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale",
             "message": "the HPA controller was able to get the target's current scale"},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
             "message": "the HPA was unable to compute the replica count: unable to get metric "
             "modelfleet_inflight_requests: no custom metrics API (custom.metrics.k8s.io) "
             "registered"},
        ],
    }
}  # fmt: skip


def test_without_autoscaling_there_is_no_scaling_condition() -> None:
    status = status_of(spec=parse_spec(md()["spec"], name="resnet"))
    assert cond(status, SCALING_ACTIVE) == {} and "autoscaling" not in status


def test_builtin_report_becomes_the_condition_and_status_autoscaling() -> None:
    report = ScalingReport(
        "builtin", True, Reason.VALID_METRIC_FOUND, "the builtin autoscaler reads /metrics of 2",
        current=2, desired=5,
        last_decision="2 -> 5: 18 in flight (2 queued) over 2 ready at target 4, panic",
        last_decision_time=NOW,
    )  # fmt: skip
    status = status_of(scaling=report)
    c = cond(status, SCALING_ACTIVE)
    assert (c["status"], c["reason"]) == ("True", "ValidMetricFound")
    assert status["autoscaling"] == {
        "engine": "builtin",
        "currentReplicas": 2,
        "desiredReplicas": 5,
        "lastDecision": "2 -> 5: 18 in flight (2 queued) over 2 ready at target 4, panic",
        "lastDecisionTime": NOW,
    }


def test_builtin_before_its_first_tick_is_unknown() -> None:
    c = cond(status_of(), SCALING_ACTIVE)
    assert (c["status"], c["reason"]) == ("Unknown", Reason.WAITING_FOR_AUTOSCALER)


def test_an_hpa_without_its_metric_makes_scaling_inactive_and_ready_says_so() -> None:
    status = status_of(spec=spec(engine="hpa"), hpa=NO_ADAPTER_HPA)
    c = cond(status, SCALING_ACTIVE)
    assert (c["status"], c["reason"]) == ("False", "FailedGetPodsMetric")
    assert "no custom metrics API" in c["message"]
    ready = cond(status, "Ready")
    assert ready["status"] == "True"  # still serving
    assert "autoscaling cannot act: FailedGetPodsMetric" in ready["message"]
    assert status["autoscaling"]["engine"] == "hpa"


def test_an_hpa_that_cannot_get_the_scale_reports_able_to_scale() -> None:
    hpa = {"status": {"conditions": [
        {"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": "x"},
        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
    ]}}  # fmt: skip
    report = scaling_from_hpa(hpa)
    assert (report.active, report.reason) == (False, "FailedGetScale")


def test_a_working_hpa_and_one_not_reported_yet() -> None:
    hpa = {"status": {"currentReplicas": 3, "desiredReplicas": 4, "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound",
         "message": "the HPA was able to successfully calculate a replica count"},
    ]}}  # fmt: skip
    r = scaling_from_hpa(hpa)
    assert (r.active, r.reason, r.current, r.desired) == (True, "ValidMetricFound", 3, 4)
    assert scaling_from_hpa({"status": {}}).active is None
    assert scaling_from_hpa(None).reason == Reason.WAITING_FOR_AUTOSCALER


def test_keda_ready_false_makes_scaling_inactive() -> None:
    so = {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "ScaledObjectCheckFailed",
         "message": "failed to ensure HPA is correctly created for ScaledObject"},
        {"type": "Active", "status": "Unknown"},
    ]}}  # fmt: skip
    status = status_of(
        spec=spec(engine="keda", keda={"serverAddress": "http://p:9090"}), scaled_object=so
    )
    c = cond(status, SCALING_ACTIVE)
    assert (c["status"], c["reason"]) == ("False", "ScaledObjectCheckFailed")
    assert c["message"].startswith("KEDA: failed to ensure HPA")


def test_keda_ready_and_active() -> None:
    so = {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "ScaledObjectReady",
         "message": "ScaledObject is defined correctly and is ready for scaling"},
        {"type": "Active", "status": "True", "reason": "ScalerActive",
         "message": "Scaling is performed because triggers are active"},
    ]}}  # fmt: skip
    r = scaling_from_keda(so)
    assert (r.active, r.reason) == (True, "ScaledObjectReady")
    assert "triggers are active" in r.message
    assert scaling_from_keda({"status": {}}).active is None


def test_scaling_inactive_is_a_warning_event_once() -> None:
    obs = Observed(
        generation=1, selector="a=b", spec=spec(engine="hpa"), deployment=DEP, hpa=NO_ADAPTER_HPA
    )
    status, transitions = compute_status(obs, {}, NOW)
    t = [t for t in transitions if t.type == SCALING_ACTIVE]
    assert len(t) == 1 and t[0].event_type == "Warning"
    _, again = compute_status(obs, status, NOW)
    assert not [t for t in again if t.type == SCALING_ACTIVE]
