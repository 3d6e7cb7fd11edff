"""Ray Serve: one replica, raw Starlette request (OIP JSON body), @serve.batch when --batch > 1."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbench_common as common
import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--delay-ms", type=float, default=0.0)
a = p.parse_args()
name = os.path.basename(a.model_dir)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Infer:
    def __init__(self, model_dir: str, batch: int, delay_ms: float) -> None:
        self.torch = torch
        self.net = common.load(model_dir)
        self.shape = common.item_shape(model_dir)
        self.batching = batch > 1
        self.predict_batch.set_max_batch_size(max(1, batch))
        self.predict_batch.set_batch_wait_timeout_s(delay_ms / 1000.0)

    def predict_one(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.net(x)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batch(self, xs: list[Any]) -> list[Any]:
        torch = self.torch
        with torch.inference_mode():
            y = self.net(torch.cat(xs))
        return list(y.split([x.shape[0] for x in xs]))

    async def __call__(self, request: Request) -> Response:
        inp = json.loads(await request.body())["inputs"][0]
        x = self.torch.tensor(inp["data"], dtype=self.torch.float32).reshape(
            inp["shape"][0], *self.shape
        )
        # Batching off: a plain sync call (Serve runs it on the replica's event loop thread).
        y = await self.predict_batch(x) if self.batching else self.predict_one(x)
        return Response(json.dumps(common.oip_response(y)), media_type="application/json")


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Health:
    async def __call__(self, request: Request) -> dict[str, bool]:
        return {"ready": True}


if __name__ == "__main__":
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(
        Infer.bind(a.model_dir, a.batch, a.delay_ms),
        name="infer",
        route_prefix=f"/v2/models/{name}/infer",
    )
    serve.run(Health.bind(), name="health", route_prefix="/v2/health/ready")

    def stop(*_: Any) -> None:
        serve.shutdown()  # Serve's graceful path: replicas finish in-flight requests
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)
