"""A small safetensors reader: a JSON header and raw tensor bytes, nothing executable."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .errors import LoadError

_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = bytearray(path.read_bytes())
    if len(data) < 8:
        raise LoadError(f"{path.name}: not a safetensors file (too short)")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len > min(_MAX_HEADER, len(data) - 8):
        raise LoadError(f"{path.name}: not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise LoadError(f"{path.name}: invalid safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path.name}: invalid safetensors header")
    base = 8 + header_len
    view = memoryview(data)
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LoadError(f"{path.name}: tensor {name!r}: bad entry ({exc})") from None
        count = 1
        for d in shape:
            count *= d
        if not 0 <= start <= end <= len(data) - base or end - start != count * dtype.itemsize:
            raise LoadError(f"{path.name}: tensor {name!r}: data offsets do not match its shape")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = view[base + start : base + end]
        # clone: own, aligned memory rather than a view into the file buffer
        tensors[name] = torch.frombuffer(raw, dtype=dtype).view(shape).clone()
    return tensors
