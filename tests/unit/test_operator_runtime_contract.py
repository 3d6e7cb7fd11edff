"""The operator's rendered command lines parse with the runtime's own argparse parser.

The operator never imports the runtime (nor the reverse); this test is where the two meet:
a renamed or removed runtime flag, or an operator-side typo, fails here, not in a pod.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from modelfleet_operator.render import Owner, RenderConfig, Strategy
from modelfleet_operator.render.deployment import render_deployment
from modelfleet_operator.spec import parse_spec
from operator_samples import md

cli = pytest.importorskip("modelfleet_runtime.cli", reason="runtime CLI not installed")

DIGEST = "sha256:" + "0123456789abcdef" * 4
SPECS: list[tuple[str, dict[str, Any]]] = [
    ("pvc torchscript on H100", {}),
    (
        "https export fp16 with digest",
        {
            "model": {
                "uri": "https://models.example.com/resnet.tar.gz",
                "format": "torch-export",
                "digest": DIGEST,
            },
            "runtime": {"dtype": "float16", "device": "cuda"},
        },
    ),
    (
        "safetensors entrypoint bf16 MIG",
        {
            "model": {
                "uri": "s3://bucket/bert",
                "format": "safetensors",
                "entrypoint": "mypkg.nets:build",
                "name": "bert-base",
                "version": "2024.1",
            },
            "gpu": {"count": None, "mig": "1g.10gb", "products": None},
            "runtime": {"dtype": "bfloat16"},
        },
    ),
    (
        "cpu only file uri tuned batching",
        {
            "gpu": None,
            "model": {"uri": "file:///srv/m"},
            "runtime": {
                "device": "cpu",
                "threads": 3,
                "logLevel": "debug",
                "overloadStatus": 429,
                "batching": {"maxBatchSize": 1, "maxDelayMilliseconds": 0.5, "maxQueueSize": 1},
                "drainTimeoutSeconds": 120,
                "maxBodyBytes": 2048,
                "resources": {"cpu": "500m"},
            },
            "service": {"port": 9000},
        },
    ),
]


def parser() -> argparse.ArgumentParser:
    return cli.build_parser()  # type: ignore[no-any-return]


def render(spec: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    body = md(spec)
    s = parse_spec(body["spec"], name="resnet")
    dep = render_deployment(
        Owner.from_body(body), s, RenderConfig(), Strategy("RollingUpdate", 1, 0)
    )
    return dep["spec"]["template"]["spec"], s


@pytest.mark.parametrize(("label", "spec"), SPECS, ids=[s[0] for s in SPECS])
def test_serve_args_parse_to_the_spec_values(label: str, spec: dict[str, Any]) -> None:
    pod, s = render(spec)
    container = pod["containers"][0]
    assert container["command"] == ["modelfleet-runtime"]
    args = parser().parse_args(container["args"])
    assert args.command == "serve"
    assert args.name == s.model.name
    assert args.version == s.model.version
    assert args.format == s.model.format
    assert args.entrypoint == s.model.entrypoint
    assert args.digest == s.model.digest
    assert args.device == s.runtime.device
    assert args.dtype == s.runtime.dtype
    assert args.max_batch_size == s.runtime.batching.max_batch_size
    assert args.max_batch_delay_ms == s.runtime.batching.max_delay_ms
    assert args.max_queue_size == s.runtime.batching.max_queue_size
    assert args.port == s.service.port == container["ports"][0]["containerPort"]
    assert args.host == "0.0.0.0"
    assert args.drain_timeout == s.runtime.drain_timeout_s
    assert args.max_body_bytes == s.runtime.max_body_bytes
    assert args.overload_status == s.runtime.overload_status
    assert args.log_level == s.runtime.log_level
    assert args.threads >= 1
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert str(args.model_dir).startswith(mount["mountPath"])


@pytest.mark.parametrize(("label", "spec"), SPECS[1:], ids=[s[0] for s in SPECS[1:]])
def test_fetch_args_parse_and_land_where_serve_reads(label: str, spec: dict[str, Any]) -> None:
    pod, s = render(spec)
    init = pod["initContainers"][0]
    fetch = parser().parse_args(init["args"])
    serve = parser().parse_args(pod["containers"][0]["args"])
    assert fetch.command == "fetch"
    assert fetch.uri == s.model.uri
    assert fetch.dest == serve.model_dir == Path("/models/model")
    assert fetch.digest == s.model.digest


def test_runtime_defaults_are_not_contradicted_when_optional_fields_are_unset() -> None:
    pod, _ = render({})
    args = parser().parse_args(pod["containers"][0]["args"])
    assert args.dtype is None  # as saved: the operator does not force a cast
