"""BentoML service: one worker; adaptive batching (batchable API) when MFBENCH_BATCH > 1.

The body is the same OIP JSON; BentoML maps its top-level "inputs" key to the API's argument.
With batchable=True, BentoML concatenates the "inputs" lists of queued requests and splits the
returned list back, so each request still gets its own row.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bentoml
import mfbench_common as common
import torch

MODEL_DIR = os.environ["MFBENCH_MODEL_DIR"]
BATCH = int(os.environ.get("MFBENCH_BATCH", "1"))
DELAY_MS = float(os.environ.get("MFBENCH_DELAY_MS", "5"))
ROUTE = f"/v2/models/{os.path.basename(MODEL_DIR)}/infer"


@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class Infer:
    def __init__(self) -> None:
        self.torch = torch
        self.net = common.load(MODEL_DIR)
        self.shape = common.item_shape(MODEL_DIR)

    def _run(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        torch = self.torch
        xs = [
            torch.tensor(i["data"], dtype=torch.float32).reshape(i["shape"][0], *self.shape)
            for i in inputs
        ]
        with torch.inference_mode():
            y = self.net(torch.cat(xs))
        outs = y.split([x.shape[0] for x in xs])
        return [common.oip_response(o)["outputs"][0] for o in outs]

    if BATCH > 1:

        @bentoml.api(
            route=ROUTE,
            batchable=True,
            max_batch_size=BATCH,
            max_latency_ms=max(1000, int(DELAY_MS)),
        )
        def infer(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return self._run(inputs)

    else:

        @bentoml.api(route=ROUTE)
        def infer(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return self._run(inputs)
