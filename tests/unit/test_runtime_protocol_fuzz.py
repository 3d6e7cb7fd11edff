"""Property-based tests of the OIP payload path: whatever a client sends, decode_infer,
decompress and encode_response answer a 4xx ServingError or the exact tensors, never another
exception; valid requests of every datatype round-trip bit for bit, and answers read back with
tritonclient's own parser (an independent implementation of the protocol)."""

from __future__ import annotations

import fractions
import gzip
import json
import math
import os
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from modelfleet_runtime.errors import ServingError
from modelfleet_runtime.manifest import DATATYPES, parse_manifest
from modelfleet_runtime.protocol import (
    TORCH_DTYPES,
    decode_infer,
    decompress,
    dumps,
    encode_response,
)

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
}  # fmt: skip
NAMES = {dt: dt.lower() for dt in DATATYPES}
# one batched input and output per datatype, plus a fixed-shape one
MANIFEST = parse_manifest({
    "format": "torchscript",
    "inputs": [{"name": NAMES[dt], "datatype": dt, "shape": [-1, -1]} for dt in DATATYPES]
    + [{"name": "fixed", "datatype": "FP32", "shape": [-1, 2, 3]}],
    "outputs": [{"name": NAMES[dt], "datatype": dt, "shape": [-1, -1]} for dt in DATATYPES],
})  # fmt: skip
SMALL = parse_manifest({
    "format": "torchscript",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]},
               {"name": "b", "datatype": "BOOL", "shape": [-1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
})  # fmt: skip
# MODELFLEET_FUZZ_EXAMPLES=5000 for a deeper run than the default suite's
FUZZ = settings(
    max_examples=int(os.environ.get("MODELFLEET_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_or_4xx(body: bytes, header_len: int | None, manifest: Any = SMALL) -> Any:
    """The contract: an InferRequest, or a ServingError with a 4xx status whose message is
    one line of text (no traceback) that survives JSON encoding."""
    try:
        return decode_infer(bytearray(body), header_len, manifest, 16)
    except ServingError as exc:
        assert 400 <= exc.status < 500, exc
        assert "Traceback" not in exc.message
        json.loads(dumps({"error": exc.message}))  # the error body is always valid JSON
        return None


# -- arbitrary documents and bytes -------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.integers(min_value=-(2**70), max_value=2**70)
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=5),
    max_leaves=30,
)  # fmt: skip


@FUZZ
@given(doc=json_values)
def test_any_json_document_is_a_request_or_a_4xx(doc: Any) -> None:
    decode_or_4xx(json.dumps(doc).encode(), None)


@FUZZ
@given(body=st.binary(max_size=300), header_len=st.none() | st.integers(-5, 400))
@example(body=b'{"inputs":[{"name":"\\ud800"}]}', header_len=None)
@example(body='{"inputs":[]}'.encode("utf-16"), header_len=None)
@example(body=b'{"inputs":[' + b"[" * 3000, header_len=None)
def test_any_bytes_are_a_request_or_a_4xx(body: bytes, header_len: int | None) -> None:
    decode_or_4xx(body, header_len)


dims = st.integers(-3, 5) | st.sampled_from([2**31, 2**62, 2**63, 2**64, 10**30, 0])
odd_values: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, -1, 0, 1, 1.5, -0.0, float("nan"), "4", [], {}, [4], 2**64, 10**20]
)
input_items = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "b", "z", "", "\ud800"]) | json_scalars},
    optional={
        "datatype": st.sampled_from(["FP32", "BOOL", "fp32", "INT64", "BYTES"]) | json_scalars,
        "shape": st.lists(dims, max_size=4) | json_values,
        "data": st.lists(json_scalars, max_size=12) | json_values
        | st.lists(st.lists(st.floats(), max_size=3), max_size=3),
        "parameters": st.fixed_dictionaries({}, optional={
            "binary_data_size": odd_values | st.integers(-(2**65), 2**65),
            "binary_data": odd_values,
        }) | json_values,
    },
)  # fmt: skip
requests = st.fixed_dictionaries(
    {"inputs": st.lists(input_items, max_size=4)},
    optional={
        "id": json_scalars,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "q"])
                                                   | json_scalars}), max_size=3) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={
            "timeout": odd_values | st.floats() | st.integers(-(2**70), 2**70),
            "binary_data_output": odd_values,
        }) | json_values,
    },
)  # fmt: skip


@FUZZ
@given(doc=requests, tail=st.binary(max_size=64), split=st.booleans())
def test_malformed_requests_are_4xx(doc: dict[str, Any], tail: bytes, split: bool) -> None:
    header = json.dumps(doc).encode("utf-8", "surrogatepass")
    decode_or_4xx(header + tail, len(header) if split or tail else None)


# -- valid requests round-trip -----------------------------------------------------------------


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    dtype = np.dtype(NUMPY[datatype])
    shape = st.tuples(st.integers(0, 3), st.integers(0, 5))
    if datatype == "BF16":  # hypothesis has no bfloat16: any float32 bit pattern, narrowed
        return hnp.arrays(np.uint16, shape).map(lambda a: a.view(ml_dtypes.bfloat16))
    if datatype.startswith("FP"):
        return hnp.arrays(dtype, shape, elements=st.floats(width=dtype.itemsize * 8))
    return hnp.arrays(dtype, shape)


def same(got: torch.Tensor, want: np.ndarray[Any, Any]) -> bool:
    """Bit-exact, NaN payloads aside (JSON NaN is one NaN)."""
    if want.dtype == ml_dtypes.bfloat16:
        got_np = got.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        got_np = got.numpy()
    if got_np.shape != want.shape or not np.array_equal(got_np, want, equal_nan=True):
        return False
    wide, ref = got_np.astype(np.float64), want.astype(np.float64)
    numbers = ~np.isnan(ref)  # -0.0 stays -0.0
    return bool((np.signbit(wide[numbers]) == np.signbit(ref[numbers])).all())


sample = st.sampled_from(DATATYPES).flatmap(lambda dt: st.tuples(st.just(dt), arrays(dt)))


@FUZZ
@given(items=st.lists(st.tuples(sample, st.booleans()), min_size=1, max_size=4,
                      unique_by=lambda t: t[0][0]),
       rows=st.integers(0, 3))  # fmt: skip
def test_valid_requests_round_trip_exactly(
    items: list[tuple[tuple[str, np.ndarray[Any, Any]], bool]], rows: int
) -> None:
    """Every datatype, JSON or binary per input, empty tensors, binary data at any offset."""
    manifest = parse_manifest({
        "format": "torchscript",
        "inputs": [{"name": NAMES[dt], "datatype": dt, "shape": [-1, -1]} for (dt, _), _b in items],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    })  # fmt: skip
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    arrays_in: list[np.ndarray[Any, Any]] = []
    for (dt, raw), binary in items:
        arr = np.resize(raw, (rows, raw.shape[1])) if raw.size else raw.reshape(rows, 0)
        if dt == "BF16" or binary:
            blob = arr.tobytes()
            item = {"name": NAMES[dt], "datatype": dt, "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
            blobs.append(blob)
        else:
            item = {"name": NAMES[dt], "datatype": dt, "shape": list(arr.shape),
                    "data": arr.tolist()}  # fmt: skip
        inputs.append(item)
        arrays_in.append(arr)
    header = json.dumps({"inputs": inputs}).encode()
    body = bytearray(header + b"".join(blobs))
    req = decode_infer(body, len(header) if blobs else None, manifest, 16)
    assert req.rows == rows
    for got, want in zip(req.inputs, arrays_in, strict=True):
        assert same(got, want), (got, want)


finite_numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60)


@FUZZ
@given(values=st.lists(finite_numbers, min_size=1, max_size=20))
@example(values=[1 + 2**-11 + 2**-40, 1 + 2**-8 + 2**-40, 65520.0, 3.3961e38, 1e-50, -(2**-149)])
def test_json_floats_are_rounded_once_to_fp16_and_bf16(values: list[float]) -> None:
    """A decimal JSON number goes to the nearest FP16/BF16 value in one rounding (numpy's for
    FP16; the exact rational nearest, ties to even, for BF16), not through float32."""
    for dt in ("FP16", "BF16", "FP32"):
        manifest = parse_manifest({
            "format": "torchscript",
            "inputs": [{"name": "x", "datatype": dt, "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": dt, "shape": [-1]}],
        })  # fmt: skip
        doc = {"inputs": [{"name": "x", "datatype": dt, "shape": [len(values)], "data": values}]}
        got = decode_infer(json.dumps(doc).encode(), None, manifest).inputs[0]
        if dt == "BF16":
            want = [nearest_bf16(float(v)) for v in values]
            assert got.float().tolist() == want, (values, got)
        else:
            with np.errstate(over="ignore"):
                ref = np.array([float(v) for v in values], dtype=np.float64).astype(NUMPY[dt])
            assert np.array_equal(got.numpy(), ref), (values, got)


def nearest_bf16(value: float) -> float:
    """The bfloat16 nearest to value, ties to even, by exact arithmetic over all candidates."""
    if value == 0:
        return value
    exact = fractions.Fraction(value)
    with np.errstate(over="ignore"):
        near = np.array(value, np.float32)  # a start near the answer
    if np.isinf(near):
        near = np.array(math.copysign(3.3895313892515355e38, value), np.float32)
    base = near.view(np.uint32) & 0xFFFF0000
    best: tuple[fractions.Fraction, int, float] | None = None
    for step in range(-2, 3):
        bits = (int(base) + (step << 16)) & 0xFFFFFFFF
        cand = float(np.array(bits, dtype=np.uint32).view(np.float32))
        if math.isnan(cand):
            continue
        if math.isinf(cand):  # overflow: inf if past the midpoint to 2**128
            limit = fractions.Fraction(2**128 - 2 ** (128 - 9))
            if abs(exact) >= limit:
                return math.copysign(math.inf, value)
            continue
        err = abs(fractions.Fraction(cand) - exact)
        key = (err, (bits >> 16) & 1, cand)
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    return best[2]


# -- answers read back by tritonclient ---------------------------------------------------------


@FUZZ
@given(items=st.lists(st.tuples(sample, st.booleans()), min_size=1, max_size=5,
                      unique_by=lambda t: t[0][0]),
       req_id=st.none() | st.text(max_size=20))  # fmt: skip
def test_answers_parse_back_with_tritonclient(
    items: list[tuple[tuple[str, np.ndarray[Any, Any]], bool]], req_id: str | None
) -> None:
    """Binary outputs are bit-exact; JSON outputs are exact for finite values and null (read
    back as NaN) for NaN and +-Inf; the body is strict JSON."""
    names = [spec.name for spec in MANIFEST.outputs]
    outputs = []
    chosen = []
    for spec in MANIFEST.outputs:
        outputs.append(torch.zeros((1, 1), dtype=TORCH_DTYPES[spec.datatype]))
    for (dt, arr), binary in items:
        index = names.index(NAMES[dt])
        if dt == "BF16":
            outputs[index] = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        else:
            outputs[index] = torch.from_numpy(arr.copy())
        chosen.append({"name": NAMES[dt], "parameters": {"binary_data": binary}})
    req = decode_infer(json.dumps({
        "inputs": [{"name": "fp32", "datatype": "FP32", "shape": [1, 1], "data": [0]}]
        + [{"name": n, "datatype": d, "shape": [1, 0], "data": []}
           for d, n in NAMES.items() if d != "FP32"]
        + [{"name": "fixed", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}],
        "outputs": chosen, **({"id": req_id} if req_id is not None else {}),
    }).encode(), None, MANIFEST)  # fmt: skip
    body, header_len = encode_response("m", "1", req, outputs, MANIFEST)
    json.loads(body[:header_len], parse_constant=lambda t: pytest.fail(f"{t} in the answer"))
    result = triton.InferResult.from_response_body(body, header_length=header_len)
    assert result.get_response()["id" if req_id is not None else "model_name"] == (
        req_id if req_id is not None else "m"
    )
    for (dt, arr), binary in items:
        if dt == "BF16" and not binary:
            # tritonclient's as_numpy cannot read null into ml_dtypes.bfloat16 (it can for
            # FP16/32/64): read the JSON as it is
            out = result.get_output(NAMES[dt])
            assert out is not None
            data = [math.nan if v is None else v for v in out["data"]]
            got = np.array(data, dtype=np.float32).reshape(out["shape"])
            want = arr.astype(np.float32)
        else:
            got, want = result.as_numpy(NAMES[dt]), arr
        assert got is not None and got.shape == want.shape
        if binary or not dt.startswith(("FP", "BF")):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        else:
            wide = want.astype(np.float64)
            finite = np.isfinite(wide)
            assert np.array_equal(got.astype(np.float64)[finite], wide[finite])
            assert np.isnan(got.astype(np.float64)[~finite]).all()


# -- compressed bodies -------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2000), encoding=st.sampled_from(
    ["gzip", "x-gzip", "deflate", "GZIP", " gzip ", "identity", "", "gzip, gzip", "br", "zstd",
     "compress", "gzip;q=1", "deflate, identity", "\x00"]), limit=st.integers(1, 4000))  # fmt: skip
def test_decompress_is_bounded_and_only_fails_4xx(data: bytes, encoding: str, limit: int) -> None:
    for body in (data, gzip.compress(data), zlib.compress(data), gzip.compress(data) + data[:7]):
        try:
            out = decompress(bytearray(body), encoding, limit)
        except ServingError as exc:
            assert exc.status in (400, 413, 415), exc
            continue
        if encoding.strip().lower() not in ("", "identity"):
            assert len(out) <= limit
        if body is not data and encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
            assert out == data or body[:2] != b"\x1f\x8b" or not data


@given(size=st.integers(1, 200_000), members=st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_bombs_stop_at_the_limit(size: int, members: int) -> None:
    limit = 50_000
    body = gzip.compress(b"\0" * size) * members
    try:
        out = decompress(bytearray(body), "gzip", limit)
    except ServingError as exc:
        assert exc.status == 413 and size * members > limit
    else:
        assert len(out) == size * members <= limit


def test_shapes_torch_cannot_hold_are_400_even_when_empty() -> None:
    for shape in ([0, 2**63], [0, 2**40, 2**40], [2**63, 0], [0, 2**64]):
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []},
                          {"name": "b", "datatype": "BOOL", "shape": [0], "data": []}]}  # fmt: skip
        assert decode_or_4xx(json.dumps(doc).encode(), None) is None
    ok = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**40], "data": []},
                     {"name": "b", "datatype": "BOOL", "shape": [0], "data": []}]}  # fmt: skip
    assert decode_infer(json.dumps(ok).encode(), None, SMALL).rows == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"id":"\\ud800","inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[NaN]},'
         b'{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}]}', "'id' holds a lone"),
        (b'{"inputs":[{"name":"\\udfff","datatype":"FP32","shape":[1],"data":[NaN]}]}',
         "an input name holds a lone"),
        ('{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[true]}]}'
         .encode("utf-16"), "not valid UTF-8"),
        (b'{"inputs":[{"name":"x","datatype":["FP32"],"shape":[1,1],"data":[1]}]}',
         'datatype ["FP32"] does not match'),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[1' + b"0" * 5000
         + b"]}]}", "more than 4300 digits"),
    ],
    ids=["surrogate-id", "surrogate-name", "utf16", "datatype-list", "huge-number"],
)  # fmt: skip
def test_regressions_found_by_fuzzing(body: bytes, needle: str) -> None:
    with pytest.raises(ServingError) as err:
        decode_infer(body, None, SMALL)
    assert err.value.status == 400 and needle in err.value.message


def test_binary_data_size_must_be_a_plain_byte_count() -> None:
    header = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        {"name": "b", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": True}},
    ]}).encode()  # fmt: skip
    with pytest.raises(ServingError, match="binary_data_size must be a byte count"):
        decode_infer(header + b"\x01", len(header), SMALL)
    both = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True],
         "parameters": {"binary_data_size": 1}},
    ]}).encode()  # fmt: skip
    with pytest.raises(ServingError, match='has both "data" and binary_data_size'):
        decode_infer(both + b"\x01", len(both), SMALL)
    no_header = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "parameters": {"binary_data_size": 4}},
        {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]},
    ]}).encode()  # fmt: skip
    with pytest.raises(ServingError, match="Inference-Header-Content-Length missing"):
        decode_infer(no_header, None, SMALL)


def test_an_empty_outputs_list_means_every_output() -> None:
    body = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]},
    ], "outputs": []}).encode()  # fmt: skip
    assert decode_infer(body, None, SMALL).outputs == [(0, False)]


def test_error_documents_never_fail_to_encode() -> None:
    assert json.loads(dumps({"error": 'unknown input "\ud800"'})) == {
        "error": 'unknown input "\ufffd\ufffd\ufffd"'
    }


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["array", "object"])
@pytest.mark.parametrize("where", ["data", "datatype", "output"])
def test_values_nested_near_the_depth_limit_are_quoted_without_recursion(
    opener: bytes, where: str
) -> None:
    """orjson parses 1024 levels; quoting such a value in the error message with the stdlib
    encoder (which stops near 1000) raised RecursionError: a 500."""
    closer = b"]" if opener == b"[" else b"}"
    deep = opener * 1015 + b"1" + closer * 1015
    x = b'{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}'
    b = b'{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}'
    if where == "data":
        x = x.replace(b"[1,2]}", b"[1," + deep + b"]}")
    elif where == "datatype":
        x = x.replace(b'"FP32"', deep)
    body = b'{"inputs":[' + x + b"," + b + b"]"
    body += b',"outputs":[{"name":' + deep + b"}]}" if where == "output" else b"}"
    with pytest.raises(ServingError) as err:
        decode_infer(body, None, SMALL)
    assert err.value.status == 400 and "nested too deeply to show" in err.value.message


@pytest.mark.parametrize(
    ("where", "key"),
    [("input", "shared_memory_region"), ("output", "classification"),
     ("output", "shared_memory_region"), ("input", "shared_memory_byte_size")],
)  # fmt: skip
def test_unsupported_extensions_are_refused_not_ignored(where: str, key: str) -> None:
    """Ignoring these would answer something else than asked (raw scores for top-k labels)."""
    x: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}
    doc: dict[str, Any] = {"inputs": [x, {"name": "b", "datatype": "BOOL", "shape": [1],
                                          "data": [True]}]}  # fmt: skip
    if where == "input":
        x["parameters"] = {key: "region0"}
    else:
        doc["outputs"] = [{"name": "y", "parameters": {key: 3}}]
    with pytest.raises(ServingError) as err:
        decode_infer(json.dumps(doc).encode(), None, SMALL)
    assert err.value.status == 400 and f"parameter '{key}'" in err.value.message
    assert "does not support" in err.value.message
