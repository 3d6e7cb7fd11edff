"""Conformance: tritonclient[http] (an independent OIP client) against a server.

Usage: tritonclient_check.py HOST:PORT MODEL EXPECTED_JSON.
Prints one JSON line: check -> "pass" or "FAIL: ...".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tritonclient import http

url, model, expected_file = sys.argv[1], sys.argv[2], sys.argv[3]
exp = json.loads(Path(expected_file).read_text())
x = np.asarray(exp["input"], dtype=np.float32).reshape(exp["shape"])
want = np.asarray(exp["output"], dtype=np.float32)
c = http.InferenceServerClient(url=url, network_timeout=30)
results: dict[str, str] = {}


def check(name: str, fn: Callable[[], bool]) -> None:
    try:
        results[name] = "pass" if fn() else "FAIL: unexpected answer"
    except Exception as exc:  # a failed check is a result, not a crash
        results[name] = f"FAIL: {type(exc).__name__}: {str(exc)[:200]}"


def metadata() -> bool:
    md = c.get_model_metadata(model)
    return (
        md["name"] == model
        and md["inputs"][0]["name"] == "input"
        and md["outputs"][0]["name"] == "output"
    )


def infer(binary: bool) -> bool:
    inp = http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = http.InferRequestedOutput("output", binary_data=binary)
    r = c.infer(model, [inp], outputs=[out])
    got = r.as_numpy("output")
    return got is not None and np.allclose(got.reshape(-1), want.reshape(-1), atol=1e-4)


check("server_live", c.is_server_live)
check("model_ready", lambda: c.is_model_ready(model))
check("metadata", metadata)
check("config", lambda: bool(c.get_model_config(model)))
check("infer_json", lambda: infer(False))
check("infer_binary", lambda: infer(True))
print(json.dumps(results))
