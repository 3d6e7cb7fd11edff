"""A small safetensors reader: a JSON header and raw tensor bytes, nothing executable."""

from __future__ import annotations

import contextlib
import json
import mmap
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
    # Map rather than read: each tensor is copied out once, so peak memory stays near the
    # model's size instead of twice it. ACCESS_COPY gives torch the writable buffer it wants.
    with path.open("rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except ValueError:  # empty file
            raise LoadError(f"{path.name}: not a safetensors file (empty)") from None
    try:
        return _parse(path, data)
    finally:
        with contextlib.suppress(BufferError):  # a view still alive on an error path
            data.close()


def _parse(path: Path, data: mmap.mmap) -> dict[str, torch.Tensor]:
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
        # clone: own, aligned memory rather than a view into the mapping (closed on return)
        view = torch.frombuffer(data, dtype=torch.uint8, count=end - start, offset=base + start)
        try:
            tensors[name] = view.view(dtype).view(shape).clone()
        except RuntimeError as exc:
            raise LoadError(f"{path.name}: tensor {name!r}: {exc}") from None
    return tensors
