"""Build the small example model locally (no downloads): ``python examples/models/build.py DIR``.

Writes a model directory with ``model.yaml`` for each format: DIR/iris-torchscript,
DIR/iris-export and DIR/iris-safetensors. The weights are deterministic (seeded).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import warnings
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nets import build_mlp  # noqa: E402

SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
}


def _write(model_dir: Path, manifest: dict[str, object], weights: str) -> Path:
    digest = hashlib.sha256((model_dir / weights).read_bytes()).hexdigest()
    manifest = {**manifest, "weights": weights, "sha256": digest, **SIGNATURE}
    (model_dir / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return model_dir


def build(out: Path) -> list[Path]:
    torch.manual_seed(0)
    module = build_mlp().eval()
    example = torch.rand(2, 4)
    built = []

    d = out / "iris-torchscript"
    d.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still served
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(module, example).save(str(d / "model.pt"))
    built.append(_write(d, {"format": "torchscript", "name": "iris", "version": "1"}, "model.pt"))

    d = out / "iris-export"
    d.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(d / "model.pt2"))
    built.append(_write(d, {"format": "torch-export", "name": "iris", "version": "1"}, "model.pt2"))

    d = out / "iris-safetensors"
    d.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file  # noqa: PLC0415 (dev dependency, only here)

    save_file(module.state_dict(), str(d / "model.safetensors"))
    shutil.copy(HERE / "nets.py", d / "nets.py")  # the entrypoint ships with the weights
    built.append(_write(
        d,
        {"format": "safetensors", "name": "iris", "version": "1", "entrypoint": "nets:build_mlp"},
        "model.safetensors",
    ))  # fmt: skip
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="directory to write the model directories into")
    args = parser.parse_args()
    for path in build(args.out):
        print(path)


if __name__ == "__main__":
    main()
