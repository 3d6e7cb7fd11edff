"""Floor: the least a Python server does. FastAPI + uvicorn, OIP JSON by hand, no batching."""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbench_common as common
import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--port", type=int, required=True)
a = p.parse_args()

name = os.path.basename(a.model_dir)
model = common.load(a.model_dir)
shape = common.item_shape(a.model_dir)
app = FastAPI()


def forward(data: list[float], n: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor(data, dtype=torch.float32).reshape(n, *shape))


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post(f"/v2/models/{name}/infer")
async def infer(request: Request) -> Response:
    body = json.loads(await request.body())
    inp = body["inputs"][0]
    out = await run_in_threadpool(forward, inp["data"], inp["shape"][0])
    return Response(json.dumps(common.oip_response(out)), media_type="application/json")


uvicorn.run(app, host="127.0.0.1", port=a.port, workers=1, log_level="warning", access_log=False)
