"""The example models (examples/models/build.py) load in every format and agree with the net."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, Runtime
from modelfleet_runtime.manifest import load_manifest
from modelfleet_runtime.model import LoadOptions, load

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    subprocess.run([sys.executable, str(REPO / "examples/models/build.py"), str(out)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return out


def test_every_format_loads_and_matches(examples: Path) -> None:
    sys.path.insert(0, str(REPO / "examples/models"))
    try:
        from nets import build_mlp  # noqa: PLC0415 (the example's own module)
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    reference = build_mlp().eval()
    x = torch.rand(5, 4)
    with torch.no_grad():
        want = reference(x)
    for fmt in ("torchscript", "export", "safetensors"):
        model_dir = examples / f"iris-{fmt}"
        manifest = load_manifest(model_dir)
        assert manifest.sha256 and manifest.name == "iris"
        model, seconds = load(LoadOptions(model_dir, manifest, "cpu", None, 8))
        assert seconds > 0
        (got,) = model.forward([x])
        torch.testing.assert_close(got, want)


def test_safetensors_example_serves_with_its_shipped_entrypoint(examples: Path) -> None:
    server = Runtime(examples / "iris-safetensors").wait_ready()
    try:
        status, body = server.infer("iris", {"inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        ]})  # fmt: skip
        assert status == 200
        assert sum(body["outputs"][0]["data"]) == pytest.approx(1.0, abs=1e-5)  # softmax
    finally:
        assert server.stop() == 0
