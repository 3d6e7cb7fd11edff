"""safetensors weights through the ``safetensors`` library: a JSON header and raw tensor
bytes, nothing executable, nothing unpickled.

The library (Hugging Face's Rust reader) validates what a hand-written reader has to get
right by care: offsets contiguous from zero and covering the file exactly, shapes that match
the byte ranges without overflow, the header size, every dtype including FP8. It also
loads tensors straight onto the target device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import LoadError


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor in ``path``, on ``device``; a ``LoadError`` naming the file otherwise."""
    try:
        return load_file(path, device=str(device))
    except SafetensorError as exc:
        raise LoadError(f"{path.name}: not a valid safetensors file: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a dtype torch lacks
        raise LoadError(f"{path.name}: cannot load safetensors tensors: {exc}") from None
