"""The whole chain on a real node: helm install -> operator pod -> ModelDeployment -> init
container fetch from S3 -> runtime Ready through the rendered probes -> inference through the
Service, with the exact numbers torch computes on the host."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import OPERATOR_NS, RESTRICTED, S3, TOLERATE, Model, operator_pod
from e2e_support import REAL_NODE, E2EError, Kube, condition, infer_json, run, wait_for

FEATURES = [5.1, 3.5, 1.4, 0.2]
CTRD_SOCK = "/run/modelfleet-node/containerd/containerd.sock"  # hack/node/lib.sh


def mdep(name: str, uri: str, digest: str | None, version: str = "1",
         replicas: int = 1) -> dict[str, Any]:  # fmt: skip
    model: dict[str, Any] = {"uri": uri, "format": "torchscript", "name": "iris",
                             "version": version}  # fmt: skip
    if digest:
        model["digest"] = digest
    return {
        "apiVersion": "modelfleet.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": model, "replicas": replicas,
                 "runtime": {"device": "cpu", "resources": {"cpu": "500m", "memory": "1Gi"}},
                 "scheduling": {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                                "tolerations": [TOLERATE]}},
    }  # fmt: skip


def apply_in(kube: Kube, ns: str, doc: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(doc))
    doc["metadata"]["namespace"] = ns
    kube.apply(doc)


def describe(kube: Kube, ns: str) -> str:
    return (
        kube.kubectl("get", "mdep,deploy,pods", "-n", ns, "-o", "wide", check=False)
        + kube.kubectl("describe", "mdep,pods", "-n", ns, check=False)[-6000:]
    )


def wait_ready(kube: Kube, ns: str, name: str, timeout: float = 240) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = kube.get("mdep", name, "-n", ns)
        gen_ok = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"][
            "generation"
        ]
        return obj if gen_ok and condition(obj, "Ready").get("status") == "True" else None

    return wait_for(f"ModelDeployment {ns}/{name} Ready", ready, timeout=timeout,
                    describe=lambda: describe(kube, ns))  # fmt: skip


def infer(host: str, port: int, name: str = "iris", timeout: float = 10) -> list[float]:
    inputs = [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FEATURES}]
    return f32(infer_json(host, port, name, inputs, timeout))


def f32(values: list[float]) -> list[float]:
    """The float32 each number stands for: the runtime prints float32 in its shortest form,
    torch on the host hands out the same float32 widened to a double; exact equality of the
    float32 values is what "the model's exact numbers" means."""
    return [struct.unpack("f", struct.pack("f", v))[0] for v in values]


def service_ip(kube: Kube, ns: str, name: str) -> str:
    return str(kube.get("svc", name, "-n", ns)["spec"]["clusterIP"])


def serving_pods(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    pods = kube.get("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


# --- 1. helm install: the operator pod under its restricted security context ---------------------


def test_operator_pod_ready_under_restricted_pss(operator: Kube) -> None:
    ns = operator.get("namespace", OPERATOR_NS)
    assert RESTRICTED.items() <= ns["metadata"]["labels"].items()
    pod = operator_pod(operator)
    assert pod["spec"]["nodeName"] == REAL_NODE
    assert condition(pod, "Ready")["status"] == "True"
    (cs,) = pod["status"]["containerStatuses"]
    # The image used to crash at start (getpass.getuser() for uid 65532): no restarts now.
    assert cs["restartCount"] == 0 and cs["ready"] and "running" in cs["state"]
    sec = pod["spec"]["securityContext"]
    assert sec.get("runAsNonRoot") is True and sec["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["spec"]["containers"]
    csec = container["securityContext"]
    assert csec["readOnlyRootFilesystem"] is True and csec["allowPrivilegeEscalation"] is False
    assert csec["capabilities"]["drop"] == ["ALL"]
    # Ready above went through the chart's probes (liveness on /healthz, the health port).
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The process really runs as the numeric non-root user.
    uid = operator.kubectl("exec", "-n", OPERATOR_NS, pod["metadata"]["name"], "--",
                           "python", "-c", "import os; print(os.getuid())").strip()  # fmt: skip
    assert uid == "65532"


def test_restricted_namespace_refuses_a_privileged_pod(operator: Kube, ns: str) -> None:
    """The restricted PSS is really enforced where the runtime pods are admitted below."""
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "ghcr.io/modelfleet/runtime:0.1.0",
                                    "securityContext": {"privileged": True}}]}}  # fmt: skip
    with pytest.raises(E2EError, match='violates PodSecurity "restricted:latest"'):
        operator.apply(bad)


# --- 2. S3 + digest: fetched, loaded, Ready, exact numbers from the host and from a pod ---------


def test_s3_model_served_through_the_service(operator: Kube, ns: str, s3: S3,
                                             models: dict[str, Model]) -> None:  # fmt: skip
    v1 = models["v1"]
    started = time.monotonic()
    apply_in(operator, ns, mdep("iris", s3.uri(v1.name), v1.digest))
    obj = wait_ready(operator, ns, "iris")
    print(f"\n[e2e] ModelDeployment apply -> Ready in {time.monotonic() - started:.1f}s")
    assert obj["status"]["model"] == {"name": "iris", "version": "1", "digest": v1.digest}
    (pod,) = serving_pods(operator, ns, "iris")
    assert pod["spec"]["nodeName"] == REAL_NODE
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0  # the fetch really ran
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and cs["restartCount"] == 0
    runtime = pod["spec"]["containers"][0]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= runtime.keys()
    want = v1.expected(FEATURES)
    assert infer(service_ip(operator, ns, "iris"), 8080) == want
    # From another pod, by the Service's DNS name (CoreDNS), in the same restricted namespace.
    client = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": ns},
        "spec": {
            "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
            "tolerations": [TOLERATE],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": "ghcr.io/modelfleet/runtime:0.1.0",
                "imagePullPolicy": "IfNotPresent", "command": ["python", "-c", (
                    "import json, urllib.request as u; b = json.dumps({'inputs': [{'name': "
                    "'features', 'datatype': 'FP32', 'shape': [1, 4], 'data': "
                    f"{FEATURES}}}]}}).encode(); r = u.urlopen(u.Request("
                    f"'http://iris.{ns}.svc.cluster.local:8080/v2/models/iris/infer', b, "
                    "{'Content-Type': 'application/json'}), timeout=20); "
                    "print(r.read().decode())")],
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip
    operator.apply(client)

    def done() -> str | None:
        phase = operator.get("pod", "client", "-n", ns)["status"].get("phase")
        if phase == "Failed":
            raise AssertionError(operator.kubectl("logs", "client", "-n", ns, check=False))
        return phase if phase == "Succeeded" else None

    wait_for("client pod finished", done, timeout=120)
    out = json.loads(operator.kubectl("logs", "client", "-n", ns).strip().splitlines()[-1])
    assert f32([float(x) for x in out["outputs"][0]["data"]]) == want


# --- 3. rolling update to a new model version under steady load ---------------------------------


def test_rolling_update_under_load_loses_nothing(operator: Kube, ns: str, s3: S3,
                                                 models: dict[str, Model]) -> None:  # fmt: skip
    v1, v2 = models["v1"], models["v2"]
    apply_in(operator, ns, mdep("iris", s3.uri(v1.name), v1.digest, version="1"))
    wait_ready(operator, ns, "iris")
    ip = service_ip(operator, ns, "iris")
    want = {tuple(v1.expected(FEATURES)): "v1", tuple(v2.expected(FEATURES)): "v2"}
    assert infer(ip, 8080) == list(next(iter(want)))
    seen: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                got = tuple(infer(ip, 8080))
                seen[want.get(got, f"unexpected {got}")] += 1
            except (OSError, E2EError, ValueError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        apply_in(operator, ns, mdep("iris", s3.uri(v2.name), v2.digest, version="2"))

        def rolled() -> bool:
            obj = operator.get("mdep", "iris", "-n", ns)
            pods = serving_pods(operator, ns, "iris")
            status = obj.get("status") or {}
            return (status.get("observedGeneration") == obj["metadata"]["generation"]
                    and condition(obj, "Ready").get("status") == "True"
                    and status.get("model", {}).get("version") == "2"
                    and len(pods) == 1 and seen["v2"] > 5)  # fmt: skip

        wait_for("rolled out to v2", rolled, timeout=300, describe=lambda: describe(operator, ns))
        print(
            f"\n[e2e] rolling update v1 -> v2 in {time.monotonic() - started:.1f}s, "
            f"{sum(seen.values())} requests OK, {len(failures)} failed: {dict(seen)}"
        )
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == [], failures[:5]
    assert set(seen) == {"v1", "v2"}, seen
    assert infer(ip, 8080) == v2.expected(FEATURES)


# --- 4. sources that cannot be fetched or loaded: a clear status reason, never Ready -------------


def _problem(kube: Kube, ns: str, name: str, reason: str) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        obj = kube.get("mdep", name, "-n", ns)
        ready = condition(obj, "Ready")
        assert ready.get("status") != "True", f"{name} must never be Ready: {obj['status']}"
        return ready if ready.get("reason") == reason else None

    return wait_for(f"{ns}/{name} reports {reason}", failed, timeout=240,
                    describe=lambda: describe(kube, ns))  # fmt: skip


def test_wrong_digest_termination_message_reaches_status(
    operator: Kube, ns: str, s3: S3, models: dict[str, Model]
) -> None:
    wrong = "sha256:" + "0" * 64
    apply_in(operator, ns, mdep("bad-digest", s3.uri(models["v1"].name), wrong))
    # The init container (fetch) checks the pin and writes /dev/termination-log; the operator
    # names the fetch as the failing step.
    ready = _problem(operator, ns, "bad-digest", "ModelFetchFailed")
    assert "digest mismatch" in ready["message"] and wrong in ready["message"]
    assert models["v1"].digest in ready["message"]  # what was really downloaded
    (pod,) = serving_pods(operator, ns, "bad-digest")
    (init,) = pod["status"]["initContainerStatuses"]
    term = init["state"].get("terminated") or init["lastState"]["terminated"]
    assert "digest mismatch" in term["message"]  # the pod's real termination message


def test_unfetchable_source_is_a_status_reason(operator: Kube, ns: str, s3: S3) -> None:
    apply_in(operator, ns, mdep("missing", s3.uri("iris/nope/iris.tar.gz"), None))
    ready = _problem(operator, ns, "missing", "ModelFetchFailed")
    assert "no such object" in ready["message"], ready


def test_pvc_model_with_digest_and_a_wrong_one(operator: Kube, ns: str,
                                               models: dict[str, Model]) -> None:  # fmt: skip
    """pvc:// (no fetch): the claim is mounted read-only and serve --digest checks the pin;
    a mismatch is the runtime's termination message as ModelLoadFailed."""
    host_dir = tempfile.mkdtemp(prefix="mf-e2e-pv-")
    try:
        shutil.copytree(models["v1"].directory, f"{host_dir}/iris")
        run(["chmod", "-R", "a+rX", host_dir])
        weights = (
            "sha256:"
            + hashlib.sha256((models["v1"].directory / "model.pt").read_bytes()).hexdigest()
        )
        pv_name = f"{ns}-models"
        operator.apply([
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                      "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                      "claimRef": {"namespace": ns, "name": "models"},
                      "hostPath": {"path": host_dir, "type": "Directory"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "models", "namespace": ns},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                      "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}},
        ])  # fmt: skip
        apply_in(operator, ns, mdep("pvc-ok", "pvc://models/iris", weights))
        apply_in(operator, ns, mdep("pvc-bad", "pvc://models/iris", "sha256:" + "1" * 64))
        wait_ready(operator, ns, "pvc-ok")
        assert infer(service_ip(operator, ns, "pvc-ok"), 8080) == models["v1"].expected(FEATURES)
        ready = _problem(operator, ns, "pvc-bad", "ModelLoadFailed")
        assert "digest mismatch" in ready["message"], ready
    finally:
        operator.kubectl("delete", "mdep", "pvc-ok", "pvc-bad", "-n", ns, "--wait=true",
                         check=False, timeout=150)  # fmt: skip
        operator.kubectl("delete", "pvc", "models", "-n", ns, "--wait=true", check=False)
        operator.kubectl("delete", "pv", f"{ns}-models", "--wait=true", check=False)
        shutil.rmtree(host_dir, ignore_errors=True)


# --- 5. recovery: the runtime container killed, the operator pod deleted --------------------------


def test_killed_runtime_and_deleted_operator_recover(operator: Kube, ns: str, s3: S3,
                                                     models: dict[str, Model]) -> None:  # fmt: skip
    v1 = models["v1"]
    apply_in(operator, ns, mdep("iris", s3.uri(v1.name), v1.digest))
    wait_ready(operator, ns, "iris")
    (pod,) = serving_pods(operator, ns, "iris")
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                ready = condition(operator.get("mdep", "iris", "-n", ns), "Ready")
                state = (ready.get("status", "?"), ready.get("reason", "?"))
                if not seen or seen[-1] != state:
                    seen.append(state)
            except E2EError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run(["ctr", "--address", CTRD_SOCK, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", cid])

        def restarted() -> dict[str, Any] | None:
            (p,) = serving_pods(operator, ns, "iris")
            cs = p["status"]["containerStatuses"][0]
            return cs if cs["restartCount"] >= 1 and cs["ready"] else None

        cs = wait_for("runtime container restarted and ready", restarted, timeout=180,
                      describe=lambda: describe(operator, ns))  # fmt: skip
        assert cs["lastState"]["terminated"]["exitCode"] == 137  # SIGKILL, as done
        wait_ready(operator, ns, "iris")
        assert infer(service_ip(operator, ns, "iris"), 8080) == v1.expected(FEATURES)
    finally:
        stop.set()
        watcher.join(timeout=10)
    # Status said what happened meanwhile: not Ready (with a reason), then Ready again.
    assert any(s == "False" for s, _ in seen), seen
    assert seen[-1][0] == "True", seen

    # The operator pod deleted: while it is gone the spec changes; the new pod picks it up.
    old = operator_pod(operator)["metadata"]["name"]
    operator.kubectl("delete", "pod", "-n", OPERATOR_NS, old, "--wait=false")
    operator.kubectl("patch", "mdep", "iris", "-n", ns, "--type=merge", "-p",
                     '{"spec": {"replicas": 2}}')  # fmt: skip

    def new_operator() -> dict[str, Any] | None:
        p = operator_pod(operator)
        return p if p["metadata"]["name"] != old and condition(p, "Ready").get(
            "status") == "True" else None  # fmt: skip

    fresh = wait_for("a new operator pod Ready", new_operator, timeout=180)
    assert fresh["status"]["containerStatuses"][0]["restartCount"] == 0
    obj = wait_ready(operator, ns, "iris")
    assert obj["status"]["readyReplicas"] == 2 and obj["status"]["summary"]["replicas"] == "2/2"
    assert len(serving_pods(operator, ns, "iris")) == 2


def test_operator_image_runs_as_uid_without_passwd_entry() -> None:
    """The bug the first real pod found: kopf's peering identity calls getpass.getuser(), which
    raised KeyError for uid 65532 (no passwd entry). The image must answer it."""
    # --passwd=false: podman would otherwise add the passwd entry a Kubernetes node never adds
    out = run(["podman", "--cgroup-manager=cgroupfs", "run", "--rm", "--passwd=false",
               "--network=none",
               "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
               "--user", "65532:65532", "--entrypoint", "python",
               "ghcr.io/modelfleet/operator:0.1.0", "-c",
               "import getpass, os; print(os.getuid(), getpass.getuser())"])  # fmt: skip
    assert out.split() == ["65532", "modelfleet"]
