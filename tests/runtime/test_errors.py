"""Bad requests get the protocol's {"error": ...} with the right status and a useful message."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from conftest import Runtime, metric_value
from testnets import Affine

pytestmark = pytest.mark.runtime

SIGNATURE = "x: FP32[-1,4]"


def good_inputs() -> list[dict[str, Any]]:
    return [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "scale", "datatype": "FP32", "shape": [1, 1], "data": [1]},
    ]


def post(server: Runtime, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    status, hdrs, raw = server.request(
        "POST", f"/v2/models/{server.model_dir.name}/infer", body, headers
    )
    assert hdrs["content-type"] == "application/json"
    doc = json.loads(raw)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]


def with_input(**change: Any) -> bytes:
    inputs = good_inputs()
    inputs[0] = {**inputs[0], **change}
    return json.dumps({"inputs": inputs}).encode()


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (b'{"inputs": [', ["malformed JSON"]),
        (b"[1, 2]", ["JSON object"]),
        (b'{"inputs": []}', ["inputs", SIGNATURE]),
        (with_input(name="z"), ['unknown input "z"', SIGNATURE, "scale: FP32[-1,1]"]),
        (with_input(datatype="FP64"), ['input "x"', "FP64", SIGNATURE]),
        (with_input(datatype="INT32", data=[1, 2, 3, 4]), ['input "x"', "INT32", SIGNATURE]),
        (with_input(shape=[1, 5], data=[1, 2, 3, 4, 5]), ['input "x"', "[1,5]", SIGNATURE]),
        (with_input(shape=[4]), ['input "x"', "[4]", SIGNATURE]),
        (with_input(data=[1, 2, 3]), ['input "x"', "3 data elements", SIGNATURE]),
        (with_input(data=[1, 2, 3, 4, 5]), ['input "x"', "5 data elements", SIGNATURE]),
        (with_input(data=["a", "b", "c", "d"]), ['input "x"', "not FP32", SIGNATURE]),
        (with_input(data=None), ['input "x"', "data", SIGNATURE]),
        (with_input(shape=[2, 4], data=[0] * 8), ['input "scale"', "batch size 1 differs"]),
        (json.dumps({"inputs": good_inputs()[:1]}).encode(), ["missing input", "scale"]),
        (json.dumps({"inputs": good_inputs(), "outputs": [{"name": "q"}]}).encode(),
         ['unknown output "q"', "y: FP32[-1,3]"]),
    ],
    ids=["truncated-json", "not-object", "no-inputs", "unknown-input", "wrong-datatype",
         "int-for-float", "wrong-shape", "wrong-rank", "too-few-elements", "too-many-elements",
         "strings", "no-data", "batch-mismatch", "missing-input", "unknown-output"],
)  # fmt: skip
def test_bad_request_is_400_naming_input_and_signature(
    affine_servers: dict[str, tuple[Runtime, Affine]], body: bytes, needles: list[str]
) -> None:
    server, _ = affine_servers["torchscript"]
    status, error = post(server, body)
    assert status == 400, error
    for needle in needles:
        assert needle in error


def test_binary_size_mismatch_is_400(affine_servers: dict[str, tuple[Runtime, Affine]]) -> None:
    server, _ = affine_servers["safetensors"]
    inputs = good_inputs()
    inputs[0] = {**inputs[0], "parameters": {"binary_data_size": 12}}
    del inputs[0]["data"]
    header = json.dumps({"inputs": inputs}).encode()
    status, error = post(server, header + b"\0" * 12,
                         {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert status == 400 and 'input "x"' in error and "needs 16" in error
    status, error = post(server, header + b"\0" * 12, {"Inference-Header-Content-Length": "x"})
    assert status == 400
    status, error = post(server, header, {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and "exceeds the body" in error


def test_body_over_limit_is_413(affine_servers: dict[str, tuple[Runtime, Affine]]) -> None:
    server, _ = affine_servers["torchscript"]
    status, error = post(server, b" " * 70000)
    assert status == 413 and "65536" in error
    assert metric_value(server.metrics(), "modelfleet_requests_total", outcome="too_large") >= 1
    # The server stays up for the next client.
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_bad_content_encoding(affine_servers: dict[str, tuple[Runtime, Affine]]) -> None:
    server, _ = affine_servers["torchscript"]
    body = json.dumps({"inputs": good_inputs()}).encode()
    assert post(server, body, {"Content-Encoding": "br"})[0] == 415
    status, error = post(server, body, {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in error
    bomb = gzip.compress(b" " * 200_000)  # inflates past the 64 KiB limit
    assert post(server, bomb, {"Content-Encoding": "gzip"})[0] == 413


def test_model_raising_is_500_and_server_survives(slow_server: Runtime) -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [666, 1]}]}
    status, body = slow_server.infer("slow", doc)
    assert status == 500
    assert "ValueError" in body["error"] and "666" in body["error"]
    doc["inputs"][0]["data"] = [1, 2]
    status, body = slow_server.infer("slow", doc)
    assert status == 200 and body["outputs"][0]["data"] == [2, 4]
    assert slow_server.request("GET", "/v2/health/ready")[0] == 200


def test_wrong_method(affine_servers: dict[str, tuple[Runtime, Affine]]) -> None:
    server, _ = affine_servers["torchscript"]
    status, _, body = server.request("GET", f"/v2/models/{server.model_dir.name}/infer")
    assert status == 405 and "error" in json.loads(body)
    assert server.request("POST", "/v2/health/ready", b"")[0] == 405
