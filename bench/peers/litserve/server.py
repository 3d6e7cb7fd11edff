"""LitServe: a LitAPI over the same OIP JSON body; LitServe's own batcher when --batch > 1."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import litserve as ls
import mfbench_common as common
import torch

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--delay-ms", type=float, default=0.0)
a = p.parse_args()
name = os.path.basename(a.model_dir)


class API(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.net = common.load(a.model_dir)
        self.shape = common.item_shape(a.model_dir)

    def decode_request(self, request: dict) -> torch.Tensor:
        inp = request["inputs"][0]
        return torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"][0], *self.shape)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(inputs)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output.split(1))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.net(x)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return common.oip_response(output)


if __name__ == "__main__":
    api = API(
        max_batch_size=a.batch,
        batch_timeout=a.delay_ms / 1000.0,
        api_path=f"/v2/models/{name}/infer",
    )
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=1, healthcheck_path="/v2/health/ready"
    )
    server.run(
        host="127.0.0.1",
        port=a.port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )
