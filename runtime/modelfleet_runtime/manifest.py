"""The model directory's ``model.yaml``: format, weights, entrypoint and tensor signature."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from .errors import LoadError

MANIFEST_FILE = "model.yaml"
FORMATS = ("torchscript", "torch-export", "safetensors")
# Open Inference Protocol datatypes the runtime can carry in a tensor (BYTES has no torch dtype).
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16",
)  # fmt: skip
DEFAULT_WEIGHTS = {
    "torchscript": "model.pt",
    "torch-export": "model.pt2",
    "safetensors": "model.safetensors",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable axis; a leading -1 is the batch axis

    def signature(self) -> str:
        return f"{self.name}: {self.datatype}[{','.join(str(d) for d in self.shape)}]"

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Manifest:
    format: str
    weights: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    entrypoint: str | None = None
    entrypoint_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str | None = None
    name: str | None = None
    version: str | None = None

    @property
    def batched(self) -> bool:
        """Every tensor has a leading batch axis, so requests can be concatenated."""
        return all(t.batched for t in (*self.inputs, *self.outputs))

    def signature(self) -> str:
        ins = ", ".join(t.signature() for t in self.inputs)
        outs = ", ".join(t.signature() for t in self.outputs)
        return f"({ins}) -> ({outs})"


def _tensor(raw: Any, where: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise LoadError(f"{where}: expected a mapping with name, datatype, shape")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise LoadError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
        raise LoadError(f"{where} ({name}): 'datatype' must be one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
    ):
        raise LoadError(f"{where} ({name}): 'shape' must be a list of integers (-1 = any)")
    return TensorSpec(name, datatype.upper(), tuple(shape))


def _tensors(raw: Any, key: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise LoadError(f"model.yaml: '{key}' must be a non-empty list")
    specs = tuple(_tensor(item, f"model.yaml: {key}[{i}]") for i, item in enumerate(raw))
    names = [t.name for t in specs]
    if len(set(names)) != len(names):
        raise LoadError(f"model.yaml: duplicate names in '{key}'")
    return specs


def parse_manifest(raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise LoadError("model.yaml: expected a mapping at the top level")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise LoadError(f"model.yaml: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    sha = raw.get("sha256")
    if sha is not None:
        sha = str(sha).removeprefix("sha256:").lower()
    version = raw.get("version")
    kwargs = raw.get("entrypoint_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise LoadError("model.yaml: 'entrypoint_kwargs' must be a mapping")
    return Manifest(
        format=fmt,
        weights=str(raw.get("weights") or DEFAULT_WEIGHTS[fmt]),
        inputs=_tensors(raw.get("inputs"), "inputs"),
        outputs=_tensors(raw.get("outputs"), "outputs"),
        entrypoint=raw.get("entrypoint"),
        entrypoint_kwargs=kwargs,
        sha256=sha,
        name=raw.get("name"),
        version=None if version is None else str(version),
    )


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LoadError(f"{path}: invalid YAML: {exc}") from exc
    return parse_manifest(raw)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
