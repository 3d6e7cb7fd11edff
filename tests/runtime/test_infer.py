"""Every format answers like the model itself, over JSON and binary tensors, with real clients."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import tritonclient.http as triton
from conftest import Runtime
from testnets import Affine

pytestmark = pytest.mark.runtime


def direct(module: Affine, x: torch.Tensor, scale: torch.Tensor) -> tuple[list[float], list[int]]:
    with torch.no_grad():
        y, label = module(x, scale)
    return y.flatten().tolist(), label.tolist()


def test_json_infer_matches_model(affine: tuple[Runtime, Affine]) -> None:
    server, module = affine
    x = torch.randn(3, 4)
    scale = torch.tensor([[1.0], [2.0], [-0.5]])
    status, body = server.infer(server.model_dir.name, {
        "id": "req-1",
        "inputs": [
            {"name": "scale", "datatype": "FP32", "shape": [3, 1],
             "data": scale.flatten().tolist()},
            {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.tolist()},  # nested
        ],
    })  # fmt: skip
    assert status == 200, body
    assert body["id"] == "req-1"
    assert body["model_name"] == server.model_dir.name
    assert body["model_version"] == "1"
    outs = {o["name"]: o for o in body["outputs"]}
    want_y, want_label = direct(module, x, scale)
    assert outs["y"]["datatype"] == "FP32" and outs["y"]["shape"] == [3, 3]
    assert outs["y"]["data"] == pytest.approx(want_y, rel=1e-5, abs=1e-6)
    assert outs["label"] == {"name": "label", "datatype": "INT64", "shape": [3], "data": want_label}


def test_tritonclient_binary_and_json(affine: tuple[Runtime, Affine]) -> None:
    server, module = affine
    name = server.model_dir.name
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert [i["name"] for i in meta["inputs"]] == ["x", "scale"]
    assert client.get_model_repository_index() == [
        {"name": name, "version": "1", "state": "READY"}]  # fmt: skip
    config = client.get_model_config(name)
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [4]
    x = torch.randn(5, 4)
    scale = torch.full((5, 1), 1.5)
    want_y, want_label = direct(module, x, scale)
    for binary in (True, False):
        inputs = [triton.InferInput("x", [5, 4], "FP32"),
                  triton.InferInput("scale", [5, 1], "FP32")]  # fmt: skip
        inputs[0].set_data_from_numpy(x.numpy(), binary_data=binary)
        inputs[1].set_data_from_numpy(scale.numpy(), binary_data=binary)
        outputs = [triton.InferRequestedOutput("y", binary_data=binary),
                   triton.InferRequestedOutput("label", binary_data=not binary)]  # fmt: skip
        result = client.infer(name, inputs, outputs=outputs, model_version="1")
        y = result.as_numpy("y")
        assert y.shape == (5, 3) and y.dtype.name == "float32"
        assert y.flatten().tolist() == pytest.approx(want_y, rel=1e-5, abs=1e-6)
        assert result.as_numpy("label").tolist() == want_label
    client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(
    affine_servers: dict[str, tuple[Runtime, Affine]], algorithm: str
) -> None:
    server, module = affine_servers["safetensors"]
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = torch.randn(3, 4)
    scale = torch.ones(3, 1)
    inputs = [triton.InferInput("x", [3, 4], "FP32"), triton.InferInput("scale", [3, 1], "FP32")]
    inputs[0].set_data_from_numpy(x.numpy())
    inputs[1].set_data_from_numpy(scale.numpy(), binary_data=False)
    result = client.infer(server.model_dir.name, inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)  # fmt: skip
    want_y, want_label = direct(module, x, scale)
    assert result.as_numpy("y").flatten().tolist() == pytest.approx(want_y, rel=1e-5, abs=1e-6)
    assert result.as_numpy("label").tolist() == want_label
    client.close()


def test_binary_request_by_hand_and_binary_output(affine: tuple[Runtime, Affine]) -> None:
    server, module = affine
    x = torch.randn(2, 4)
    scale = torch.ones(2, 1)
    header = json.dumps({
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4],
             "parameters": {"binary_data_size": 32}},
            {"name": "scale", "datatype": "FP32", "shape": [2, 1], "data": [1, 1]},
        ],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    body = header + struct.pack("<8f", *x.flatten().tolist())
    status, hdrs, raw = server.request(
        "POST", f"/v2/models/{server.model_dir.name}/versions/1/infer", body,
        {"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert status == 200, raw
    assert hdrs["content-type"] == "application/octet-stream"
    n = int(hdrs["inference-header-content-length"])
    doc = json.loads(raw[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [24, 16] and len(raw) == n + 40
    y = struct.unpack("<6f", raw[n : n + 24])
    labels = struct.unpack("<2q", raw[n + 24 :])
    want_y, want_label = direct(module, x, scale)
    assert list(y) == pytest.approx(want_y, rel=1e-5, abs=1e-6)
    assert list(labels) == want_label


def test_requested_output_subset(affine: tuple[Runtime, Affine]) -> None:
    server, _ = affine
    status, body = server.infer(server.model_dir.name, {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "scale", "datatype": "FP32", "shape": [1, 1], "data": [1]}],
        "outputs": [{"name": "label"}],
    })  # fmt: skip
    assert status == 200
    assert [o["name"] for o in body["outputs"]] == ["label"]


def test_health_metadata_and_metrics(affine: tuple[Runtime, Affine]) -> None:
    server, _ = affine
    name = server.model_dir.name
    assert server.request("GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
    assert server.request("GET", "/v2/health/ready")[::2] == (200, b'{"ready":true}')
    status, _, body = server.request("GET", "/v2")
    assert status == 200 and "binary_tensor_data" in json.loads(body)["extensions"]
    status, _, body = server.request("GET", f"/v2/models/{name}/versions/1")
    assert status == 200 and json.loads(body)["outputs"][1] == {
        "name": "label", "datatype": "INT64", "shape": [-1]}  # fmt: skip
    status, _, body = server.request("GET", f"/v2/models/{name}/versions/1/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    metrics = server.metrics()
    for family in ("modelfleet_requests_total", "modelfleet_request_duration_seconds_bucket",
                   "modelfleet_queue_duration_seconds_bucket", "modelfleet_batch_size_bucket",
                   "modelfleet_compute_duration_seconds_bucket", "modelfleet_queue_depth",
                   "modelfleet_inflight_requests", "modelfleet_model_load_seconds",
                   "modelfleet_model_ready"):  # fmt: skip
        assert f"\n{family}{{" in metrics, family
    assert f'modelfleet_model_ready{{model="{name}",version="1"}} 1.0' in metrics


def test_unknown_model_and_version_are_404(affine: tuple[Runtime, Affine]) -> None:
    server, _ = affine
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    status, body = server.infer("nope", doc)
    assert status == 404 and "nope" in body["error"]
    status, _, raw = server.request(
        "POST", f"/v2/models/{server.model_dir.name}/versions/7/infer", json.dumps(doc).encode()
    )
    assert status == 404 and '"7"' in json.loads(raw)["error"]
    assert server.request("GET", "/v2/models/nope/ready")[0] == 404
    assert server.request("GET", "/v2/nothing")[0] == 404
