"""Conformance: KServe's InferenceRESTClient (protocol v2) against a server.

Usage: kserve_check.py BASE_URL MODEL EXPECTED_JSON. The client has no metadata call, so it
checks liveness, readiness, model readiness and an infer.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

base, model, expected_file = sys.argv[1], sys.argv[2], sys.argv[3]
exp = json.loads(Path(expected_file).read_text())
x = np.asarray(exp["input"], dtype=np.float32).reshape(exp["shape"])
want = np.asarray(exp["output"], dtype=np.float32)


async def main() -> dict[str, str]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    results: dict[str, str] = {}

    async def check(name: str, fn: Callable[[], Awaitable[bool]]) -> None:
        try:
            results[name] = "pass" if await fn() else "FAIL: unexpected answer"
        except Exception as exc:  # a failed check is a result, not a crash
            results[name] = f"FAIL: {type(exc).__name__}: {str(exc)[:200]}"

    async def infer() -> bool:
        inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        res = await client.infer(
            base, InferRequest(model_name=model, infer_inputs=[inp]), model_name=model
        )
        got = res.outputs[0].as_numpy()
        return bool(np.allclose(got.reshape(-1), want.reshape(-1), atol=1e-4))

    await check("server_live", lambda: client.is_server_live(base))
    await check("server_ready", lambda: client.is_server_ready(base))
    await check("model_ready", lambda: client.is_model_ready(base, model))
    await check("infer_json", infer)
    await client.close()
    return results


print(json.dumps(asyncio.run(main())))
