"""Example network definitions, used as safetensors entrypoints (``nets:build_mlp``)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, features: int = 4, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def build_mlp(features: int = 4, hidden: int = 32, classes: int = 3) -> nn.Module:
    return MLP(features, hidden, classes)
