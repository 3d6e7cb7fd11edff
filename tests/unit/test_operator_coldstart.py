"""coldstart.startup_phases: a serving pod's start split by phase from its own timestamps."""

from __future__ import annotations

from typing import Any

from modelfleet_operator.coldstart import describe, ready_time, startup_phases


def pod(**times: str) -> dict[str, Any]:
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": times[k]}
        for t, k in (("PodScheduled", "scheduled"), ("Initialized", "init"), ("Ready", "ready"))
        if k in times
    ]
    statuses = []
    if "started" in times:
        statuses.append({"name": "runtime", "state": {"running": {"startedAt": times["started"]}}})
    return {
        "metadata": {"creationTimestamp": times.get("created", "2026-12-02T10:00:00Z")},
        "status": {"conditions": conditions, "containerStatuses": statuses},
    }


FULL = {
    "created": "2026-12-02T10:00:00Z",
    "scheduled": "2026-12-02T10:00:02Z",
    "init": "2026-12-02T10:00:32Z",
    "started": "2026-12-02T10:00:40Z",
    "ready": "2026-12-02T10:01:40Z",
}


def test_every_phase_from_the_pods_own_timestamps() -> None:
    phases = startup_phases(pod(**FULL))
    assert phases == {
        "total": 100.0,
        "node": 0.0,
        "scheduling": 2.0,
        "fetch": 30.0,
        "image": 8.0,
        "model_load": 60.0,
    }
    assert describe(phases) == (
        "node 0s, scheduling 2s, fetch 30s, image 8s, model load 60s, total 100s"
    )


def test_a_node_newer_than_the_pod_is_time_spent_waiting_for_it() -> None:
    node = {"metadata": {"creationTimestamp": "2026-12-02T09:59:59Z"}}
    assert startup_phases(pod(**FULL), node)["node"] == 0.0  # type: ignore[index]
    new_node = {"metadata": {"creationTimestamp": "2026-12-02T10:00:01Z"}}
    phases = startup_phases(pod(**FULL), new_node)
    assert phases is not None
    assert (phases["node"], phases["scheduling"]) == (1.0, 1.0)


def test_a_pod_not_ready_has_no_phases_and_missing_marks_are_left_out() -> None:
    assert startup_phases(pod(created=FULL["created"], scheduled=FULL["scheduled"])) is None
    assert ready_time(pod(**FULL)) is not None
    partial = startup_phases(pod(created=FULL["created"], ready=FULL["ready"]))
    assert partial == {"total": 100.0, "node": 0.0}
    garbage = pod(**FULL)
    garbage["metadata"]["creationTimestamp"] = "yesterday"
    assert startup_phases(garbage) is None
    # Clock skew between kubelet and API server never makes a negative phase.
    skewed = startup_phases(pod(**{**FULL, "started": "2026-12-02T10:00:30Z"}))
    assert skewed is not None and skewed["image"] == 0.0
