"""Scale to zero on the real node: the helm-installed activator holds callers of the Service
while the ModelDeployment has no replica, the operator brings one up on the held demand, the
held requests are answered by it (none lost under the cap; 503 + Retry-After above it, at
once), the activator leaves the path, and the idle ModelDeployment goes back to zero and
starts again from there.

Callers use the Service's ClusterIP through the node's kube-proxy, as in-cluster clients do:
the activator's EndpointSlice (the operator's) and the Service's own are both its endpoints.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import time
from typing import Any

from conftest import OPERATOR_NS, operator_pod
from e2e_support import Kube, condition, wait_for
from test_real_node import apply_in, describe, service_ip, serving_pods
from test_real_node_autoscaling import NAME, PORT, X, autoscaled, loadavg, slow_model

__all__ = ["slow_model"]  # the fixture, shared with the autoscaling test

CAP = 3
ASKED = 6
DOWN_WINDOW_S = 10


def to_zero(uri: str) -> dict[str, Any]:
    doc = autoscaled(uri)
    auto = doc["spec"]["autoscaling"]
    auto.update(minReplicas=0, maxReplicas=1, scaleDownStabilizationSeconds=DOWN_WINDOW_S)
    auto["scaleToZero"] = {"maxHeldRequests": CAP, "holdTimeoutSeconds": 600}
    doc["spec"]["replicas"] = 0  # start at zero (else one replica until a stable window)
    return doc


def post(ip: str, timeout: float = 600) -> tuple[int, dict[str, str], bytes, float]:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": X}]})
    started = time.monotonic()
    conn = http.client.HTTPConnection(ip, PORT, timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{NAME}/infer", body,
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, dict(resp.headers), data, time.monotonic() - started


def at_zero(kube: Kube, ns: str, timeout: float) -> dict[str, Any]:
    def zero() -> dict[str, Any] | None:
        md = kube.get("mdep", NAME, "-n", ns)
        ready = condition(md, "Ready")
        if md["spec"].get("replicas") != 0 or (ready.get("status"), ready.get("reason")) != (
            "True",
            "ScaledToZero",
        ):
            return None
        if serving_pods(kube, ns, NAME):
            return None
        return md if activator_listed(kube, ns) else None

    return wait_for(f"{ns}/{NAME} at zero, the activator in its Service", zero,
                    timeout=timeout, describe=lambda: describe(kube, ns))  # fmt: skip


def activator_listed(kube: Kube, ns: str) -> bool:
    sl = kube.get("endpointslice", NAME, "-n", ns)
    return bool(sl.get("endpoints"))


def startup_phases(kube: Kube) -> dict[str, float]:
    """The operator's modelfleet_pod_startup_seconds sums, by phase."""
    ip = operator_pod(kube)["status"]["podIP"]
    conn = http.client.HTTPConnection(ip, 9090, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modelfleet_pod_startup_seconds_sum{"):
            phase = line.split('phase="', 1)[1].split('"', 1)[0]
            out[phase] = float(line.rsplit(" ", 1)[1])
    return out


def held_now(kube: Kube, ns: str) -> float:
    pods = kube.get("pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=activator")
    total = 0.0
    for pod in pods["items"]:
        conn = http.client.HTTPConnection(pod["status"]["podIP"], 9090, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if (
                line.startswith("modelfleet_activator_held_requests{")
                and f'namespace="{ns}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_scale_to_zero_holds_callers_through_the_cold_start_and_back(
    operator: Kube, ns: str, slow_model: str
) -> None:
    apply_in(operator, ns, to_zero(slow_model))
    md = at_zero(operator, ns, timeout=180)
    assert "activator" in condition(md, "Ready")["message"]
    ip = service_ip(operator, ns, NAME)

    # 1. cold start: CAP requests held and answered, the rest refused at once
    before = startup_phases(operator)
    with concurrent.futures.ThreadPoolExecutor(ASKED) as pool:
        answers = list(pool.map(lambda _: post(ip), range(ASKED)))
    codes = sorted(a[0] for a in answers)
    assert codes == [200] * CAP + [503] * (ASKED - CAP), [(a[0], a[2][:200]) for a in answers]
    for code, headers, data, took in answers:
        if code == 200:
            assert json.loads(data)["outputs"][0]["data"] == [2 * v for v in X]
        else:
            assert int(headers["Retry-After"]) >= 1
            assert f"max-held-requests {CAP}" in json.loads(data)["error"]
            assert took < 10, f"a request above the cap waited {took:.1f}s for its 503"
    cold_s = max(a[3] for a in answers if a[0] == 200)

    assert operator.get("mdep", NAME, "-n", ns)["spec"]["replicas"] == 1
    # 2. serving: the activator leaves the path, callers reach the replica directly
    wait_for("the activator slice to empty", lambda: not activator_listed(operator, ns) or None,
             timeout=60, describe=lambda: describe(operator, ns))  # fmt: skip
    status, _, _, warm_s = post(ip, timeout=30)
    assert status == 200
    assert held_now(operator, ns) == 0
    phases = {k: v - before.get(k, 0.0) for k, v in startup_phases(operator).items()}

    # 3. idle: back to zero after the stable window (60 s) and the scale-down window
    idle_from = time.monotonic()
    at_zero(operator, ns, timeout=60 + DOWN_WINDOW_S + 120)
    to_zero_s = time.monotonic() - idle_from

    # 4. and up again from zero, one caller
    status, _, data, again_s = post(ip)
    assert status == 200, data[:300]
    print(
        f"\n[e2e] scale to zero (0.3 s/request model, cap {CAP}): {CAP} held requests answered "
        f"after {cold_s:.1f}s (first cold start), {ASKED - CAP} refused 503 at once; "
        f"warm request {warm_s * 1000:.0f} ms; back to zero {to_zero_s:.0f}s after the last "
        f"request; second cold start {again_s:.1f}s; pod start phases (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(phases.items()))
        + f"; loadavg {loadavg()}"
    )
