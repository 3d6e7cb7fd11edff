"""Build model directories (model.yaml + weights) for the tests, in every supported format."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from testnets import Affine, build_affine

HERE = Path(__file__).resolve().parent
AFFINE_SIGNATURE = {
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
    ],
    "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ],
}
SLOW_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [
        {"name": "doubled", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "batch", "datatype": "INT64", "shape": [-1]},
    ],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(model_dir: Path, **fields: Any) -> None:
    (model_dir / "model.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))


def affine_module(seed: int = 7) -> Affine:
    torch.manual_seed(seed)
    module = build_affine()
    assert isinstance(module, Affine)
    return module.eval()


def build_affine_dir(model_dir: Path, fmt: str) -> Affine:
    """A model directory of the given format; returns the module to compare against."""
    model_dir.mkdir(parents=True, exist_ok=True)
    module = affine_module()
    example = (torch.rand(2, 4), torch.rand(2, 1))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(module).save(str(model_dir / "model.pt"))
        write_manifest(model_dir, format=fmt, weights="model.pt", **AFFINE_SIGNATURE)
    elif fmt == "torch-export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
        torch.export.save(program, str(model_dir / "model.pt2"))
        write_manifest(model_dir, format=fmt, weights="model.pt2", **AFFINE_SIGNATURE)
    elif fmt == "safetensors":
        save_file(module.state_dict(), str(model_dir / "model.safetensors"))
        shutil.copy(HERE / "testnets.py", model_dir / "testnets.py")
        write_manifest(
            model_dir, format=fmt, weights="model.safetensors",
            entrypoint="testnets:build_affine", **AFFINE_SIGNATURE,
        )  # fmt: skip
    else:
        raise ValueError(fmt)
    return module


def build_slow_dir(model_dir: Path, delay_s: float, load_delay_s: float = 0.0) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    save_file({"two": torch.tensor(2.0)}, str(model_dir / "model.safetensors"))
    shutil.copy(HERE / "testnets.py", model_dir / "testnets.py")
    write_manifest(
        model_dir, format="safetensors", weights="model.safetensors",
        entrypoint="testnets:build_slow",
        entrypoint_kwargs={"delay_s": delay_s, "load_delay_s": load_delay_s},
        **SLOW_SIGNATURE,
    )  # fmt: skip
