"""Shared by the harness and every peer's server script: the two models and the OIP body.

Peers import this file by path (PYTHONPATH), so it depends on nothing but torch and the
standard library. Every server loads the *same* TorchScript file, so weights and compute match.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

SEED = 1234
# (input shape without batch axis, output width)
MODELS: dict[str, tuple[tuple[int, ...], int]] = {
    "mlp": ((64,), 10),
    "cnn": ((3, 64, 64), 10),
    # real payloads (issue 15): 1024 values in and out; an image-sized input with 1000 classes
    "mlp1024": ((1024,), 1024),
    "image": ((3, 224, 224), 1000),
}
INPUT, OUTPUT = "input", "output"


def threads() -> int:
    return int(os.environ.get("MFBENCH_THREADS", "1"))


def build(kind: str) -> Any:
    torch.manual_seed(SEED)
    if kind == "mlp":
        net: nn.Module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    elif kind == "mlp1024":  # 4 layers of 1024x1024, as bench/runtime.py --suite payloads
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Linear(1024, 1024)] + ([nn.ReLU()] if i < 3 else [])
        net = nn.Sequential(*layers)
    elif kind == "image":  # a small conv net on 3x224x224, 1000 classes
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 1000),
        )  # fmt: skip
    else:
        net = _resnet18()
    net.eval()
    return net


def _resnet18() -> Any:
    """ResNet-18 layout (2-2-2-2 basic blocks, 64..512 channels), 10 classes, random weights."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def write_model_dir(kind: str, root: Path) -> Path:
    """model.pt (TorchScript) + model.yaml (modelfleet's manifest) under root/kind."""

    d = root / kind
    if (d / "model.pt").exists() and (d / "model.yaml").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    shape, width = MODELS[kind]
    net = build(kind)
    example = torch.zeros((1, *shape))
    scripted = torch.jit.trace(net, example)
    scripted.save(str(d / "model.pt"))
    dims = ", ".join(str(s) for s in shape)
    (d / "model.yaml").write_text(
        "format: torchscript\nweights: model.pt\n"
        f"inputs:\n  - {{name: {INPUT}, datatype: FP32, shape: [-1, {dims}]}}\n"
        f"outputs:\n  - {{name: {OUTPUT}, datatype: FP32, shape: [-1, {width}]}}\n"
    )
    return d


def request_data(kind: str) -> list[float]:
    """Deterministic input with short decimals, so JSON bodies stay small and identical."""
    shape, _ = MODELS[kind]
    n = 1
    for s in shape:
        n *= s
    return [round(((i * 7919) % 200) / 100.0 - 1.0, 2) for i in range(n)]


def oip_body(kind: str) -> bytes:
    shape, _ = MODELS[kind]
    req = {
        "inputs": [
            {"name": INPUT, "shape": [1, *shape], "datatype": "FP32", "data": request_data(kind)}
        ]
    }
    return json.dumps(req, separators=(",", ":")).encode()


def load(model_dir: str | Path) -> Any:
    """What every peer does at start: TorchScript load, eval, thread count, warm-up."""

    torch.set_num_threads(threads())
    m = torch.jit.load(str(Path(model_dir) / "model.pt"), map_location="cpu")
    m.eval()
    kind = Path(model_dir).name
    shape, _ = MODELS[kind]
    with torch.inference_mode():
        for bs in (1, 8):
            m(torch.zeros((bs, *shape)))
    return m


def item_shape(model_dir: str | Path) -> tuple[int, ...]:
    return MODELS[Path(model_dir).name][0]


def oip_response(rows: Any) -> dict[str, Any]:
    """rows: a [n, width] tensor/array for one request."""
    data = rows.reshape(-1).tolist()
    return {
        "model_name": "m",
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": list(rows.shape), "data": data}],
    }
