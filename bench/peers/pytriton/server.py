"""Triton Inference Server through PyTriton: a Python callable bound as a Triton model.

Triton itself (C++) answers HTTP (OIP v2) and runs the dynamic batcher; requests reach this
process over PyTriton's ZeroMQ proxy. Batching off = max_batch_size 1 (Triton never merges).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbench_common as common
import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--delay-ms", type=float, default=0.0)
a = p.parse_args()
name = os.path.basename(a.model_dir)
net = common.load(a.model_dir)
shape = common.item_shape(a.model_dir)


@batch
def infer(**inputs: np.ndarray) -> dict[str, Any]:
    with torch.inference_mode():
        y = net(torch.from_numpy(inputs[common.INPUT]))
    return {common.OUTPUT: y.numpy()}


config = TritonConfig(
    http_address="127.0.0.1",
    http_port=a.port,
    grpc_address="127.0.0.1",
    grpc_port=a.port + 1,
    metrics_port=a.port + 2,
    log_verbose=0,
)
with Triton(config=config) as triton:
    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=[Tensor(name=common.INPUT, dtype=np.float32, shape=shape)],
        outputs=[Tensor(name=common.OUTPUT, dtype=np.float32, shape=(10,))],
        config=ModelConfig(
            max_batch_size=max(1, a.batch),
            batcher=DynamicBatcher(max_queue_delay_microseconds=int(a.delay_ms * 1000)),
        ),
        strict=False,
    )
    signal.signal(signal.SIGTERM, lambda *_: triton.stop())
    triton.serve()
