"""spec.auth on a real kubelet: the Secret mounted, every route but the probes refused
without a key through the Service, /metrics only on the metrics port, and a rotated key
taking effect in the running pod within seconds (the operator's annotation makes the
kubelet rewrite the volume) with no restart; no key material in logs, status or events."""

from __future__ import annotations

import base64
import http.client
import json
import time
from typing import Any

from conftest import S3, Model
from e2e_support import Kube, wait_for
from modelfleet_runtime.auth import hash_key, mint
from test_real_node import FEATURES, apply_in, mdep, service_ip, serving_pods, wait_ready

LABEL = "modelfleet.io/api-keys"


def secret(keys: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "iris-keys", "labels": {LABEL: "true"}},
        # data, as mint-key writes it: an entry left out of the next apply is removed
        "data": {k: base64.b64encode(hash_key(v).encode()).decode() for k, v in keys.items()},
    }  # fmt: skip


def call(host: str, port: int, method: str, path: str, *, key: str | None = None,
         body: bytes | None = None) -> int:  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_api_keys_rotate_in_seconds_without_a_restart(
    operator: Kube, ns: str, s3: S3, models: dict[str, Model]
) -> None:
    v1 = models["v1"]
    old, bob = mint("alice")[0], mint("bob")[0]
    apply_in(operator, ns, secret({"alice": old}))
    doc = mdep("iris", s3.uri(v1.name), v1.digest)
    doc["spec"]["auth"] = {"apiKeys": {"secretName": "iris-keys"},
                           "limits": {"requestsPerSecond": 100}}  # fmt: skip
    apply_in(operator, ns, doc)
    obj = wait_ready(operator, ns, "iris")
    assert obj["status"]["auth"]["keyIds"] == ["alice"]
    ip = service_ip(operator, ns, "iris")
    infer = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                                    "data": FEATURES}]}).encode()  # fmt: skip
    path = "/v2/models/iris/infer"
    assert call(ip, 8080, "POST", path, body=infer) == 401
    assert call(ip, 8080, "POST", path, key=bob, body=infer) == 401
    assert call(ip, 8080, "POST", path, key=old, body=infer) == 200
    assert call(ip, 8080, "GET", "/v2/models/iris") == 401
    assert call(ip, 8080, "GET", "/v2/health/ready") == 200
    assert call(ip, 8080, "GET", "/metrics", key=old) == 404
    (pod,) = serving_pods(operator, ns, "iris")
    pod_ip = pod["status"]["podIP"]
    assert call(pod_ip, 9091, "GET", "/metrics") == 200
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9091"

    # rotate alice, add bob: the old key stops, the new ones work, in the same pod
    new = mint("alice")[0]
    started = time.monotonic()
    apply_in(operator, ns, secret({"alice": new, "bob": bob}))

    def rotated() -> bool:
        return (call(ip, 8080, "POST", path, key=old, body=infer) == 401
                and call(ip, 8080, "POST", path, key=new, body=infer) == 200)  # fmt: skip

    wait_for("the rotated key in the running pod", rotated, timeout=30, interval=0.2)
    took = time.monotonic() - started
    print(f"\n[e2e] API key rotation: Secret applied -> old key refused, new served in "
          f"{took:.1f}s")  # fmt: skip
    assert took < 10, took
    assert call(ip, 8080, "POST", path, key=bob, body=infer) == 200
    (after,) = serving_pods(operator, ns, "iris")
    assert after["metadata"]["name"] == pod["metadata"]["name"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0

    # revoke bob
    apply_in(operator, ns, secret({"alice": new}))
    wait_for("bob revoked", lambda: call(ip, 8080, "POST", path, key=bob, body=infer) == 401,
             timeout=30, interval=0.2)  # fmt: skip

    logs = operator.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "runtime")
    assert "rotated ['alice']" in logs and "removed ['bob']" in logs
    seen = logs + json.dumps(operator.get("mdep", "iris", "-n", ns)) + operator.kubectl(
        "get", "events", "-n", ns, "-o", "json")  # fmt: skip
    for key in (old, new, bob):
        assert key not in seen and key.split("_", 2)[2] not in seen
