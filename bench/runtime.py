"""Benchmark the modelfleet runtime against raw ``model(batch)`` in the same run.

    .venv/bin/python bench/runtime.py [--duration 3] [--threads N]

Builds two TorchScript models locally (a CPU-bound one, >= 1 ms per forward at batch 1, and a
light one), serves each with the runtime (batching on and off), drives it from a separate
load-generator process (asyncio, raw keep-alive sockets, JSON requests) at concurrency 1, 8
and 64, and prints one table: req/s, p50/p99 latency, mean batch size (from the runtime's own
metrics), raw throughput of ``model(batch)`` at that batch size measured in this run with the
same intra-op threads, their ratio, and the p50 overhead over the bare forward pass at c=1.
Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 64)
MAX_BATCH = 32

# -- load generator (runs in its own process) --------------------------------------------------


async def _client(
    port: int, request: bytes, *, start: float, stop: float, lat: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        if t0 >= stop:
            break
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        t1 = loop.time()
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode())
        elif t0 >= start:
            lat.append(t1 - t0)
    writer.close()


async def _loadgen(port: int, request: bytes, concurrency: int, warmup: float,
                   duration: float) -> dict[str, Any]:  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + duration
    lat: list[float] = []
    errors: list[str] = []
    await asyncio.gather(*(_client(port, request, start=start, stop=stop, lat=lat, errors=errors)
                           for _ in range(concurrency)))  # fmt: skip
    return {"latencies": lat, "errors": errors[:5], "error_count": len(errors)}


def loadgen_main(args: argparse.Namespace) -> None:
    body = Path(args.body).read_bytes()
    request = (f"POST /v2/models/{args.model}/infer HTTP/1.1\r\nHost: bench\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    result = asyncio.run(_loadgen(args.port, request, args.concurrency, args.warmup,
                                  args.duration))  # fmt: skip
    json.dump(result, sys.stdout)


# -- models ------------------------------------------------------------------------------------


def build_models(root: Path) -> dict[str, Path]:
    import torch  # noqa: PLC0415 (the load generator never needs torch)
    import yaml  # noqa: PLC0415

    class CpuBound(torch.nn.Module):
        """Outer product of the input, then 16 dense 128x128 matmuls per row: ~67 MFLOP/row."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Parameter(torch.randn(16, 128, 128) / 128**0.5)
            self.head = torch.nn.Linear(128, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.unsqueeze(2) * x.unsqueeze(1)
            for i in range(16):
                h = torch.tanh(h @ self.layers[i])
            return self.head(h.mean(dim=1))

    torch.manual_seed(0)
    specs = {
        "cpu-bound": (CpuBound(), 128, 8),
        "light": (torch.nn.Sequential(torch.nn.Linear(16, 4)), 16, 4),
    }
    dirs = {}
    for name, (module, features, outputs) in specs.items():
        d = root / name
        d.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(module.eval(), torch.rand(2, features)).save(str(d / "model.pt"))
        manifest = {
            "format": "torchscript", "weights": "model.pt", "name": name,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, features]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, outputs]}],
        }  # fmt: skip
        (d / "model.yaml").write_text(yaml.safe_dump(manifest))
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, features],
                            "data": [round(0.01 * i, 2) for i in range(features)]}]}  # fmt: skip
        (d / "request.json").write_text(json.dumps(body))
        dirs[name] = d
    return dirs


class Raw:
    """``model(batch)`` in this process, with the server's intra-op thread count."""

    def __init__(self, model_dir: Path, features: int) -> None:
        import torch  # noqa: PLC0415

        self.torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(model_dir / "model.pt"))
        self.features = features

    def rows_per_s(self, batch: int, seconds: float = 0.5) -> float:
        x = self.torch.rand(batch, self.features)
        with self.torch.inference_mode():
            for _ in range(3):
                self.model(x)
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                self.model(x)
                n += 1
        return n * batch / elapsed

    def p50_forward_s(self) -> float:
        x = self.torch.rand(1, self.features)
        times = []
        with self.torch.inference_mode():
            for _ in range(3):
                self.model(x)
            end = time.perf_counter() + 0.5
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                self.model(x)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


# -- server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, model_dir: Path, threads: int, max_batch: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_runtime", "serve", "--model-dir", str(model_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(threads),
             "--max-batch-size", str(max_batch), "--max-batch-delay-ms", "2",
             "--log-level", "warning"],
            cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready") as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("runtime did not become ready")

    def batch_stats(self) -> tuple[float, float]:
        """(sum of rows, number of batches) from the runtime's metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics") as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith(("modelfleet_batch_size_sum", "modelfleet_batch_size_count")):
                values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return values["modelfleet_batch_size_sum"], values["modelfleet_batch_size_count"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def drive(server: Server, model: str, body: Path, *, concurrency: int, duration: float,
          warmup: float) -> dict[str, Any]:  # fmt: skip
    rows0, batches0 = server.batch_stats()
    out = subprocess.run(
        [sys.executable, __file__, "loadgen", "--port", str(server.port), "--model", model,
         "--body", str(body), "--concurrency", str(concurrency), "--duration", str(duration),
         "--warmup", str(warmup)],
        capture_output=True, check=True, text=True, timeout=duration + warmup + 60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    rows1, batches1 = server.batch_stats()
    lat = sorted(result["latencies"])
    if result["error_count"] or not lat:
        raise RuntimeError(f"load generator saw errors: {result['errors']}")
    return {
        "rps": len(lat) / duration,
        "p50": lat[len(lat) // 2],
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        # includes warm-up traffic; the batch mix there is the same
        "mean_batch": (rows1 - rows0) / max(1.0, batches1 - batches0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    lg = sub.add_parser("loadgen")
    lg.add_argument("--port", type=int, required=True)
    lg.add_argument("--model", required=True)
    lg.add_argument("--body", required=True)
    lg.add_argument("--concurrency", type=int, required=True)
    lg.add_argument("--duration", type=float, required=True)
    lg.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch intra-op threads, for the server and for raw model(batch); "
                        "the default leaves one core for HTTP and the load generator")
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen_main(args)
        return

    import torch  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelfleet-bench-") as tmp:
        dirs = build_models(Path(tmp))
        for name, model_dir in dirs.items():
            features = json.loads((model_dir / "request.json").read_text())["inputs"][0]["shape"][1]
            raw = Raw(model_dir, features)
            for max_batch in (MAX_BATCH, 1):
                last_batch = 1
                forward_s = raw.p50_forward_s()
                server = Server(model_dir, args.threads, max_batch)
                try:
                    for c in CONCURRENCY:
                        # The batch size is known only afterwards: measure raw at the previous
                        # point's batch size before and at this one's after, so machine load
                        # drifting during the run hits both sides (this box is shared).
                        before = raw.rows_per_s(last_batch)
                        r = drive(server, name, model_dir / "request.json", concurrency=c,
                                  duration=args.duration, warmup=args.warmup)  # fmt: skip
                        batch = max(1, round(r["mean_batch"]))
                        after = raw.rows_per_s(batch)
                        raw_rps = (before + after) / 2 if batch == last_batch else after
                        last_batch = batch
                        if c == 1:  # the bare forward pass, measured next to this point
                            forward_s = (forward_s + raw.p50_forward_s()) / 2
                        rows.append((name, forward_s, max_batch, c, r, raw_rps))
                finally:
                    server.stop()
    elapsed = time.monotonic() - started

    print(f"modelfleet runtime vs raw model(batch) - torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"intra-op threads {args.threads}, JSON requests on keep-alive HTTP/1.1, "
          f"{args.duration:g} s per point, one run of {elapsed:.0f} s")  # fmt: skip
    header = (f"{'model':<10} {'fwd@1 ms':>8} {'batching':>9} {'conc':>4} {'req/s':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'mean batch':>10} {'raw req/s@b':>11} "
              f"{'ratio':>6} {'p50 ovh ms':>10}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, forward_s, max_batch, c, r, raw_rps in rows:
        overhead = f"{(r['p50'] - forward_s) * 1000:10.2f}" if c == 1 else f"{'':>10}"
        mode = f"on({max_batch})" if max_batch > 1 else "off"
        print(f"{name:<10} {forward_s * 1000:8.2f} {mode:>9} {c:>4} {r['rps']:8.0f} "
              f"{r['p50'] * 1000:7.2f} {r['p99'] * 1000:7.2f} {r['mean_batch']:10.2f} "
              f"{raw_rps:11.0f} {r['rps'] / raw_rps:6.2f} {overhead}")  # fmt: skip
    print("ratio = served req/s / raw model(batch) rows/s at the mean batch size; "
          "p50 ovh = p50 latency at c=1 minus the bare forward pass at batch 1. "
          "Goals: ratio >= 0.8 for cpu-bound at c=64, p50 overhead <= 1.5 ms at c=1.")


if __name__ == "__main__":
    main()
