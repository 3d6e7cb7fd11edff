"""KServe's Python ModelServer with a custom Model (OIP v2 REST). It has no in-process batcher
(KServe batches in a separate Go sidecar), so only the batching-off setting applies."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbench_common as common
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--port", type=int, required=True)
a, _ = p.parse_known_args()


class TorchModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.net = common.load(self.model_dir)
        self.ready = True
        return self.ready

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        # Off the event loop, as every other peer does it (a sync predict would block the loop).
        y = await asyncio.get_running_loop().run_in_executor(None, self._forward, x)
        out = InferOutput(name=common.OUTPUT, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(
            model_name=self.name, infer_outputs=[out], response_id=payload.id or ""
        )


if __name__ == "__main__":
    model = TorchModel(os.path.basename(a.model_dir), a.model_dir)
    ModelServer(http_port=a.port, workers=1, enable_grpc=False, enable_latency_logging=False).start(
        [model]
    )
