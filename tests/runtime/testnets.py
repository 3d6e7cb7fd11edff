"""Small networks the runtime tests build and serve; also copied into safetensors model dirs
as the entrypoint module."""

from __future__ import annotations

import time

import torch
from torch import nn


class Affine(nn.Module):
    """Two inputs, two outputs: y = (x @ W + b) * scale and the argmax of y per row."""

    def __init__(self, features: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, classes))
        self.bias = nn.Parameter(torch.randn(classes))

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x @ self.weight + self.bias) * scale
        return y, torch.argmax(y, dim=1)


class Slow(nn.Module):
    """Sleeps per forward pass; reports the batch size it saw in every row.

    A first value of 666 makes it raise (a model bug); the server must survive it.
    """

    def __init__(self, delay_s: float = 0.05, load_delay_s: float = 0.0) -> None:
        super().__init__()
        time.sleep(load_delay_s)  # a model that takes a while to build
        self.delay_s = delay_s
        self.register_buffer("two", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((x[:, 0] == 666).any()):
            raise ValueError("the model does not like 666")
        time.sleep(self.delay_s)
        rows = x.shape[0]
        return x * self.two, torch.full((rows,), rows, dtype=torch.int64)


def build_affine() -> nn.Module:
    return Affine()


def build_slow(delay_s: float = 0.05, load_delay_s: float = 0.0) -> nn.Module:
    return Slow(delay_s, load_delay_s)
