"""End-to-end fixtures: the local cluster WITH its real node, the images, an S3 server, Helm.

- ``real_cluster`` (session): ``hack/cluster/up --real-node mf-e2e`` (kubelet, containerd,
  runc, bridge CNI, CoreDNS; the images from ``make images`` imported), deleted at the end with
  ``hack/cluster/down mf-e2e``, after which the host's mounts, links, nft ruleset and processes
  must equal what they were before: a leftover FAILS the session.
- ``s3`` (session): moto's S3 server as a host process on the bridge address, reachable from
  pods as Service ``s3.<infra ns>.svc`` (DNS through CoreDNS), holding the test models.
- ``operator`` (session): ``helm install`` of charts/modelfleet with the built images into a
  namespace enforcing the ``restricted`` Pod Security Standard.

Nothing here skips: without root, podman, the images or the binaries the tests FAIL, naming
what is missing (``make test`` builds all of it; run as root).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import torch
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from e2e_support import (
    CLUSTER,
    NODE_IP,
    REAL_NODE,
    REPO,
    E2EError,
    Kube,
    bin_dir,
    diff_states,
    host_state,
    kubeconfig,
    run,
    wait_for,
)

_HERE = pathlib.Path(__file__).parent.resolve()
OPERATOR_NS = "modelfleet-system"
INFRA_NS = "mf-e2e-infra"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}  # fmt: skip
IMAGE_TAG = "0.1.0"
# hack/node/up taints the real node so only pods meant for it land there
TOLERATE = {"key": "modelfleet.io/real-node", "operator": "Exists", "effect": "NoSchedule"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in pathlib.Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _require() -> None:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests run a real kubelet and containerd: run them as root "
                    "(make test / make test-e2e)", pytrace=False)  # fmt: skip
    for image in (f"ghcr.io/modelfleet/operator:{IMAGE_TAG}",
                  f"ghcr.io/modelfleet/runtime:{IMAGE_TAG}"):  # fmt: skip
        podman = ["podman", "--cgroup-manager=cgroupfs", "image", "exists", image]
        if not shutil.which("podman") or subprocess.run(podman, check=False).returncode != 0:
            pytest.fail(f"image {image} is not built: run make images", pytrace=False)
    if subprocess.run([str(REPO / "hack/cluster/build"), "--check-node"], check=False,
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.fail("the real node's binaries are not built: run make cluster-build",
                    pytrace=False)  # fmt: skip


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[Kube]:
    _require()
    run(["hack/cluster/down", CLUSTER], timeout=300, check=False)  # a crashed session's leftovers
    before = host_state()
    started = time.monotonic()
    try:
        run(["hack/cluster/up", "--real-node", CLUSTER], timeout=1500)
    except E2EError as exc:
        run(["hack/cluster/down", CLUSTER], timeout=300, check=False)
        pytest.fail(f"the real-node cluster did not come up:\n{exc}", pytrace=False)
    kube = Kube(kubeconfig(), bin_dir())
    print(f"\n[e2e] cluster {CLUSTER} with real node up in {time.monotonic() - started:.1f}s")
    try:
        yield kube
    finally:
        if os.environ.get("MODELFLEET_KEEP_CLUSTER"):
            print(f"\n[e2e] kept cluster {CLUSTER}: export KUBECONFIG={kube.kubeconfig}")
        else:
            run(["hack/cluster/down", CLUSTER], timeout=300)
            left = diff_states(before, host_state())
            if left:
                pytest.fail("hack/cluster/down did not restore the host:\n" + "\n".join(left),
                            pytrace=False)  # fmt: skip


# --- models -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    name: str  # object key in the bucket
    path: pathlib.Path  # the tarball on the host
    digest: str  # sha256:<hex> of the tarball
    directory: pathlib.Path  # the unpacked model directory on the host

    def expected(self, features: list[float]) -> list[float]:
        """What torch on the host computes: the numbers the runtime must return exactly."""
        model = torch.jit.load(str(self.directory / "model.pt"))
        with torch.no_grad():
            out = model(torch.tensor([features], dtype=torch.float32))
        # float32 -> the nearest double is exact, and so is the way back (f32 in the tests)
        return [float(x) for x in out.flatten().tolist()]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    root = tmp_path_factory.mktemp("models")
    run([sys.executable, "examples/models/build.py", str(root)], timeout=300)
    v1 = root / "iris-torchscript"
    v2 = root / "iris-v2"
    shutil.copytree(v1, v2)
    net = torch.jit.load(str(v1 / "model.pt"))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)  # a "new version": other weights, other numbers
    net.save(str(v2 / "model.pt"))
    manifest = yaml.safe_load((v2 / "model.yaml").read_text())  # it pins its weights too
    manifest["sha256"] = hashlib.sha256((v2 / "model.pt").read_bytes()).hexdigest()
    (v2 / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    out: dict[str, Model] = {}
    for key, directory in (("v1", v1), ("v2", v2)):
        tarball = root / f"iris-{key}.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(directory, arcname="iris")
        digest = "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest()
        out[key] = Model(f"iris/{key}/iris.tar.gz", tarball, digest, directory)
    return out


# --- S3 -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class S3:
    bucket: str
    endpoint_in_cluster: str  # host:port as pods reach it (Service DNS name)

    def uri(self, key: str) -> str:
        return (f"s3://{self.bucket}/{key}?endpoint_override={self.endpoint_in_cluster}"
                "&scheme=http")  # fmt: skip


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3(real_cluster: Kube, models: dict[str, Model],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:  # fmt: skip
    port = _free_port(NODE_IP)
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("w")
    moto = shutil.which("moto_server", path=str(pathlib.Path(sys.executable).parent))
    if moto is None:
        pytest.fail("moto_server is missing from the venv (pip install -e '.[dev]')")
    proc = subprocess.Popen([moto, "-H", NODE_IP, "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        url = f"http://{NODE_IP}:{port}"
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="e2e",
                              aws_secret_access_key="e2e-secret")  # fmt: skip

        def up() -> bool:
            try:
                client.list_buckets()
            except Exception:
                return False
            return True

        wait_for("moto S3 server listening", up, timeout=60)
        bucket = "modelfleet-e2e"
        client.create_bucket(Bucket=bucket)
        for m in models.values():
            # public-read: the pods have no AWS credentials and fetch anonymously
            client.upload_file(str(m.path), bucket, m.name, ExtraArgs={"ACL": "public-read"})
        kube = real_cluster
        kube.apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INFRA_NS}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "s3", "namespace": INFRA_NS},
             "spec": {"ports": [{"name": "http", "port": 9000, "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "s3-host", "namespace": INFRA_NS,
                          "labels": {"kubernetes.io/service-name": "s3"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
             "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}]},
        ])  # fmt: skip
        yield S3(bucket, f"s3.{INFRA_NS}.svc.cluster.local:9000")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- the operator, installed with Helm ------------------------------------------------------------


@pytest.fixture(scope="session")
def operator(real_cluster: Kube, tmp_path_factory: pytest.TempPathFactory) -> Kube:
    kube = real_cluster
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": OPERATOR_NS, "labels": RESTRICTED}})  # fmt: skip
    on_the_node = {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                   "tolerations": [TOLERATE]}  # fmt: skip
    values = {"operator": {**on_the_node, "image": {"tag": IMAGE_TAG}},
              "activator": on_the_node,
              "runtime": {"image": {"tag": IMAGE_TAG}}}  # fmt: skip
    values_file = tmp_path_factory.mktemp("helm") / "values.json"  # JSON is YAML
    values_file.write_text(json.dumps(values))
    started = time.monotonic()
    kube.helm("upgrade", "--install", "modelfleet", str(REPO / "charts/modelfleet"),
              "-n", OPERATOR_NS, "-f", str(values_file), "--wait", "--timeout", "4m",
              timeout=300)  # fmt: skip
    print(f"\n[e2e] helm install: operator Ready in {time.monotonic() - started:.1f}s")
    return kube


def operator_pod(kube: Kube) -> dict[str, Any]:
    selector = "app.kubernetes.io/name=modelfleet,app.kubernetes.io/component=operator"
    pods = kube.get("pods", "-n", OPERATOR_NS, "-l", selector)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != 1:
        raise E2EError(f"expected one operator pod, found {[p['metadata']['name'] for p in live]}")
    return dict(live[0])


@pytest.fixture
def ns(operator: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace enforcing the restricted Pod Security Standard, deleted afterwards."""
    name = "e2e-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    operator.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": RESTRICTED}})  # fmt: skip
    yield name
    operator.kubectl("delete", "mdep", "--all", "-n", name, "--wait=true", "--timeout=120s",
                     check=False, timeout=150)  # fmt: skip
    operator.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s",
                     check=False, timeout=150)  # fmt: skip
