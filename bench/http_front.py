"""The runtime's HTTP front end: parse cost and served req/s, this tree against a baseline.

    .venv/bin/python bench/http_front.py [--baseline DIR] [--rounds 3] [--duration 5]

Parse cost: microseconds per request for this tree's parser (llhttp through httptools plus
the server-side rules), h11, and, with ``--baseline``, the parser in DIR (e.g. the
hand-written one before the switch: ``git archive 39781c4 | tar -x -C /tmp/mf-base``).

Throughput: the ``light`` model of bench/runtime.py (one 16x4 linear layer, so the HTTP path
is what is measured), batching on (max batch 32, --threads 1), driven by the Go load
generator (bench/peers/loadgen) at c=64 on keep-alive connections, rounds alternating
between this tree and the baseline so that a shared machine's drift hits both. Prints the
load average next to every figure. Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchutil import free_port, loadavg

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MODELFLEET_BENCH_CACHE", Path.home() / ".cache/modelfleet/bench"))
LOADGEN = CACHE / "bin/loadgen-front"
FEATURES = 16
BODY = json.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, FEATURES],
                "data": [round(0.01 * i, 2) for i in range(FEATURES)],
            }
        ]
    }
).encode()
# What curl/requests/Triton's client send: a head of ~150 bytes, a small JSON body.
REQUEST = (
    b"POST /v2/models/light/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"User-Agent: bench\r\nAccept: */*\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


# -- parse cost ------------------------------------------------------------------------------


def _load_parser_module(src: Path) -> types.ModuleType:
    """httpparse.py from another tree, imported under a private name."""
    spec = importlib.util.spec_from_file_location(
        f"baseline_httpparse_{abs(hash(src))}", src / "modelfleet_runtime/httpparse.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _ours(module: types.ModuleType) -> Callable[[bytes], int]:
    parser = module.RequestParser()  # one keep-alive connection: the parser lives on

    def parse(data: bytes) -> int:
        parser.feed(data)
        n = 0
        while parser.next() is not None:
            n += 1
        return n

    return parse


def _h11() -> Callable[[bytes], int]:
    import h11  # noqa: PLC0415

    conn = h11.Connection(h11.SERVER)

    def parse(data: bytes) -> int:
        conn.receive_data(data)
        n = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return n
            if isinstance(event, h11.EndOfMessage):
                n += 1
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()

    return parse


def per_request_us(parse: Callable[[bytes], int], pipeline: int, repeats: int = 7) -> float:
    """The best of ``repeats`` 0.2 s runs: on a shared machine the minimum is the cost, the
    rest is other tenants."""
    data = REQUEST * pipeline
    assert parse(data) == pipeline
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < 0.2:
            parse(data)
            n += pipeline
        best = min(best, elapsed / n * 1e6)
    return best


def parse_table(baseline: Path | None) -> None:
    sys.path.insert(0, str(REPO / "runtime"))
    import modelfleet_runtime.httpparse as current  # noqa: PLC0415

    parsers: dict[str, Callable[[bytes], int]] = {"this tree (llhttp)": _ours(current)}
    if baseline is not None:
        parsers["baseline"] = _ours(_load_parser_module(baseline / "runtime"))
    parsers["h11"] = _h11()
    print(
        f"parse cost, us per request (a {len(REQUEST)}-byte infer request, best of 7), "
        f"load {loadavg()}"
    )
    print(f"{'parser':<22}{'1 per feed':>12}{'16 pipelined':>14}")
    for name, parse in parsers.items():
        one, many = per_request_us(parse, 1), per_request_us(parse, 16)
        print(f"{name:<22}{one:>12.1f}{many:>14.1f}")


# -- throughput ------------------------------------------------------------------------------


def build_light(root: Path) -> Path:
    import torch  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    torch.manual_seed(0)
    d = root / "light"
    d.mkdir(parents=True)
    module = torch.nn.Sequential(torch.nn.Linear(FEATURES, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(module, torch.rand(2, FEATURES)).save(str(d / "model.pt"))
    manifest = {
        "format": "torchscript",
        "weights": "model.pt",
        "name": "light",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    (d / "model.yaml").write_text(yaml.safe_dump(manifest))
    (root / "request.json").write_bytes(BODY)
    return d


def build_loadgen() -> Path:
    if not LOADGEN.exists():
        subprocess.run(
            ["go", "build", "-o", str(LOADGEN), "."],
            cwd=REPO / "bench/peers/loadgen",
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
        )
    return LOADGEN


def serve(model_dir: Path, src: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src / "runtime")}
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "modelfleet_runtime",
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
            "--max-batch-size",
            "32",
            "--max-batch-delay-ms",
            "2",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=src,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready") as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"runtime from {src} did not become ready")


def drive(
    port: int,
    body: Path,
    concurrency: int,
    duration: float,
    *,
    headers: Sequence[str] = (),
    strict: bool = True,
) -> dict[str, Any]:
    """The load generator's result; with ``strict``, any failed, refused or wrong answer
    raises (``strict=False``: a run that expects 429s reads them from the result)."""
    cmd = [
        "taskset",
        "-c",
        "1",
        str(LOADGEN),
        "-url",
        f"http://127.0.0.1:{port}/v2/models/light/infer",
        "-body",
        str(body),
        "-c",
        str(concurrency),
        "-d",
        f"{duration}s",
        "-warmup",
        "1s",
        "-timeout",
        "30s",
        "-expect",
        '"outputs"',
    ]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run(
        cmd,
        capture_output=True,
        check=True,
        text=True,
        env={**os.environ, "GOMAXPROCS": "1"},
        timeout=duration + 90,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if strict and (
        result["failed"] or result["rejected"] or result["bad_bodies"] or not result["ok"]
    ):
        raise RuntimeError(f"load generator saw errors: {result}")
    return result


def throughput_table(baseline: Path | None, rounds: int, duration: float, conc: int) -> None:
    build_loadgen()
    trees = {"this tree": REPO} | ({"baseline": baseline} if baseline else {})
    rps: dict[str, list[float]] = {name: [] for name in trees}
    p99: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_light(Path(tmp))
        body = Path(tmp) / "request.json"
        for i in range(rounds):
            for name, src in trees.items():
                proc, port = serve(model_dir, src)
                try:
                    r = drive(port, body, conc, duration)
                finally:
                    proc.terminate()
                    proc.wait(30)
                rps[name].append(r["rps"])
                p99[name].append(r["p99_ms"])
                print(
                    f"round {i + 1} {name:<10} {r['rps']:8.0f} req/s  p99 {r['p99_ms']:6.1f} ms"
                    f"  load {loadavg()}",
                    flush=True,
                )
    print(
        f"\nlight model, c={conc}, {duration:.0f} s x {rounds} rounds (server on core 0, "
        f"load generator on core 1)"
    )
    print(f"{'tree':<12}{'median req/s':>14}{'min':>9}{'max':>9}{'median p99 ms':>15}")
    for name in trees:
        print(
            f"{name:<12}{statistics.median(rps[name]):>14.0f}{min(rps[name]):>9.0f}"
            f"{max(rps[name]):>9.0f}{statistics.median(p99[name]):>15.1f}"
        )
    if baseline:
        ratio = statistics.median(rps["this tree"]) / statistics.median(rps["baseline"])
        print(f"this tree / baseline: {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--parse-only", action="store_true")
    args = parser.parse_args()
    parse_table(args.baseline)
    if not args.parse_only:
        print()
        throughput_table(args.baseline, args.rounds, args.duration, args.concurrency)


if __name__ == "__main__":
    main()
