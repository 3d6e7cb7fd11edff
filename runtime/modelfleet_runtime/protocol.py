"""Open Inference Protocol v2: decode infer requests, encode responses (JSON + binary data).

Binary tensor data extension: the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw little-endian tensor bytes of every input whose parameters carry
``binary_data_size``, in the order the inputs are listed.

Answers are always strict JSON: a non-finite output value (NaN, +Inf, -Inf) is written as
``null`` in JSON "data" (tritonclient's ``as_numpy`` reads null back as NaN); binary outputs keep
the exact IEEE values. Requests may carry NaN/Infinity tokens in float input data (tritonclient
writes them) but nowhere a number must be finite (``timeout``).
"""

from __future__ import annotations

import array
import ctypes
import dataclasses
import itertools
import json
import math
import threading
import zlib
from typing import Any

import numpy as np
import orjson
import torch

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .manifest import Manifest, TensorSpec

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
# array typecodes for the fast path of flat JSON data (a C loop instead of torch.tensor's)
_ARRAY_CODES = {
    "BOOL": ("b", torch.int8), "UINT8": ("B", torch.uint8), "UINT16": ("H", torch.uint16),
    "UINT32": ("I", torch.uint32), "UINT64": ("Q", torch.uint64), "INT8": ("b", torch.int8),
    "INT16": ("h", torch.int16), "INT32": ("i", torch.int32), "INT64": ("q", torch.int64),
    "FP16": ("d", torch.float64), "FP32": ("f", torch.float32), "FP64": ("d", torch.float64),
    "BF16": ("d", torch.float64),
}  # fmt: skip
ITEM_SIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in TORCH_DTYPES.items()}
# JSON value types each datatype's "data" may hold: no booleans in numbers, no floats in
# integers (1.5 for INT64 is a client bug, not something to truncate silently)
_FLOATS = frozenset({float, int})
_INTS = frozenset({int})
_ALLOWED = {name: _FLOATS if name.startswith(("FP", "BF")) else _INTS for name in TORCH_DTYPES}
_ALLOWED["BOOL"] = frozenset({bool})
_KIND = {"BOOL": "true/false", **{n: "numbers" for n in TORCH_DTYPES if n.startswith(("FP", "BF"))}}
# a whole request's lifetime in microseconds fits Triton's uint64 timeout
MAX_TIMEOUT_US = 2**64 - 1
MAX_ID_CHARS = 1024
# torch sizes and strides are int64: a shape whose dimensions (zeros counted as 1) multiply past
# this cannot be a tensor even when it holds no element ([0, 2**63] would crash torch.empty)
MAX_EXTENT = 2**62
# values converted per C call: between chunks the event loop can take the GIL back (a 7 MB
# body is ~1.2M values, ~30 ms of conversion)
_CHUNK = 1 << 16
# numpy views of output tensors are serialized by orjson in C (no per-element Python objects)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _loads(raw: bytes | bytearray) -> Any:
    """Parse a request's JSON. orjson is 4-7x faster than the stdlib on tensor bodies; it is
    strict JSON, so fall back to the stdlib for what it refuses but clients send: NaN/Infinity
    (tritonclient writes them for float NaNs) and integers beyond 64 bits."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):  # a nesting bomb: refuse outright
            raise BadRequest("request JSON is nested too deeply (more than 1024 levels)") from None
    # JSON on the wire is UTF-8 (RFC 8259 8.1): decoding first refuses UTF-16/32 bodies, which
    # json.loads(bytes) would otherwise guess at (and the boolean scan in decode_infer, which
    # looks for the UTF-8 bytes of true/false, would miss)
    text = bytes(raw).decode("utf-8-sig")  # a byte order mark may be ignored (RFC 8259 8.1)
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest("request JSON is nested too deeply") from None
    except ValueError as exc:
        if "digits" in str(exc) and not isinstance(exc, json.JSONDecodeError):
            raise BadRequest("a number in the request JSON has more than 4300 digits") from None
        raise


@dataclasses.dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[torch.Tensor]  # in the manifest's input order
    rows: int  # batch rows this request carries (1 when the model has no batch axis)
    outputs: list[tuple[int, bool]]  # (index of the manifest output, send as binary)
    timeout_s: float | None  # from the protocol's "timeout" parameter (microseconds)


def _bad(spec: TensorSpec | None, manifest: Manifest, what: str) -> BadRequest:
    expected = spec.signature() if spec is not None else manifest.signature()
    return BadRequest(f"{what}; expected {expected}")


def _flag(params: Any, key: str) -> bool:
    return isinstance(params, dict) and params.get(key) is True


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise BadRequest(f'input "{name}": "shape" must be a list of non-negative integers')
    if math.prod(max(d, 1) for d in raw) > MAX_EXTENT:
        raise BadRequest(f'input "{name}": "shape" {_shown(raw)} is too large for a tensor')
    return tuple(raw)


def _shown(value: Any, limit: int = 80) -> str:
    """A client's value quoted in an error message: as JSON, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except ValueError:  # an integer past Python's 4300-digit conversion limit
        text = "a very long number"
    except RecursionError:  # orjson parses 1024 levels; the stdlib encoder stops near 1000
        text = f"a JSON {_json_type(value)} nested too deeply to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _utf8(text: str, what: str) -> str:
    """Strings that are echoed must be valid Unicode: the stdlib fallback parser accepts lone
    surrogate escapes ("\\ud800") that no UTF-8 answer can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    return text


def decode_infer(
    body: bytes | bytearray,
    header_length: int | None,
    manifest: Manifest,
    max_rows: int | None = None,
    cache: HeaderCache | None = None,
) -> InferRequest:
    """Parse and validate one infer request against the model's signature (400 on error).

    ``max_rows``: the most batch rows one request may carry (the server's max batch size);
    more is refused, as Triton does, rather than run as one oversized forward pass.
    ``cache``: decoded headers of binary requests (see HeaderCache), for this manifest and
    ``max_rows`` only."""
    view = memoryview(body)
    if header_length is None:
        header_length = len(body)
    elif not 0 <= header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length} exceeds the body ({len(body)} bytes)"
        )
    key = None
    if cache is not None and len(body) > header_length and header_length <= cache.max_header:
        key = (bytes(view[:header_length]), len(body))
        plan = cache.get(key)
        if plan is not None:
            return _from_plan(view, plan, manifest)
    try:
        text = body[:header_length] if header_length != len(body) else body
        doc = _loads(text)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request JSON is not valid UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest(
            f"request needs a non-empty 'inputs' list; expected {manifest.signature()}"
        )

    slots: list[tuple[int, int, int, tuple[int, ...]]] = []  # binary inputs, for the cache
    specs = {spec.name: (i, spec) for i, spec in enumerate(manifest.inputs)}
    tensors: list[torch.Tensor | None] = [None] * len(manifest.inputs)
    offset = header_length
    rows: int | None = None
    # No "true"/"false" bytes in the JSON text: no JSON boolean anywhere, so numeric data
    # needs no per-element type check (a memchr-speed scan instead of a pass over every value)
    maybe_bools = b"true" in text or b"false" in text
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("every input needs a 'name'")
        name = raw["name"]
        found = specs.get(name)
        if found is None:
            shown = _shown(_utf8(name, "an input name"), 200)
            raise _bad(None, manifest, f"unknown input {shown}")
        index, spec = found
        if tensors[index] is not None:
            raise _bad(spec, manifest, f'input "{name}" given twice')
        datatype = raw.get("datatype")
        if datatype != spec.datatype:
            raise _bad(
                spec, manifest, f'input "{name}": datatype {_shown(datatype)} does not match'
            )
        shape = _shape(raw.get("shape"), name)
        if not spec.shape_matches(shape):
            shown = ",".join(map(str, shape))
            raise _bad(spec, manifest, f'input "{name}": shape [{shown}] does not match')
        count = math.prod(shape)
        dtype = TORCH_DTYPES[datatype]
        params = raw.get("parameters")
        _no_extension(params, f'input "{name}"')
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f'input "{name}": binary_data_size must be a byte count '
                                 f"(a non-negative integer), got {_shown(size)}")  # fmt: skip
            if "data" in raw:
                raise BadRequest(f'input "{name}" has both "data" and binary_data_size')
            if offset + size > len(body):
                raise BadRequest(
                    f'input "{name}": binary_data_size {size} overruns the body '
                    f"({len(body) - offset} bytes of binary data left"
                    + ("; is Inference-Header-Content-Length missing?)" if offset == len(body)
                       and header_length == len(body) else ")")
                )  # fmt: skip
            want = count * ITEM_SIZE[datatype]
            if size != want:
                raise _bad(
                    spec, manifest,
                    f'input "{name}": {size} bytes of binary data for shape {list(shape)} '
                    f"needs {want}",
                )  # fmt: skip
            tensor = _binary_tensor(view, offset, size, shape, spec=spec, manifest=manifest)
            slots.append((index, offset, size, shape))
            offset += size
        else:
            tensor = _from_json(
                raw.get("data"),
                shape=shape,
                count=count,
                dtype=dtype,
                spec=spec,
                manifest=manifest,
                maybe_bools=maybe_bools,
            )
        tensors[index] = tensor
        n = shape[0] if spec.batched else 1
        if rows is None:
            rows = n
        elif n != rows:
            raise _bad(spec, manifest, f'input "{name}": batch size {n} differs from {rows}')
        if max_rows is not None and n > max_rows:
            raise BadRequest(
                f'input "{name}": {n} rows exceed this server\'s max batch size of {max_rows} '
                f"(--max-batch-size); split the request"
            )
    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes of binary data not claimed by any input")
    missing = [spec.name for spec, t in zip(manifest.inputs, tensors, strict=True) if t is None]
    if missing:
        raise BadRequest(f"missing input(s) {', '.join(missing)}; expected {manifest.signature()}")

    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    binary_all = _flag(params, "binary_data_output")
    timeout_s = _timeout(params["timeout"]) if params and "timeout" in params else None
    outputs = _requested_outputs(doc.get("outputs"), manifest, binary_all)
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest(f"'id' must be a string (got a JSON {_json_type(req_id)})")
    if req_id is not None and len(req_id) > MAX_ID_CHARS:
        raise BadRequest(f"'id' is longer than {MAX_ID_CHARS} characters")
    if req_id is not None:
        _utf8(req_id, "'id'")
    if key is not None and cache is not None and len(slots) == len(tensors):
        # every input binary: the header alone decides all of the above
        cache.put(key, _Plan(tuple(slots), 1 if rows is None else rows, tuple(outputs),
                             timeout_s, req_id))  # fmt: skip
    return InferRequest(
        id=req_id,
        inputs=tensors,  # type: ignore[arg-type]  # every slot filled (checked above)
        rows=1 if rows is None else rows,
        outputs=outputs,
        timeout_s=timeout_s,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What a request whose inputs are all binary decodes to, but the tensor bytes."""

    slots: tuple[tuple[int, int, int, tuple[int, ...]], ...]  # (input, offset, size, shape)
    rows: int
    outputs: tuple[tuple[int, bool], ...]
    timeout_s: float | None
    id: str | None


class HeaderCache:
    """Decoded JSON headers of binary requests, keyed by the header's bytes and the body's
    length. A client sending the same tensors' shapes over and over sends the same header
    every time: a hit skips the JSON parse and the validation (both a pure function of those
    bytes against one manifest), leaving the views of the tensor bytes and the checks that
    depend on them (BOOL values, alignment). Only successful decodes are kept; at most
    ``size`` headers of at most ``max_header`` bytes, the oldest dropped first. One cache
    per manifest and max batch size."""

    def __init__(self, size: int = 256, max_header: int = 4096) -> None:
        self.size = size
        self.max_header = max_header
        self._plans: dict[tuple[bytes, int], _Plan] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, int]) -> _Plan | None:
        return self._plans.get(key)

    def put(self, key: tuple[bytes, int], plan: _Plan) -> None:
        with self._lock:  # the loop and the decode thread both decode
            plans = self._plans
            if len(plans) >= self.size:
                del plans[next(iter(plans))]
            plans[key] = plan

    def __len__(self) -> int:
        return len(self._plans)


def _from_plan(view: memoryview, plan: _Plan, manifest: Manifest) -> InferRequest:
    inputs: list[torch.Tensor] = [None] * len(manifest.inputs)  # type: ignore[list-item]
    specs = manifest.inputs
    for index, offset, size, shape in plan.slots:
        inputs[index] = _binary_tensor(
            view, offset, size, shape, spec=specs[index], manifest=manifest
        )
    return InferRequest(plan.id, inputs, plan.rows, list(plan.outputs), plan.timeout_s)


def _binary_tensor(
    view: memoryview,
    offset: int,
    size: int,
    shape: tuple[int, ...],
    *,
    spec: TensorSpec,
    manifest: Manifest,
) -> torch.Tensor:
    """A binary input's tensor: a view of the request body, no copy (the batch's torch.cat
    is the one copy). Its elements may be misaligned (the header's length decides): the
    model aligns what reaches a forward pass uncopied (Model._inputs)."""
    dtype = TORCH_DTYPES[spec.datatype]
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(view[offset : offset + size], dtype=dtype).view(shape)
    if spec.datatype == "BOOL" and bool((tensor.view(torch.uint8) > 1).any()):
        raise _bad(spec, manifest, f'input "{spec.name}": BOOL bytes must be 0 or 1')
    return tensor


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _timeout(timeout: Any) -> float | None:
    """The protocol's "timeout" parameter (microseconds) in seconds; 0 means none."""
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 <= timeout <= MAX_TIMEOUT_US  # also refuses NaN
    ):
        raise BadRequest(
            f"parameter 'timeout' must be a number of microseconds from 0 to {MAX_TIMEOUT_US}"
        )
    return timeout / 1e6 if timeout > 0 else None


def _from_json(
    data: Any,
    *,
    shape: tuple[int, ...],
    count: int,
    dtype: torch.dtype,
    spec: TensorSpec,
    manifest: Manifest,
    maybe_bools: bool = True,
) -> torch.Tensor:
    """A JSON "data" list (flat, or nested row-major) as a tensor, converted by array.array
    in C (no per-element Python loop). array.array refuses strings, nulls and floats for
    integer types itself; booleans (which it would take as 0/1) are looked for with one
    C-level set(map(type)) pass only when the request's JSON has a boolean at all."""
    name = spec.name
    datatype = spec.datatype
    if not isinstance(data, list):
        raise _bad(spec, manifest, f'input "{name}": needs "data" (a list) or binary data')
    flat = _flatten(data, spec, manifest)
    if len(flat) != count:
        raise _bad(
            spec, manifest,
            f'input "{name}": {len(flat)} data elements for shape {list(shape)} needs {count}',
        )  # fmt: skip
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    code, array_dtype = _ARRAY_CODES[datatype]
    values: array.array[Any] | None = None
    try:
        converted = array.array(code, flat if len(flat) <= _CHUNK else flat[:_CHUNK])
        for start in range(_CHUNK, len(flat), _CHUNK):  # GIL switch points for big tensors
            converted.extend(flat[start : start + _CHUNK])
        values = converted
    except TypeError:  # a string, a null, a float for an integer type: named below
        pass
    except OverflowError:
        raise _bad(
            spec, manifest, f'input "{name}": a value is out of range for {datatype}'
        ) from None
    if values is None or maybe_bools or datatype == "BOOL":
        _check_types(flat, spec, manifest)
    if values is None:  # the types were fine, so array.array's complaint was the range
        raise _bad(spec, manifest, f'input "{name}": a value is out of range for {datatype}')
    tensor = torch.frombuffer(values, dtype=array_dtype)
    if datatype == "FP16":  # numpy rounds float64 -> float16 once (torch goes via float32)
        with np.errstate(over="ignore"):  # past 65504 is inf, as a cast in C gives
            tensor = torch.from_numpy(tensor.numpy().astype(np.float16))
    elif datatype == "BF16":
        tensor = _round_to_bf16(tensor.numpy())
    elif array_dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.view(shape)


def _round_to_bf16(values: np.ndarray[Any, Any]) -> torch.Tensor:
    """float64 -> bfloat16 rounded once to nearest-even. Through float32 it would round twice
    (1 + 2**-8 + 2**-40 became 1.0, not 1 + 2**-7): rounding to float32 *to odd* first (the
    inexact bit kept in the last place) makes the second, float32 -> bfloat16, rounding exact."""
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = values.astype(np.float32)
        wide = narrow.astype(np.float64)
        over = np.abs(wide) > np.abs(values)  # rounded away from zero: step back toward it
        narrow[over] = np.nextafter(narrow[over], np.float32(0))
        inexact = narrow.astype(np.float64) != values
        inexact &= ~np.isnan(values)
    bits = narrow.view(np.uint32)
    bits[inexact] |= 1
    return torch.from_numpy(narrow).to(torch.bfloat16)


def _check_types(flat: list[Any], spec: TensorSpec, manifest: Manifest) -> None:
    allowed = _ALLOWED[spec.datatype]
    if set(map(type, flat)) <= allowed:
        return
    bad = next(v for v in flat if type(v) not in allowed)
    shown = _shown(bad, 40) if not isinstance(bad, float) else repr(bad)
    kind = _KIND.get(spec.datatype, "integers")
    raise _bad(
        spec, manifest,
        f'input "{spec.name}": data is not {spec.datatype} (needs {kind}), got {shown}',
    )  # fmt: skip


def _flatten(data: list[Any], spec: TensorSpec, manifest: Manifest) -> list[Any]:
    """Nested row-major lists flattened one level at a time (C-level chain), refusing ragged
    rows; orjson bounds the depth at 1024."""
    while data and type(data[0]) is list:
        if set(map(type, data)) != {list}:
            raise _bad(spec, manifest, f'input "{spec.name}": "data" mixes lists and values')
        if len(set(map(len, data))) != 1:
            raise _bad(spec, manifest, f'input "{spec.name}": "data" has rows of unequal length')
        data = list(itertools.chain.from_iterable(data))
    return data


# Triton extensions whose parameters change where data lives or what an answer holds: ignoring
# them would answer something other than what was asked (raw scores for top-k labels, data in
# the body instead of a shared-memory region), so they are refused by name
_UNSUPPORTED = {
    "classification": "the classification extension",
    "shared_memory_region": "the shared-memory extension",
    "shared_memory_byte_size": "the shared-memory extension",
    "shared_memory_offset": "the shared-memory extension",
}


def _no_extension(params: Any, where: str) -> None:
    if isinstance(params, dict):
        for key in params.keys() & _UNSUPPORTED.keys():
            raise BadRequest(f"{where}: parameter {key!r} needs {_UNSUPPORTED[key]}, which this "
                             "server does not support")  # fmt: skip


def _requested_outputs(raw: Any, manifest: Manifest, binary_all: bool) -> list[tuple[int, bool]]:
    if raw is None or raw == []:  # none named: every output (as Triton does for [])
        return [(i, binary_all) for i in range(len(manifest.outputs))]
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    index = {spec.name: i for i, spec in enumerate(manifest.outputs)}
    chosen: list[tuple[int, bool]] = []
    seen: set[str] = set()
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in index:
            names = ", ".join(s.signature() for s in manifest.outputs)
            shown = _utf8(name, "an output name")[:200] if isinstance(name, str) else _shown(name)
            raise BadRequest(f'unknown output "{shown}"; the model outputs {names}')
        if name in seen:  # each copy would be encoded again: an answer-size amplifier
            raise BadRequest(f'output "{name}" is requested more than once')
        seen.add(name)
        params = item.get("parameters")
        _no_extension(params, f'output "{name}"')
        binary = binary_all
        if isinstance(params, dict) and "binary_data" in params:
            binary = params["binary_data"] is True
        chosen.append((index[name], binary))
    return chosen


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor (no numpy needed)."""
    t = tensor.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def encode_response(
    model_name: str,
    model_version: str,
    req: InferRequest,
    outputs: list[torch.Tensor],
    manifest: Manifest,
    *,
    max_bytes: int | None = None,
) -> tuple[bytes, int | None]:
    """Body and, when any output is binary, the JSON header length. JSON data is a numpy view
    of the tensor serialized by orjson (non-finite values become null); an answer larger than
    ``max_bytes`` is refused with 413 before it is built where its size is known up front."""
    encoded: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    floor = 0  # bytes the answer takes at the least: exact for binary, 2 per JSON element
    for index, binary in req.outputs:
        spec = manifest.outputs[index]
        tensor = outputs[index]
        want = TORCH_DTYPES[spec.datatype]
        if tensor.dtype != want:
            tensor = tensor.to(want)
        floor += tensor.numel() * (ITEM_SIZE[spec.datatype] if binary else 2)
        if max_bytes is not None and floor > max_bytes:
            raise _too_big(f"at least {floor}", max_bytes)
        item: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": list(tensor.shape),
        }
        if binary:
            blob = tensor_bytes(tensor)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _numpy_flat(tensor)
        encoded.append(item)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if req.id is not None:
        doc["id"] = req.id
    doc["outputs"] = encoded
    header = orjson.dumps(doc, option=_NUMPY)
    size = len(header) + sum(map(len, blobs))
    if max_bytes is not None and size > max_bytes:
        raise _too_big(str(size), max_bytes)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _numpy_flat(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """A flat C-contiguous numpy view orjson can write (bfloat16 has no numpy type)."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.to(torch.float32)
    return flat.contiguous().numpy()


def _too_big(size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"answer of {size} bytes exceeds the {limit}-byte limit (--max-body-bytes); "
        f"ask for fewer rows or outputs, or for binary outputs"
    )


def decompress(body: bytearray, encoding: str, limit: int) -> bytearray:
    """Undo ``Content-Encoding`` gzip / deflate (tritonclient's request compression), refusing
    anything that inflates past ``limit`` bytes. Every member of a multi-member gzip body is
    inflated (RFC 1952); bytes after a deflate stream are refused."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    gzip = "gzip" in encoding
    # deflate means a zlib stream (RFC 9110), though some clients send raw deflate
    for wbits in (16 + zlib.MAX_WBITS,) if gzip else (zlib.MAX_WBITS, -15):
        try:
            return _inflate(body, wbits, limit, multi=gzip, encoding=encoding)
        except zlib.error:
            continue
    raise BadRequest(f"request body is not valid {encoding} data")


def _inflate(data: bytes | bytearray, wbits: int, limit: int, *, multi: bool,
             encoding: str) -> bytearray:  # fmt: skip
    out = bytearray()
    rest: bytes | bytearray = data
    while True:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request body exceeds {limit} bytes")
        if not inflater.eof:
            raise BadRequest(f"truncated {encoding} request body")
        rest = inflater.unused_data
        if not rest:
            return out
        if not multi:
            raise BadRequest(f"{len(rest)} bytes after the end of the {encoding} stream")


def dumps(doc: Any) -> bytes:
    """A small document (an error, metadata) as JSON. A string no UTF-8 text can hold (a lone
    surrogate quoted from a request) is written with U+FFFD in its place, never a 500."""
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        text = json.dumps(doc, ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode()
