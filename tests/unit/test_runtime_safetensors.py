"""Model weights in safetensors: what loads, and every malformed file refused with a LoadError
naming the file (the runtime turns that into its termination message)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from modelfleet_runtime.errors import LoadError
from modelfleet_runtime.safetensors_io import read_safetensors
from safetensors.torch import save_file


def header(entries: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def f32(shape: list[int], start: int, end: int) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


def test_every_dtype_round_trips_fp8_included(tmp_path: Path) -> None:
    tensors = {
        "w": torch.randn(3, 5),
        "ids": torch.arange(7),
        "half": torch.randn(2).bfloat16(),
        "e4m3": torch.randn(4).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(4).to(torch.float8_e5m2),
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False]),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    loaded = read_safetensors(path, "cpu")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "header too small"),
        (b"\x05", "header too small"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header too large"),
        (struct.pack("<Q", 3) + b"abc", "invalid JSON"),
        (header({"x": f32([1], 4, 8)}, b"\0" * 8), "invalid offset"),  # a gap before x
        (header({"a": f32([1], 0, 4), "b": f32([1], 0, 4)}, b"\0" * 4), "invalid offset"),
        (header({"x": f32([4], 0, 16)}, b"\0" * 8), "not fully covered"),  # past the end
        (header({"x": f32([1], 0, 4)}, b"\0" * 8), "not fully covered"),  # bytes left over
        (header({"x": f32([3], 0, 16)}, b"\0" * 16), "invalid shape"),
        (header({"x": f32([1 << 62, 1 << 62], 0, 4)}, b"\0" * 4), "overflow"),
        (header({"x": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "unknown variant"),
        (header({"x": f32([-1], 0, 4)}, b"\0" * 4), "invalid value"),
        (pickle.dumps({"w": [1.0, 2.0]}), "header"),  # a pickle is never unpickled
    ],
    ids=["empty", "short", "huge-header", "not-json", "gap", "overlap", "out-of-bounds",
         "trailing-bytes", "shape-mismatch", "shape-overflow", "unknown-dtype",
         "negative-dim", "pickle"],
)  # fmt: skip
def test_malformed_files_are_refused_naming_the_file(
    tmp_path: Path, data: bytes, needle: str
) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(data)
    with pytest.raises(LoadError, match=r"weights\.safetensors") as err:
        read_safetensors(path)
    assert needle in str(err.value)
