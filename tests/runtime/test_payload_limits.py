"""Bounded work per request and strict payload validation (issue 10), against a real runtime.

Every case is a request a careless or hostile client can send; each must get a clear 4xx (or
the right answer) and leave the server serving everyone else.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Runtime
from runtime_models import write_manifest
from torch import nn

pytestmark = pytest.mark.runtime

MAX_BODY = 256 * 1024  # past the 64 KiB inline-decode threshold, so both paths are reachable
MAX_BATCH = 16
WIDE = 8000  # values per row of the "wide" output: ~80 KB of JSON, 32 KB binary per row


class Mixed(nn.Module):
    """FP32, INT64 and BOOL inputs; y picks f where b else i; wide repeats f 2000 times."""

    def forward(
        self, f: torch.Tensor, i: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(b, f, i.to(f.dtype)), f.repeat(1, 2000)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    model_dir: Path = tmp_path_factory.mktemp("payload") / "mixed"
    model_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Mixed()).save(str(model_dir / "model.pt"))
    write_manifest(
        model_dir, format="torchscript", weights="model.pt",
        inputs=[{"name": "f", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "i", "datatype": "INT64", "shape": [-1, 4]},
                {"name": "b", "datatype": "BOOL", "shape": [-1, 4]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                 {"name": "wide", "datatype": "FP32", "shape": [-1, WIDE]}],
    )  # fmt: skip
    server = Runtime(model_dir, "--max-body-bytes", str(MAX_BODY), "--max-batch-size",
                     str(MAX_BATCH), "--max-batch-delay-ms", "5")  # fmt: skip
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def inputs(rows: int = 1, **change: Any) -> list[dict[str, Any]]:
    out = [
        {"name": "f", "datatype": "FP32", "shape": [rows, 4], "data": [0.1234567] * 4 * rows},
        {"name": "i", "datatype": "INT64", "shape": [rows, 4], "data": [7] * 4 * rows},
        {"name": "b", "datatype": "BOOL", "shape": [rows, 4],
         "data": [True, False, True, False] * rows},
    ]  # fmt: skip
    for item in out:
        item.update(change.get(item["name"], {}))
    return out


def post(server: Runtime, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    return server.request("POST", "/v2/models/mixed/infer", body, headers)


def strict_json(raw: bytes) -> Any:
    """Parse as RFC 8259 JSON: NaN/Infinity tokens are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"answer holds the non-JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


def error_of(server: Runtime, body: bytes, status: int,
             headers: dict[str, str] | None = None) -> str:  # fmt: skip
    got, hdrs, raw = post(server, body, headers)
    assert got == status, raw[:300]
    assert hdrs["content-type"] == "application/json"
    doc = strict_json(raw)
    assert set(doc) == {"error"}, doc
    assert "Traceback" not in doc["error"]
    return str(doc["error"])


def still_serving(server: Runtime) -> None:
    status, _, raw = post(server, json.dumps({"inputs": inputs(), "outputs": [{"name": "y"}]})
                          .encode())  # fmt: skip
    assert status == 200, raw[:300]
    assert strict_json(raw)["outputs"][0]["data"] == pytest.approx([0.1234567, 7, 0.1234567, 7])


# -- bounded work ------------------------------------------------------------------------------


def test_an_output_named_many_times_is_refused(mixed: Runtime) -> None:
    doc = {"inputs": inputs(), "outputs": [{"name": "wide"}] * 5000}
    message = error_of(mixed, json.dumps(doc).encode(), 400)
    assert 'output "wide" is requested more than once' in message
    still_serving(mixed)


def test_an_answer_over_the_size_limit_is_413_naming_the_limit(mixed: Runtime) -> None:
    # one row of "wide" fits in 256 KiB as JSON; four rows do not
    status, _, raw = post(mixed, json.dumps({"inputs": inputs(1)}).encode())
    assert status == 200, raw[:300]
    assert len(strict_json(raw)["outputs"][1]["data"]) == WIDE
    message = error_of(mixed, json.dumps({"inputs": inputs(4)}).encode(), 413)
    assert f"{MAX_BODY}-byte limit" in message and "--max-body-bytes" in message
    # binary: 32 KB per row, so twelve rows exceed the limit before any byte is built
    doc = {"inputs": inputs(12), "parameters": {"binary_data_output": True}}
    assert "--max-body-bytes" in error_of(mixed, json.dumps(doc).encode(), 413)
    # what was asked for counts: sixteen rows of "y" alone are small
    doc = {"inputs": inputs(MAX_BATCH), "outputs": [{"name": "y"}]}
    status, _, raw = post(mixed, json.dumps(doc).encode())
    assert status == 200, raw[:300]
    still_serving(mixed)


def test_more_rows_than_the_max_batch_size_is_400(mixed: Runtime) -> None:
    doc = {"inputs": inputs(MAX_BATCH + 1), "outputs": [{"name": "y"}]}
    message = error_of(mixed, json.dumps(doc).encode(), 400)
    assert f"{MAX_BATCH + 1} rows" in message and f"max batch size of {MAX_BATCH}" in message
    doc = {"inputs": inputs(MAX_BATCH), "outputs": [{"name": "y"}]}
    status, _, raw = post(mixed, json.dumps(doc).encode())
    assert status == 200 and strict_json(raw)["outputs"][0]["shape"] == [MAX_BATCH, 4]


def test_zero_rows_are_answered_and_do_not_fail_their_batch(mixed: Runtime) -> None:
    """Zero-row requests sent among concurrent ordinary ones: every one gets its own answer."""
    results: list[tuple[int, int, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def client(c: int) -> None:
        rows = 0 if c % 3 == 0 else 1 + c % 2
        doc = {"inputs": inputs(rows), "outputs": [{"name": "y"}, {"name": "wide"}]}
        if rows:
            doc["inputs"][0]["data"] = [float(c)] * 4 * rows
        conn = mixed.conn()
        barrier.wait()
        try:
            for _ in range(5):
                conn.request("POST", "/v2/models/mixed/infer", json.dumps(doc))
                resp = conn.getresponse()
                with lock:
                    results.append((c, resp.status, strict_json(resp.read())))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 60
    for c, status, doc in results:
        assert status == 200, (c, doc)
        y, wide = doc["outputs"]
        if c % 3 == 0:
            assert y == {"name": "y", "datatype": "FP32", "shape": [0, 4], "data": []}
            assert wide["shape"] == [0, WIDE] and wide["data"] == []
        else:
            rows = 1 + c % 2
            assert y["shape"] == [rows, 4]
            assert y["data"] == [float(c), 7.0, float(c), 7.0] * rows


def test_rows_dimension_is_checked_before_the_data_is_decoded(mixed: Runtime) -> None:
    """5000 rows against a limit of 16 is refused, not run as one forward pass."""
    doc = {"inputs": inputs(1, f={"shape": [5000, 4], "data": [0.5] * 20000})}
    assert "5000 rows" in error_of(mixed, json.dumps(doc).encode(), 400)


# -- big and compressed bodies -----------------------------------------------------------------


def test_a_large_body_is_decoded_and_answered(mixed: Runtime) -> None:
    """Past the inline-decode threshold (decoded on the worker thread), still exact."""
    doc = {"inputs": inputs(MAX_BATCH), "outputs": [{"name": "y"}], "id": "x" * 1000}
    doc["inputs"][0]["data"] = [0.25 + k for k in range(4 * MAX_BATCH)]
    body = json.dumps(doc).encode()
    body += b" " * (MAX_BODY - 1000 - len(body))  # trailing whitespace is valid JSON
    status, _, raw = post(mixed, body)
    assert status == 200, raw[:300]
    answer = strict_json(raw)
    assert answer["id"] == "x" * 1000
    want = [0.25 + k if k % 2 == 0 else 7.0 for k in range(4 * MAX_BATCH)]
    assert answer["outputs"][0]["data"] == want
    # the same body gzip-compressed takes the worker-thread path too
    status, _, raw = post(mixed, gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 200 and strict_json(raw)["outputs"][0]["data"] == want
    still_serving(mixed)


def test_every_gzip_member_is_inflated(mixed: Runtime) -> None:
    body = json.dumps({"inputs": inputs(), "outputs": [{"name": "y"}]}).encode()
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    status, _, raw = post(mixed, two_members, {"Content-Encoding": "gzip"})
    assert status == 200, raw[:300]
    assert strict_json(raw)["outputs"][0]["shape"] == [1, 4]


def test_a_gzip_bomb_is_413_and_bytes_after_deflate_are_400(mixed: Runtime) -> None:
    bomb = gzip.compress(b'{"inputs": [' + b" " * (50 * MAX_BODY) + b"]}")
    assert len(bomb) < 17 * 1024
    assert f"exceeds {MAX_BODY} bytes" in error_of(mixed, bomb, 413, {"Content-Encoding": "gzip"})
    # a bomb split across members is bounded in total, not per member
    member = gzip.compress(b" " * (MAX_BODY // 2 + 1))
    assert "exceeds" in error_of(mixed, member * 3, 413, {"Content-Encoding": "gzip"})
    body = json.dumps({"inputs": inputs()}).encode()
    message = error_of(mixed, zlib.compress(body) + b"junk", 400, {"Content-Encoding": "deflate"})
    assert "after the end of the deflate stream" in message
    still_serving(mixed)


# -- malformed values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"inputs":[{"name":"f","datatype":"FP32","shape":[1,4],"data":'
         + b"[" * 5000 + b"]" * 5000 + b"}]}", "nested too deeply"),
        (json.dumps({"inputs": inputs(1, f={"data": [[[[0.1, 0.2]]], [[[0.3, 0.4]]]]})}).encode(),
         None),
        (json.dumps({"inputs": inputs(1, f={"data": [[0.1, 0.2, 0.3], [0.4]]})}).encode(),
         "rows of unequal length"),
    ],
    ids=["bare-brackets", "nested-data", "nested-ok", "ragged"],
)  # fmt: skip
def test_nesting(mixed: Runtime, body: bytes, needle: str | None) -> None:
    if needle is None:  # nested row-major data within the depth bound is accepted
        status, _, raw = post(mixed, body)
        assert status == 200, raw[:300]
        return
    assert needle in error_of(mixed, body, 400)
    still_serving(mixed)


@pytest.mark.parametrize(
    "timeout", [b"1e400", b"1" + b"0" * 400, b"NaN", b"-Infinity", b"-1", b'"soon"', b"true"]
)
def test_a_timeout_that_is_not_a_finite_microsecond_count_is_400(
    mixed: Runtime, timeout: bytes
) -> None:
    body = (b'{"inputs":' + json.dumps(inputs()).encode()
            + b',"parameters":{"timeout":' + timeout + b"}}")  # fmt: skip
    assert "parameter 'timeout' must be a number of microseconds" in error_of(mixed, body, 400)


@pytest.mark.parametrize("header", ["inf", "nan", "-5", "soon"])
def test_a_timeout_header_that_is_not_finite_is_400(mixed: Runtime, header: str) -> None:
    body = json.dumps({"inputs": inputs()}).encode()
    message = error_of(mixed, body, 400, {"modelfleet-timeout-ms": header})
    assert "modelfleet-timeout-ms must be a finite number" in message


@pytest.mark.parametrize("req_id", [5, 1.5, True, None, [1], {"a": "b"}])
def test_a_non_string_id_is_400_and_a_string_id_is_echoed(mixed: Runtime, req_id: Any) -> None:
    doc: dict[str, Any] = {"inputs": inputs(), "outputs": [{"name": "y"}], "id": req_id}
    if req_id is None:  # JSON null: no id, none echoed
        status, _, raw = post(mixed, json.dumps(doc).encode())
        assert status == 200 and "id" not in strict_json(raw)
        doc["id"] = 'quote " and \\ and é'
        status, _, raw = post(mixed, json.dumps(doc).encode())
        assert status == 200 and strict_json(raw)["id"] == 'quote " and \\ and é'
        return
    assert "'id' must be a string" in error_of(mixed, json.dumps(doc).encode(), 400)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"f": {"data": [True, 0.5, 0.5, 0.5]}}, 'input "f": data is not FP32'),
        ({"i": {"data": [1.5, 2, 3, 4]}}, 'input "i": data is not INT64'),
        ({"i": {"data": [1, 2, 3, False]}}, 'input "i": data is not INT64'),
        ({"i": {"data": [2**63, 2, 3, 4]}}, 'input "i": a value is out of range for INT64'),
        ({"b": {"data": [1, 0, 1, 0]}}, 'input "b": data is not BOOL'),
        ({"f": {"data": [None, 0.5, 0.5, 0.5]}}, 'input "f": data is not FP32'),
        ({"f": {"data": ["0.5", 0.5, 0.5, 0.5]}}, 'input "f": data is not FP32'),
    ],
    ids=["bool-in-fp32", "float-in-int64", "bool-in-int64", "int64-overflow", "int-in-bool",
         "null-in-fp32", "string-in-fp32"],
)  # fmt: skip
def test_values_of_the_wrong_type_are_400_naming_the_input(
    mixed: Runtime, change: dict[str, Any], needle: str
) -> None:
    body = json.dumps({"inputs": inputs(1, **change)}).encode()
    assert needle in error_of(mixed, body, 400)


def test_bool_bytes_other_than_0_and_1_are_400(mixed: Runtime) -> None:
    header = json.dumps({"inputs": [
        {**inputs()[0]},
        {**inputs()[1]},
        {"name": "b", "datatype": "BOOL", "shape": [1, 4], "parameters": {"binary_data_size": 4}},
    ]}).encode()  # fmt: skip
    body = header + bytes([1, 0, 2, 0])
    message = error_of(mixed, body, 400, {"Inference-Header-Content-Length": str(len(header))})
    assert 'input "b": BOOL bytes must be 0 or 1' in message


# -- non-finite outputs ------------------------------------------------------------------------


def test_non_finite_outputs_are_null_in_json_and_exact_in_binary(mixed: Runtime) -> None:
    """NaN/Infinity tokens in float input data are accepted (tritonclient writes them); the
    answer stays strict JSON, with null where the value is not finite."""
    body = (b'{"inputs":[{"name":"f","datatype":"FP32","shape":[1,4],'
            b'"data":[NaN,Infinity,-Infinity,0.5]},'
            b'{"name":"i","datatype":"INT64","shape":[1,4],"data":[1,2,3,4]},'
            b'{"name":"b","datatype":"BOOL","shape":[1,4],"data":[true,true,true,true]}],'
            b'"outputs":[{"name":"y"}]}')  # fmt: skip
    status, _, raw = post(mixed, body)
    assert status == 200, raw[:300]
    assert strict_json(raw)["outputs"][0]["data"] == [None, None, None, 0.5]
    binary = body[:-3] + b',"parameters":{"binary_data":true}}]}'
    status, hdrs, raw = post(mixed, binary)
    assert status == 200, raw[:300]
    header_len = int(hdrs["inference-header-content-length"])
    values = struct.unpack("<4f", raw[header_len:])
    assert values[0] != values[0] and values[1:] == (float("inf"), float("-inf"), 0.5)
