"""Hostile and edge-value payloads against a real runtime process over real sockets, and a
differential test against tritonclient (an independent OIP implementation) for every datatype.

Every hostile request must get a clear 4xx (or 503/504 where that is the answer) and leave the
server serving: a normal request right after succeeds and memory stays bounded.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from conftest import Runtime
from runtime_models import build_slow_dir, write_manifest
from torch import nn

pytestmark = pytest.mark.runtime

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16")  # fmt: skip
NUMPY: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
}  # fmt: skip
MAX_BODY = 4 * 1024 * 1024
MAX_BATCH = 8
WIDTH = 9  # values per row of every input


class Identity(nn.Module):
    """Every input back as its own output, plus affine = fp32 * 2 + 1."""

    def forward(  # noqa: PLR0917 (one positional input per datatype: the model signature)
        self, b: torch.Tensor, u8: torch.Tensor, u16: torch.Tensor, u32: torch.Tensor,
        u64: torch.Tensor, i8: torch.Tensor, i16: torch.Tensor, i32: torch.Tensor,
        i64: torch.Tensor, f16: torch.Tensor, f32: torch.Tensor, f64: torch.Tensor,
        bf16: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        return (b, u8, u16, u32, u64, i8, i16, i32, i64, f16, f32, f64, bf16, f32 * 2.0 + 1.0)


def name(datatype: str) -> str:
    return datatype.lower()


@pytest.fixture(scope="module")
def ident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    model_dir: Path = tmp_path_factory.mktemp("adversarial") / "ident"
    model_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Identity()).save(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    specs = [{"name": name(dt), "datatype": dt, "shape": [-1, WIDTH]} for dt in DATATYPES]
    write_manifest(
        model_dir, format="torchscript", weights="model.pt", name="ident", inputs=specs,
        outputs=[*specs, {"name": "affine", "datatype": "FP32", "shape": [-1, WIDTH]}],
    )  # fmt: skip
    args = ["--max-body-bytes", str(MAX_BODY), "--max-batch-size", str(MAX_BATCH),
            "--max-batch-delay-ms", "2", "--max-queue-size", "64"]  # fmt: skip
    server = Runtime(model_dir, *args)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def edge_values(datatype: str, rows: int) -> np.ndarray[Any, Any]:
    """WIDTH values per row that sit on the edges of the datatype."""
    dtype = NUMPY[datatype]
    if datatype == "BOOL":
        row: list[Any] = [True, False, True, True, False, False, True, False, True]
        return np.array([row] * rows, dtype=np.bool_)
    if datatype.startswith(("UINT", "INT")):
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
        row = [lo, hi, 0, 1, hi - 1, lo + 1, 7, hi // 3, 2]
        return np.array([row] * rows, dtype=dtype) ^ np.arange(rows, dtype=dtype)[:, None]
    finfo: Any = ml_dtypes.finfo(dtype) if datatype == "BF16" else np.finfo(dtype)  # type: ignore[no-untyped-call]
    row = [0.0, -0.0, float(finfo.smallest_subnormal), -float(finfo.smallest_subnormal),
           float(finfo.max), float(finfo.min), 1 / 3, float("inf"), float("nan")]  # fmt: skip
    out = np.array([row] * rows, dtype=np.float64)
    out[:, 6] += np.arange(rows)
    return out.astype(dtype)


def client(server: Runtime) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60.0)


def triton_infer(
    server: Runtime, arrays: dict[str, np.ndarray[Any, Any]], binary_in: bool, binary_out: bool
) -> Any:
    inputs = []
    for dt, arr in arrays.items():
        item = triton.InferInput(name(dt), list(arr.shape), dt)
        item.set_data_from_numpy(arr, binary_data=binary_in or dt == "BF16")  # BF16: binary only
        inputs.append(item)
    outputs = [triton.InferRequestedOutput(name(dt), binary_data=binary_out) for dt in arrays]
    outputs.append(triton.InferRequestedOutput("affine", binary_data=binary_out))
    with client(server) as c:
        return c.infer("ident", inputs, outputs=outputs)


def readback(result: Any, dt: str) -> np.ndarray[Any, Any]:
    if dt != "BF16":
        got = result.as_numpy(name(dt))
        assert got is not None
        return np.asarray(got)
    out = result.get_output(name(dt))  # as_numpy cannot read null into bfloat16 (JSON)
    if "data" not in out:
        return np.asarray(result.as_numpy(name(dt)))
    data = [np.nan if v is None else v for v in out["data"]]
    return np.array(data, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(out["shape"])


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_every_datatype_against_tritonclient(
    ident: Runtime, binary_in: bool, binary_out: bool
) -> None:
    """Edge values of every datatype (min/max ints, -0.0, subnormals, +-max, Inf, NaN) sent
    and read back by tritonclient: binary answers are bit-exact; JSON answers are exact where
    finite and NaN (null on the wire) where not; the affine output matches torch locally."""
    rows = 3
    arrays = {dt: edge_values(dt, rows) for dt in DATATYPES}
    result = triton_infer(ident, arrays, binary_in, binary_out)
    for dt, arr in arrays.items():
        got = readback(result, dt)
        assert got.shape == arr.shape and got.dtype == arr.dtype, dt
        if binary_out or not dt.startswith(("FP", "BF")):
            assert got.tobytes() == arr.tobytes(), (dt, got, arr)
            continue
        wide, want = got.astype(np.float64), arr.astype(np.float64)
        finite = np.isfinite(want)
        assert np.array_equal(wide[finite], want[finite]), (dt, got, arr)
        assert (np.signbit(wide[finite]) == np.signbit(want[finite])).all(), dt  # -0.0 kept
        assert np.isnan(wide[~finite]).all(), dt
    f32 = torch.from_numpy(arrays["FP32"])
    want_affine = (f32 * 2.0 + 1.0).numpy()
    got_affine = np.asarray(result.as_numpy("affine"))
    if binary_out:
        assert got_affine.tobytes() == want_affine.tobytes()
    else:
        finite = np.isfinite(want_affine)
        assert np.array_equal(got_affine[finite], want_affine[finite])
        assert np.isnan(got_affine[~finite]).all()


def test_concurrent_clients_of_every_datatype_are_batched_exactly(ident: Runtime) -> None:
    """Requests merged into one forward pass get their own rows back, for every dtype."""
    failures: list[str] = []
    barrier = threading.Barrier(8)

    def one(c: int) -> None:
        rows = 1 + c % 3
        arrays = {dt: np.roll(edge_values(dt, rows), c, axis=1) for dt in DATATYPES}
        barrier.wait()
        for _ in range(3):
            result = triton_infer(ident, arrays, binary_in=c % 2 == 0, binary_out=True)
            for dt, arr in arrays.items():
                if readback(result, dt).tobytes() != arr.tobytes():
                    failures.append(f"client {c} {dt}")

    threads = [threading.Thread(target=one, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures


# -- hostile requests --------------------------------------------------------------------------


def good_inputs(rows: int = 1) -> list[dict[str, Any]]:
    out = []
    for dt in DATATYPES:
        if dt == "BOOL":
            data: list[Any] = [True] * (rows * WIDTH)
        elif dt.startswith(("FP", "BF")):
            data = [0.5] * (rows * WIDTH)
        else:
            data = [3] * (rows * WIDTH)
        out.append({"name": name(dt), "datatype": dt, "shape": [rows, WIDTH], "data": data})
    return out


def post(server: Runtime, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    return server.request("POST", "/v2/models/ident/infer", body, headers)


def refused(server: Runtime, body: bytes, status: int | tuple[int, ...],
            headers: dict[str, str] | None = None) -> str:  # fmt: skip
    got, hdrs, raw = post(server, body, headers)
    assert got in ((status,) if isinstance(status, int) else status), raw[:300]
    assert hdrs["content-type"] == "application/json"
    doc = json.loads(raw)
    assert set(doc) == {"error"} and "Traceback" not in doc["error"], doc
    return str(doc["error"])


def still_serving(server: Runtime) -> None:
    doc = {"inputs": good_inputs(), "outputs": [{"name": "affine"}]}
    status, _, raw = post(server, json.dumps(doc).encode())
    assert status == 200, raw[:300]
    assert json.loads(raw)["outputs"][0]["data"] == [2.0] * WIDTH


def with_input(dt: str, **change: Any) -> list[dict[str, Any]]:
    items = good_inputs()
    for item in items:
        if item["datatype"] == dt:
            item.update(change)
            for key in [k for k, v in change.items() if v is None]:
                del item[key]
    return items


def rss_kib(server: Runtime) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        (with_input("FP32", shape=[10**9, 10**9]), 'input "fp32": shape [1000000000,1000000000]'),
        (with_input("FP32", shape=[1e9, 1e9]), '"shape" must be a list of non-negative integers'),
        (with_input("FP32", shape=[-1, WIDTH]), '"shape" must be a list of non-negative integers'),
        (with_input("FP32", shape=[2**40, 2**40]), 'is too large for a tensor'),
        (with_input("FP32", shape=[0, 2**63]), '"shape" [0, 9223372036854775808] is too large'),
        (with_input("FP32", shape="1,9"), '"shape" must be a list'),
        (with_input("FP32", shape=None), '"shape" must be a list'),
        (with_input("FP32", datatype="FP64"), 'input "fp32": datatype "FP64" does not match'),
        (with_input("FP32", datatype="fp32"), 'datatype "fp32" does not match'),
        (with_input("FP32", datatype={"x": 1}), 'datatype {"x": 1} does not match'),
        (with_input("INT8", data=[200] * WIDTH), 'input "int8": a value is out of range'),
        (with_input("UINT64", data=[-1] * WIDTH), 'input "uint64": a value is out of range'),
        (with_input("FP16", data=["1"] * WIDTH), 'input "fp16": data is not FP16'),
        (with_input("FP32", data=None), 'input "fp32": needs "data"'),
        (with_input("FP32", data={"a": 1}), 'input "fp32": needs "data"'),
        (with_input("FP32", name="nope"), 'unknown input "nope"'),
        (good_inputs()[1:], "missing input(s) bool"),
        (good_inputs() + good_inputs()[:1], 'input "bool" given twice'),
        ([*good_inputs(), {"name": "extra", "datatype": "FP32", "shape": [1], "data": [1]}],
         'unknown input "extra"'),
        ([*good_inputs()[:-1], {**good_inputs(2)[-1]}], 'input "bf16": batch size 2 differs'),
        (good_inputs(MAX_BATCH + 1), f"exceed this server's max batch size of {MAX_BATCH}"),
        ([], "non-empty 'inputs' list"),
        ([1, 2], "every input needs a 'name'"),
    ],
    ids=["huge-shape", "float-shape", "negative-dim", "overflow-product", "empty-overflow",
         "string-shape", "no-shape", "wrong-datatype", "lowercase-datatype", "object-datatype",
         "int8-overflow", "uint64-negative", "string-fp16", "no-data", "object-data",
         "unknown-name", "missing", "duplicate", "extra", "batch-mismatch", "too-many-rows",
         "no-inputs", "non-object-inputs"],
)  # fmt: skip
def test_hostile_inputs_are_400(ident: Runtime, inputs: list[Any], needle: str) -> None:
    assert needle in refused(ident, json.dumps({"inputs": inputs}).encode(), 400)
    still_serving(ident)


def binary_body(
    size: Any, blob: bytes, header_len: str | None = None
) -> tuple[bytes, dict[str, str]]:
    items = with_input("FP32", data=None, parameters={"binary_data_size": size})
    header = json.dumps({"inputs": items}).encode()
    return header + blob, {"Inference-Header-Content-Length": header_len or str(len(header))}


@pytest.mark.parametrize(
    ("size", "blob", "header_len", "needle"),
    [
        (4 * WIDTH + 4, b"\0" * (4 * WIDTH + 4), None, "needs 36"),
        (4 * WIDTH - 4, b"\0" * (4 * WIDTH - 4), None, "needs 36"),
        (4 * WIDTH, b"\0" * 8, None, "overruns the body"),
        (4 * WIDTH, b"\0" * (4 * WIDTH + 3), None, "3 bytes of binary data not claimed"),
        (-4, b"\0" * 36, None, "binary_data_size must be a byte count"),
        (2**63, b"\0" * 36, None, "overruns the body"),
        (10**30, b"\0" * 36, None, "binary_data_size must be a byte count"),
        ("36", b"\0" * 36, None, "binary_data_size must be a byte count"),
        (True, b"\0" * 36, None, "binary_data_size must be a byte count"),
        (36.0, b"\0" * 36, None, "binary_data_size must be a byte count"),
        (36, b"\0" * 36, "9" * 5000, "Inference-Header-Content-Length must be a byte count"),
        (36, b"\0" * 36, "-5", "Inference-Header-Content-Length must be a byte count"),
        (36, b"\0" * 36, "1.5", "Inference-Header-Content-Length must be a byte count"),
        (36, b"\0" * 36, "99999999999", "exceeds the body"),
        (36, b"\0" * 36, "10", "malformed JSON"),
    ],
    ids=["bigger", "smaller", "past-body", "unclaimed", "negative", "2^63", "1e30", "string",
         "true", "float", "header-5000-digits", "header-negative", "header-float",
         "header-past-body", "header-cuts-json"],
)  # fmt: skip
def test_lying_binary_sizes_are_400(
    ident: Runtime, size: Any, blob: bytes, header_len: str | None, needle: str
) -> None:
    body, headers = binary_body(size, blob, header_len)
    assert needle in refused(ident, body, 400, headers)
    still_serving(ident)


@pytest.mark.parametrize(
    "params",
    [[1], "x", 5, None, {"timeout": None}, {"timeout": [1]}, {"timeout": {"a": 1}},
     {"timeout": 1e400}, {"binary_data_output": "yes"}, {"binary_data_output": None},
     {"unknown": {"deep": [1, {"x": None}]}}, {"sequence_id": 2**70}],
    ids=["list", "string", "number", "null", "timeout-null", "timeout-list", "timeout-object",
         "timeout-inf", "bdo-string", "bdo-null", "unknown-deep", "bigint"],
)  # fmt: skip
def test_parameters_of_every_odd_type(ident: Runtime, params: Any) -> None:
    body = json.dumps({"inputs": good_inputs(), "parameters": params,
                       "outputs": [{"name": "affine", "parameters": params}]})  # fmt: skip
    status, _, raw = post(ident, body.replace("Infinity", "1e400").encode())
    if isinstance(params, dict) and "timeout" in params:
        assert status == 400 and "parameter 'timeout'" in json.loads(raw)["error"]
    elif params is None or isinstance(params, dict):  # ignored unknown/odd flags: answered
        assert status == 200, raw[:300]
        assert json.loads(raw)["outputs"][0]["data"] == [2.0] * WIDTH
    else:
        assert status == 400 and "'parameters' must be a JSON object" in json.loads(raw)["error"]
    still_serving(ident)


@pytest.mark.parametrize(
    ("encoding", "body", "status", "needle"),
    [
        ("gzip, gzip", "gzip2", 415, "unsupported Content-Encoding"),
        ("br", "gzip", 415, "unsupported Content-Encoding 'br'"),
        ("compress", "plain", 415, "unsupported Content-Encoding"),
        ("identity", "plain", 200, None),
        ("GZIP", "gzip", 200, None),
        ("gzip", "plain", 400, "not valid gzip data"),
        ("deflate", "gzip", 400, "not valid deflate data"),
        ("gzip", "bomb", 413, f"exceeds {MAX_BODY} bytes"),
        ("deflate", "deflate-bomb", 413, f"exceeds {MAX_BODY} bytes"),
        ("gzip", "truncated", 400, "truncated gzip"),
        ("gzip", "empty", 400, "truncated gzip"),
    ],
)
def test_compressed_bodies_with_odd_headers(
    ident: Runtime, encoding: str, body: str, status: int, needle: str | None
) -> None:
    plain = json.dumps({"inputs": good_inputs(), "outputs": [{"name": "affine"}]}).encode()
    bodies = {
        "plain": plain, "gzip": gzip.compress(plain), "gzip2": gzip.compress(gzip.compress(plain)),
        "bomb": gzip.compress(b" " * (3 * MAX_BODY)),
        "deflate-bomb": zlib.compress(b"[" + b" " * (3 * MAX_BODY)),
        "truncated": gzip.compress(plain)[:-9], "empty": b"",
    }  # fmt: skip
    if needle is None:
        got, _, raw = post(ident, bodies[body], {"Content-Encoding": encoding})
        assert got == status, raw[:300]
    else:
        assert needle in refused(ident, bodies[body], status, {"Content-Encoding": encoding})
    still_serving(ident)


def test_unicode_hostile_ids_and_names_are_400(ident: Runtime) -> None:
    base = json.dumps({"inputs": good_inputs(), "outputs": [{"name": "affine"}]})
    body = base[:-1] + ', "id": "\\ud800"}'
    assert "'id' holds a lone UTF-16 surrogate" in refused(ident, body.encode(), 400)
    body = base.replace('"name": "fp32"', '"name": "\\udfff"')
    assert "an input name holds a lone" in refused(ident, body.encode(), 400)
    body = base.replace('"name": "affine"', '"name": "\\ud83d"')
    assert "an output name holds a lone" in refused(ident, body.encode(), 400)
    assert "not valid UTF-8" in refused(ident, base.encode("utf-16"), 400)
    status, _, raw = post(ident, (base[:-1] + ', "id": "\\ud83d\\ude00 ok"}').encode())
    assert status == 200 and json.loads(raw)["id"] == "\U0001f600 ok"
    still_serving(ident)


def test_zero_rows_with_an_expired_deadline_are_answered(ident: Runtime) -> None:
    """Zero rows need no compute: answered at once, whatever the deadline."""
    items = [{**i, "shape": [0, WIDTH], "data": []} for i in good_inputs()]
    doc = {"inputs": items, "parameters": {"timeout": 1}, "outputs": [{"name": "affine"}]}
    status, _, raw = post(ident, json.dumps(doc).encode(), {"modelfleet-timeout-ms": "0.001"})
    assert status == 200, raw[:300]
    assert json.loads(raw)["outputs"] == [
        {"name": "affine", "datatype": "FP32", "shape": [0, WIDTH], "data": []}
    ]


def test_many_concurrent_big_json_bodies_stay_bounded(ident: Runtime) -> None:
    """24 clients each sending ~3.9 MB JSON bodies at once: every one is answered (200, or
    503 when the decode queue is full), the answers are right, and RSS stays bounded."""
    rows = MAX_BATCH
    width_values = rows * WIDTH
    items = good_inputs(rows)
    doc = {"inputs": items, "outputs": [{"name": "affine", "parameters": {"binary_data": True}}]}
    body = json.dumps(doc).encode()
    body += b" " * (MAX_BODY - 64 * 1024 - len(body))  # whitespace: the parser's work
    before = rss_kib(ident)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(24)

    def one() -> None:
        barrier.wait()
        for _ in range(3):
            status, hdrs, raw = post(ident, body)
            if status == 200:
                header = int(hdrs["inference-header-content-length"])
                values = np.frombuffer(raw[header:], dtype=np.float32)
                assert values.size == width_values and (values == 2.0).all()
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(statuses) == 72 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 24
    grown_mib = (rss_kib(ident) - before) / 1024
    # 24 bodies of 4 MB in flight at most, plus the decode of one: far under 400 MiB
    assert grown_mib < 400, grown_mib
    still_serving(ident)


def test_requests_beyond_the_queue_get_503_with_retry_after(slow_server: Runtime) -> None:
    """The 20 ms model with a queue of 512: 600 concurrent requests on 40 connections are
    each answered 200 or 503 (Retry-After), never dropped."""
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1, 2]}]}).encode()  # fmt: skip

    def one() -> None:
        conn = slow_server.conn()
        try:
            for _ in range(15):
                conn.request("POST", "/v2/models/slow/infer", body)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses.append((resp.status, resp.getheader("Retry-After")))
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(statuses) == 600
    assert {s for s, _ in statuses} <= {200, 503}
    assert all(retry == "1" for s, retry in statuses if s == 503)


def test_request_data_held_at_once_is_bounded(tmp_path: Path) -> None:
    """While a 1 s forward pass runs, 16 clients each send a 1 MiB body: at most 8 MiB
    (8x --max-body-bytes) of them are held; the rest are refused at once with 503 and
    Retry-After naming the budget, and every held one is answered. A lone body of the full
    --max-body-bytes is always served."""
    model_dir = tmp_path / "slow"
    build_slow_dir(model_dir, delay_s=1.0)
    server = Runtime(model_dir, "--max-body-bytes", str(1 << 20), "--max-batch-size", "32",
                     "--max-queue-size", "64")  # fmt: skip
    try:
        server.wait_ready()
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        small = json.dumps(doc).encode()
        big = small + b" " * ((1 << 20) - 64 - len(small))
        results: list[tuple[int, str]] = []
        lock = threading.Lock()
        first = threading.Thread(target=lambda: results.append(post_slow(server, small)))
        first.start()
        time.sleep(0.3)  # the first request is in its forward pass now (ordering, not timing)
        barrier = threading.Barrier(16)

        def one() -> None:
            barrier.wait()
            got = post_slow(server, big)
            with lock:
                results.append(got)

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in [first, *threads]:
            t.join(120)
        assert len(results) == 17
        assert {s for s, _ in results} <= {200, 503}, results
        refusals = [m for s, m in results if s == 503]
        assert 16 + 1 - len(refusals) <= 9, results  # the first + at most 8 MiB of bodies
        assert refusals and all("MiB of request data already waiting" in m for m in refusals)
        assert post_slow(server, big)[0] == 200  # nothing held: a full-size body is served
    finally:
        server.stop()


def post_slow(server: Runtime, body: bytes) -> tuple[int, str]:
    status, hdrs, raw = server.request("POST", "/v2/models/slow/infer", body, timeout=120)
    if status == 503:
        assert hdrs.get("retry-after") == "1"
    return status, json.loads(raw).get("error", "")
