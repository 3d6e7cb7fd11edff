"""spec.auth on the real control plane: the Secret is mounted into the serving pods, status
shows the key ids (never a hash), the running pods are told of each new Secret revision
within seconds, and a missing or faulty Secret is named in status. The kubelet's side (the
volume rewritten, the runtime taking the keys) is tests/e2e/test_real_node_api_keys.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import KubeCluster, wait_for
from modelfleet_runtime.auth import hash_key
from operator_support import (
    OperatorProcess,
    apply_as_user,
    cond,
    get,
    manifest,
    pods_of,
    running_operator,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REVISION = "modelfleet.io/api-keys-revision"
LABEL = "modelfleet.io/api-keys"


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kube_cluster, log, 600) as proc:
        yield proc


def put_secret(k: KubeCluster, namespace: str, name: str, data: dict[str, str],
               labelled: bool = True) -> str:  # fmt: skip
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {LABEL: "true"} if labelled else {}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    k.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(body))
    out = k.kubectl_json("-n", namespace, "get", "secret", name)
    return str(out["metadata"]["resourceVersion"])


def auth_status(k: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(((get(k, namespace, "mdep", name) or {}).get("status") or {}).get("auth") or {})


def running(k: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return [p for p in pods_of(k, namespace, name)
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def told(pods: list[dict[str, Any]]) -> set[str | None]:
    return {(p["metadata"].get("annotations") or {}).get(REVISION) for p in pods}


def test_pods_are_told_of_each_secret_revision_and_status_shows_ids(
    kube_cluster: KubeCluster, operator: OperatorProcess, namespace: str
) -> None:
    k = kube_cluster
    rv = put_secret(k, namespace, "keys", {"alice": hash_key("mf_alice_x")})
    spec = {
        "replicas": 2,
        "auth": {"apiKeys": {"secretName": "keys"}, "limits": {"requestsPerSecond": 50}},
    }
    apply_as_user(k, namespace, manifest("secured", spec))
    wait_condition(k, namespace, "secured", "Ready", "True", timeout=120)

    dep = k.kubectl_json("-n", namespace, "get", "deployment", "secured")
    pod_spec = dep["spec"]["template"]["spec"]
    args = pod_spec["containers"][0]["args"]
    assert args[args.index("--api-keys") + 1] == "/etc/modelfleet/api-keys"
    assert args[args.index("--key-rate") + 1] == "50"
    assert {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o444}} in (
        pod_spec["volumes"])  # fmt: skip
    assert REVISION not in (dep["spec"]["template"]["metadata"].get("annotations") or {})

    wait_for(lambda: auth_status(k, namespace, "secured").get("keyIds") == ["alice"],
             timeout=30, what="status.auth lists the key id")  # fmt: skip
    # the pods that were already running when they were created get the revision too
    wait_for(lambda: told(running(k, namespace, "secured")) == {rv}, timeout=30,
             what="pods told")  # fmt: skip

    # rotation: a new revision reaches every running pod's annotation within seconds
    template_hash = dep["spec"]["template"]["metadata"]["labels"].get("pod-template-hash")
    names = {p["metadata"]["name"] for p in running(k, namespace, "secured")}
    started = time.monotonic()
    rv2 = put_secret(k, namespace, "keys", {"alice": hash_key("mf_alice_y"),
                                             "bob": hash_key("mf_bob_z")})  # fmt: skip
    wait_for(lambda: told(running(k, namespace, "secured")) == {rv2}, timeout=15,
             what="pods told again", interval=0.1)  # fmt: skip
    took = time.monotonic() - started
    assert took < 10, took
    # without a restart: the same pods, the same template
    assert {p["metadata"]["name"] for p in running(k, namespace, "secured")} == names
    dep2 = k.kubectl_json("-n", namespace, "get", "deployment", "secured")
    assert dep2["metadata"]["generation"] == dep["metadata"]["generation"]
    assert dep2["spec"]["template"]["metadata"]["labels"].get("pod-template-hash") == (
        template_hash)  # fmt: skip
    wait_for(lambda: auth_status(k, namespace, "secured").get("keyIds") == ["alice", "bob"],
             timeout=30, what="status.auth follows")  # fmt: skip

    # a plaintext key in the Secret: Degraded names the entry, never the value
    put_secret(k, namespace, "keys", {"alice": hash_key("mf_alice_y"), "carol": "mf_carol_secret"})
    md = wait_condition(k, namespace, "secured", "Degraded", "True", "APIKeySecretInvalid",
                        timeout=30)  # fmt: skip
    assert "'carol' holds a plaintext key" in cond(md, "Degraded")["message"]
    assert cond(md, "Ready")["status"] == "True"  # alice still works
    text = json.dumps(md) + k.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    assert "mf_carol_secret" not in text and hash_key("mf_alice_y") not in text
    assert "mf_carol_secret" not in operator.log_path.read_text()


def test_a_missing_or_unlabelled_secret_is_named_in_status(
    kube_cluster: KubeCluster, operator: OperatorProcess, namespace: str
) -> None:
    k = kube_cluster
    apply_as_user(k, namespace, manifest("nokeys", {"auth": {"apiKeys": {"secretName": "absent"}}}))
    md = wait_condition(k, namespace, "nokeys", "Ready", "False", "APIKeySecretNotFound",
                        timeout=60)  # fmt: skip
    assert "absent" in cond(md, "Ready")["message"]
    assert "mint-key" in cond(md, "Ready")["message"]

    # unlabelled: found with a GET, works, but Degraded says why rotation will be slow
    put_secret(k, namespace, "absent", {"alice": hash_key("mf_alice_q")}, labelled=False)
    # a Secret the watch does not see brings no event: the next reconcile (a pod event,
    # the resync) finds it; nudge one with a spec change
    k.kubectl("-n", namespace, "patch", "mdep", "nokeys", "--type", "merge", "-p",
              json.dumps({"spec": {"replicas": 2}}))  # fmt: skip
    md = wait_condition(k, namespace, "nokeys", "Degraded", "True", "APIKeySecretInvalid",
                        timeout=60)  # fmt: skip
    assert "not labelled" in cond(md, "Degraded")["message"]
    wait_condition(k, namespace, "nokeys", "Ready", "True", timeout=120)

    # labelled now: the watch sees it, Degraded clears without any other event
    k.kubectl("-n", namespace, "label", "secret", "absent", f"{LABEL}=true")
    wait_condition(k, namespace, "nokeys", "Degraded", "False", timeout=30)
    assert auth_status(k, namespace, "nokeys")["keyIds"] == ["alice"]

    # deleted: named again
    k.kubectl("-n", namespace, "delete", "secret", "absent")
    wait_condition(k, namespace, "nokeys", "Ready", "False", "APIKeySecretNotFound", timeout=30)
