"""Start-up refusals (digest, bad manifest) and the SIGTERM drain under load."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Runtime
from runtime_models import build_affine_dir, build_slow_dir, sha256

pytestmark = pytest.mark.runtime

WRONG = "sha256:" + "0" * 64


def wait_exit(server: Runtime, timeout: float = 120.0) -> int:
    code = server.proc.wait(timeout)
    server.stop()
    return code


@pytest.mark.parametrize("where", ["flag", "env", "manifest"])
def test_digest_mismatch_refuses_to_start(tmp_path: Path, where: str) -> None:
    model_dir = tmp_path / "m"
    build_affine_dir(model_dir, "torchscript")
    termlog = tmp_path / "termination-log"
    env = {"MODELFLEET_TERMINATION_LOG": str(termlog)}
    args: list[str] = []
    if where == "flag":
        args = ["--digest", WRONG]
    elif where == "env":
        env["MODELFLEET_DIGEST"] = WRONG
    else:
        manifest = yaml.safe_load((model_dir / "model.yaml").read_text())
        manifest["sha256"] = WRONG.removeprefix("sha256:")
        (model_dir / "model.yaml").write_text(yaml.safe_dump(manifest))
    server = Runtime(model_dir, *args, env=env)
    assert wait_exit(server) == 1
    reason = termlog.read_text()
    assert "digest mismatch" in reason and sha256(model_dir / "model.pt") in reason
    assert "digest mismatch" in server.log


def test_right_digest_name_version_and_dtype(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    module = build_affine_dir(model_dir, "torchscript")
    server = Runtime(model_dir, "--digest", "sha256:" + sha256(model_dir / "model.pt"),
                     "--name", "renamed", "--version", "9", "--dtype", "bfloat16")  # fmt: skip
    try:
        server.wait_ready()
        status, body = server.infer("renamed", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "scale", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        ]})  # fmt: skip
        assert status == 200 and body["model_version"] == "9"
        y = body["outputs"][0]
        assert y["datatype"] == "FP32"  # computed in bfloat16, answered as declared
        with torch.no_grad():
            want = module(torch.tensor([[1.0, 2, 3, 4]]), torch.ones(1, 1))[0].flatten().tolist()
        assert y["data"] == pytest.approx(want, rel=0.05, abs=0.05)
        assert y["data"] != pytest.approx(want, rel=1e-6, abs=1e-7)  # it really ran in bf16
    finally:
        assert server.stop() == 0


def test_live_but_not_ready_while_loading(tmp_path: Path) -> None:
    model_dir = tmp_path / "slow"
    build_slow_dir(model_dir, delay_s=0.0, load_delay_s=3.0)
    server = Runtime(model_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if server.request("GET", "/v2/health/live", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        assert server.request("GET", "/v2/health/ready")[::2] == (503, b'{"ready":false}')
        assert server.request("GET", "/v2/models/slow/ready")[0] == 503
        status, body = server.infer(
            "slow", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        )
        assert status == 503 and "not loaded" in body["error"]
        assert 'modelfleet_model_ready{model="slow",version="1"} 0.0' in server.metrics()
        server.wait_ready()
        load = [ln for ln in server.metrics().splitlines()
                if ln.startswith("modelfleet_model_load_seconds{")]  # fmt: skip
        assert float(load[0].rsplit(" ", 1)[1]) >= 3.0
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("manifest", "needle"),
    [
        ({"format": "onnx"}, "'format' must be one of"),
        ({"format": "torchscript", "weights": "missing.pt",
          "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}, "missing.pt"),
        ({"format": "torchscript", "inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "datatype"),
    ],
    ids=["format", "weights", "datatype"],
)  # fmt: skip
def test_load_failure_exits_non_zero_with_reason(
    tmp_path: Path, manifest: dict[str, object], needle: str
) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "model.yaml").write_text(yaml.safe_dump(manifest))
    termlog = tmp_path / "termination-log"
    server = Runtime(model_dir, env={"MODELFLEET_TERMINATION_LOG": str(termlog)})
    assert wait_exit(server) == 1
    assert needle in termlog.read_text()


def test_sigterm_under_load_answers_every_accepted_request(tmp_path: Path) -> None:
    model_dir = tmp_path / "slow"
    build_slow_dir(model_dir, delay_s=0.05)
    server = Runtime(model_dir, "--max-batch-size", "8", "--drain-timeout", "20").wait_ready()
    stop = threading.Event()
    answered: list[int] = []
    wrong: list[str] = []
    refused: list[str] = []

    def client(c: int) -> None:
        conn = server.conn(timeout=30)
        r = 0
        while not stop.is_set():
            data = [float(c), float(r)]
            body = json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": data}]}
            )
            try:
                conn.request("POST", "/v2/models/slow/infer", body)
            except OSError as exc:  # not sent: the server no longer accepts connections
                refused.append(repr(exc))
                break
            try:
                resp = conn.getresponse()
                doc = json.loads(resp.read())
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                wrong.append(f"client {c}: sent but not answered: {exc!r}")
                break
            answered.append(resp.status)
            if resp.status != 200 or doc["outputs"][0]["data"] != [2 * v for v in data]:
                wrong.append(f"client {c}: {resp.status} {doc}")
            r += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # A keep-alive connection with a slow request in flight, then the readiness question
    # pipelined behind it: it must already say "not ready".
    probe = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [7, 7]}]}).encode()  # fmt: skip
    probe.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    sent_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    replies = b""
    probe.settimeout(10)
    while replies.count(b"HTTP/1.1") < 2 or not replies.endswith(b"}"):
        chunk = probe.recv(65536)
        if not chunk:
            break
        replies += chunk
    probe.close()
    code = server.proc.wait(30)
    drained_in = time.monotonic() - sent_at
    stop.set()
    for t in threads:
        t.join(30)
    server.stop()
    assert code == 0, server.log
    assert drained_in < 20
    first, _, second = replies.partition(b"HTTP/1.1 503")
    assert first.startswith(b"HTTP/1.1 200 OK") and b'"data":[14.0,14.0]' in first, replies
    assert b'{"ready":false}' in second and b"Connection: close" in second, replies
    assert not wrong, wrong[:5]
    assert len(answered) > 12 and set(answered) == {200}
    assert "drained" in server.log


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu_refuses_to_start(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    build_affine_dir(model_dir, "torch-export")
    termlog = tmp_path / "termination-log"
    server = Runtime(model_dir, "--device", "cuda",
                     env={"MODELFLEET_TERMINATION_LOG": str(termlog)})  # fmt: skip
    assert wait_exit(server) == 1
    assert "no CUDA device" in termlog.read_text()
