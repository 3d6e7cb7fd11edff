"""TorchServe custom handler: the OIP JSON body in, one OIP-shaped JSON out per request.

TorchServe hands a list of requests (more than one when its batcher merged them).
"""

from __future__ import annotations

import json
import os
from typing import Any

import mfbench_common as common
import torch


class Handler:
    def __init__(self) -> None:
        self.net: Any = None
        self.shape: tuple[int, ...] = ()

    def initialize(self, context: Any) -> None:
        model_dir = os.environ["MFBENCH_MODEL_DIR"]
        self.net = common.load(model_dir)
        self.shape = common.item_shape(model_dir)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        xs = []
        for row in data:
            body = row.get("body") or row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            inp = body["inputs"][0]
            xs.append(
                torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"][0], *self.shape)
            )
        with torch.inference_mode():
            y = self.net(torch.cat(xs))
        return [json.dumps(common.oip_response(o)) for o in y.split([x.shape[0] for x in xs])]


_service = Handler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    if not _service.net:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
