"""Manifest parsing and OIP request decoding / response encoding, without a server."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from modelfleet_runtime.errors import BadRequest, LoadError, PayloadTooLarge
from modelfleet_runtime.manifest import parse_manifest
from modelfleet_runtime.protocol import HeaderCache, decode_infer, decompress, encode_response
from modelfleet_runtime.safetensors_io import read_safetensors
from safetensors.torch import save_file

MANIFEST = parse_manifest({
    "format": "torchscript",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]},
               {"name": "ids", "datatype": "INT64", "shape": [-1, -1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]},
                {"name": "ok", "datatype": "BOOL", "shape": [-1]}],
})  # fmt: skip


def test_manifest_defaults_and_signature() -> None:
    assert MANIFEST.weights == "model.pt" and MANIFEST.batched
    assert MANIFEST.signature() == (
        "(x: FP32[-1,2], ids: INT64[-1,-1]) -> (y: FP32[-1], ok: BOOL[-1])"
    )


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([], "mapping"),
        ({"format": "onnx"}, "format"),
        ({"format": "torchscript", "inputs": []}, "inputs"),
        ({"format": "torchscript", "inputs": [{"name": "x", "datatype": "FP32", "shape": "x"}]},
         "shape"),
        ({"format": "torchscript", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}] * 2,
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "duplicate"),
    ],
)  # fmt: skip
def test_bad_manifests(raw: object, needle: str) -> None:
    with pytest.raises(LoadError, match=needle):
        parse_manifest(raw)


def test_decode_mixed_json_and_binary() -> None:
    header = json.dumps({
        "id": "5",
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [2, 3],
             "parameters": {"binary_data_size": 48}},
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
        ],
        "outputs": [{"name": "ok", "parameters": {"binary_data": True}}, {"name": "y"}],
        "parameters": {"timeout": 250000},
    }).encode()  # fmt: skip
    body = bytearray(b" " + header + struct.pack("<6q", *range(6)))[1:]  # misaligned on purpose
    req = decode_infer(body, len(header), MANIFEST)
    assert req.id == "5" and req.rows == 2 and req.timeout_s == 0.25
    assert req.inputs[0].tolist() == [[1, 2], [3, 4]]
    assert req.inputs[1].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert req.outputs == [(1, True), (0, False)]


def _binary_body(x: list[float], ids: list[int], **doc: object) -> tuple[bytearray, int]:
    header = json.dumps({
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [len(x) // 2, 2],
             "parameters": {"binary_data_size": 4 * len(x)}},
            {"name": "ids", "datatype": "INT64", "shape": [len(ids), 1],
             "parameters": {"binary_data_size": 8 * len(ids)}},
        ],
        **doc,
    }).encode()  # fmt: skip
    blob = struct.pack(f"<{len(x)}f", *x) + struct.pack(f"<{len(ids)}q", *ids)
    return bytearray(header + blob), len(header)


def test_header_cache_decodes_like_a_full_decode() -> None:
    """A repeated binary header decodes from the cache: the same request as a full decode,
    with this request's own tensor bytes (only the header is cached)."""
    cache = HeaderCache()
    first, hlen = _binary_body([1, 2, 3, 4], [7, 8], id="a", parameters={"timeout": 5000})
    req1 = decode_infer(first, hlen, MANIFEST, 8, cache)
    assert len(cache) == 1
    again, _ = _binary_body([5, 6, 7, 8], [9, 10], id="a", parameters={"timeout": 5000})
    req2 = decode_infer(again, hlen, MANIFEST, 8, cache)
    full = decode_infer(again, hlen, MANIFEST, 8)
    assert len(cache) == 1
    for got in (req2, full):
        assert got.inputs[0].tolist() == [[5, 6], [7, 8]]
        assert got.inputs[1].tolist() == [[9], [10]]
        assert (got.id, got.rows, got.timeout_s) == ("a", 2, 0.005)
        assert got.outputs == [(0, False), (1, False)]
    assert req1.inputs[0].tolist() == [[1, 2], [3, 4]]  # a view of its own body still
    req2.outputs.append((9, True))  # a caller's list is its own
    assert decode_infer(again, hlen, MANIFEST, 8, cache).outputs == [(0, False), (1, False)]


def test_header_cache_keeps_only_successes_and_is_bounded() -> None:
    cache = HeaderCache(size=2)
    body, hlen = _binary_body([1, 2], [1])
    with pytest.raises(BadRequest, match="max batch size"):
        decode_infer(body, hlen, MANIFEST, 0, cache)
    assert len(cache) == 0
    with pytest.raises(BadRequest, match="exceeds the body"):
        decode_infer(body, len(body) + 1, MANIFEST, 8, cache)
    for n in range(1, 5):
        body, hlen = _binary_body([1.0, 2.0] * n, [1] * n)
        assert decode_infer(body, hlen, MANIFEST, 8, cache).rows == n
    assert len(cache) == 2
    # a header with a JSON-data input is not cached: its data is in the header
    mixed = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "ids", "datatype": "INT64", "shape": [1, 1],
         "parameters": {"binary_data_size": 8}}]}).encode()  # fmt: skip
    cache = HeaderCache()
    decode_infer(bytearray(mixed + struct.pack("<q", 3)), len(mixed), MANIFEST, 8, cache)
    assert len(cache) == 0


def test_header_cache_still_checks_bool_bytes() -> None:
    manifest = parse_manifest({
        "format": "torchscript",
        "inputs": [{"name": "m", "datatype": "BOOL", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    })  # fmt: skip
    header = json.dumps({"inputs": [{"name": "m", "datatype": "BOOL", "shape": [2],
                                     "parameters": {"binary_data_size": 2}}]}).encode()  # fmt: skip
    cache = HeaderCache()
    assert decode_infer(bytearray(header + b"\x01\x00"), len(header), manifest, 8,
                        cache).inputs[0].tolist() == [True, False]  # fmt: skip
    assert len(cache) == 1
    with pytest.raises(BadRequest, match="BOOL bytes must be 0 or 1"):
        decode_infer(bytearray(header + b"\x01\x02"), len(header), manifest, 8, cache)


def test_decode_errors() -> None:
    header = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]},'
        b'{"name":"ids","datatype":"INT64","shape":[1,1],"data":[1]}]}'
    )
    with pytest.raises(BadRequest, match="2 bytes of binary data not claimed"):
        decode_infer(header + b"xx", len(header), MANIFEST)
    with pytest.raises(BadRequest, match="timeout"):
        decode_infer(header[:-1] + b',"parameters":{"timeout":"soon"}}', None, MANIFEST)


def test_encode_json_and_binary_outputs() -> None:
    req = decode_infer(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]},
    ], "outputs": [{"name": "y"}, {"name": "ok", "parameters": {"binary_data": True}}]}).encode(),
        None, MANIFEST)  # fmt: skip
    body, header_len = encode_response(
        "m", "1", req, [torch.tensor([0.5], dtype=torch.float64), torch.tensor([True])], MANIFEST
    )
    assert header_len is not None
    doc = json.loads(body[:header_len])
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1], "data": [0.5]}
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 1}
    assert body[header_len:] == b"\x01"


def test_safetensors_reader_round_trip_and_refusals(tmp_path: Path) -> None:
    tensors = {
        "w": torch.randn(3, 5), "ids": torch.arange(7), "half": torch.randn(2).bfloat16(),
        "empty": torch.zeros(0, 3), "flags": torch.tensor([True, False]),
    }  # fmt: skip
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    loaded = read_safetensors(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    for bad in (b"", b"\x05", struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 2) + b"[]",
                struct.pack("<Q", 60) + b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,4]}}'
                + b"    "):  # fmt: skip
        path.write_bytes(bad)
        with pytest.raises(LoadError):
            read_safetensors(path)


def test_json_the_strict_parser_refuses_still_decodes() -> None:
    # NaN/Infinity (what Python clients such as tritonclient write for float NaNs) and
    # integers beyond 64 bits are not strict JSON; they must decode as before.
    body = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[NaN,-Infinity]},'
        b'{"name":"ids","datatype":"INT64","shape":[1,1],"data":[3]}],'
        b'"parameters":{"big":123456789012345678901234567890}}'
    )
    req = decode_infer(body, None, MANIFEST)
    x = req.inputs[0]
    assert torch.isnan(x[0, 0]) and x[0, 1].item() == float("-inf")
    with pytest.raises(BadRequest, match="malformed JSON"):
        decode_infer(b'{"inputs": [', None, MANIFEST)


def one_row(**extra: object) -> bytes:
    return json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]},
    ], **extra}).encode()  # fmt: skip


def test_encoded_answers_are_strict_json_with_null_for_non_finite_values() -> None:
    req = decode_infer(one_row(id="r1"), None, MANIFEST)
    values = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.5])
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        body, header_len = encode_response(
            "m", "1", req, [values.to(dtype), torch.tensor([True, False])], MANIFEST
        )
        assert header_len is None
        doc = json.loads(body, parse_constant=lambda token: pytest.fail(f"{token} in answer"))
        assert doc["id"] == "r1"
        assert doc["outputs"][0]["data"] == [None, None, None, 1.5]
        assert doc["outputs"][1]["data"] == [True, False]


def test_answer_size_bound() -> None:
    req = decode_infer(one_row(), None, MANIFEST)
    outputs = [torch.zeros(1000), torch.zeros(1000, dtype=torch.bool)]
    body, _ = encode_response("m", "1", req, outputs, MANIFEST, max_bytes=20_000)
    assert len(body) <= 20_000
    with pytest.raises(PayloadTooLarge, match="exceeds the 3000-byte limit"):
        encode_response("m", "1", req, outputs, MANIFEST, max_bytes=3000)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, 'output "y" is requested more than once'),
        ({"outputs": [{"name": 5}]}, 'unknown output "5"'),
        ({"id": 7}, "'id' must be a string (got a JSON number)"),
        ({"id": ["a"]}, "'id' must be a string (got a JSON array)"),
        ({"parameters": [1]}, "'parameters' must be a JSON object"),
        ({"parameters": {"timeout": 2**64}}, "parameter 'timeout'"),
        ({"parameters": {"timeout": -1}}, "parameter 'timeout'"),
    ],
)
def test_request_fields_are_validated(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(BadRequest) as err:
        decode_infer(one_row(**extra), None, MANIFEST)
    assert needle in str(err.value)


def test_rows_above_the_limit_are_refused() -> None:
    assert decode_infer(one_row(), None, MANIFEST, max_rows=1).rows == 1
    body = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [1] * 6},
        {"name": "ids", "datatype": "INT64", "shape": [3, 1], "data": [1] * 3},
    ]}).encode()  # fmt: skip
    with pytest.raises(BadRequest, match="3 rows exceed this server's max batch size of 2"):
        decode_infer(body, None, MANIFEST, max_rows=2)
    empty = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [0, 2], "data": []},
        {"name": "ids", "datatype": "INT64", "shape": [0, 1], "data": []},
    ]}).encode()  # fmt: skip
    req = decode_infer(empty, None, MANIFEST, max_rows=2)
    assert req.rows == 0 and req.inputs[0].shape == (0, 2)


def test_decompress_members_and_limits() -> None:
    body = one_row()
    two = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert decompress(bytearray(two), "gzip", 1 << 20) == body
    assert decompress(bytearray(zlib.compress(body)), "deflate", 1 << 20) == body
    raw = zlib.compressobj(wbits=-15)
    raw_deflate = raw.compress(body) + raw.flush()
    assert decompress(bytearray(raw_deflate), "deflate", 1 << 20) == body
    with pytest.raises(PayloadTooLarge):
        decompress(bytearray(gzip.compress(b"0" * 5000) * 3), "gzip", 12_000)
    with pytest.raises(BadRequest, match="after the end of the deflate stream"):
        decompress(bytearray(zlib.compress(body) + b"x"), "deflate", 1 << 20)
    with pytest.raises(BadRequest, match="truncated"):
        decompress(bytearray(gzip.compress(body)[:-4]), "gzip", 1 << 20)


def test_big_json_data_is_converted_in_chunks_and_checked_in_every_chunk() -> None:
    n = 200_000  # past one conversion chunk (65 536 values)
    manifest = parse_manifest({
        "format": "torchscript",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    })  # fmt: skip
    data: list[object] = [float(i) for i in range(n)]

    def body() -> bytes:
        return json.dumps({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, n], "data": data},
        ]}).encode()  # fmt: skip

    assert decode_infer(body(), None, manifest).inputs[0].flatten().tolist() == data
    data[150_000] = "late"
    with pytest.raises(BadRequest, match=r'input "x": data is not FP32 .* got "late"'):
        decode_infer(body(), None, manifest)
