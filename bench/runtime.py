"""Benchmark the modelfleet runtime against raw ``model(batch)`` in the same run.

    .venv/bin/python bench/runtime.py [--duration 3] [--threads N]

Builds two TorchScript models locally (a CPU-bound one, >= 1 ms per forward at batch 1, and a
light one), serves each with the runtime (batching on and off), drives it from a separate
load-generator process (asyncio, raw keep-alive sockets, JSON requests) at concurrency 1, 8
and 64, and prints one table: req/s, p50/p99 latency, mean batch size (from the runtime's own
metrics), raw throughput of ``model(batch)`` at that batch size measured in this run with the
same intra-op threads, their ratio, and the p50 overhead over the bare forward pass at c=1.
Asserts nothing about timing.

    .venv/bin/python bench/runtime.py --suite payloads

Real payloads (issue 15): a 4-layer 1024x1024 MLP (1024 FP32 values in and out) and a small
conv net on image-sized inputs (3x224x224 FP32 in, 1000 out), each in JSON and in the binary
tensor extension, at concurrency 1, 8 and 64. The server runs pinned to core 0 with
``--threads 1``, the Go load generator (bench/peers/loadgen, built here) on core 1, and raw
``model(batch)`` is measured pinned to core 0 with one thread in the same run, both at the
served mean batch size and at the max batch size (the stricter ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from benchutil import free_port, loadavg

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 64)
MAX_BATCH = 32
SERVER_CPU, LOAD_CPU = 0, 1  # payload suite: server and raw model(batch) on 0, load on 1
CACHE = Path(os.environ.get("MODELFLEET_BENCH_CACHE", Path.home() / ".cache/modelfleet/bench"))
LOADGEN = CACHE / "bin/loadgen"

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


class Server:
    def __init__(
        self, model_dir: Path, threads: int, max_batch: int, cpu: int | None = None
    ) -> None:
        self.port = free_port()
        pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
        self.proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "modelfleet_runtime", "serve",
             "--model-dir", str(model_dir),
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


# -- real payloads (issue 15) ------------------------------------------------------------------


def build_payload_models(root: Path) -> dict[str, tuple[Path, tuple[int, ...], int]]:
    """(model dir, input shape without the batch axis, output width) per payload model."""
    import torch  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i in range(4):
        layers.append(torch.nn.Linear(1024, 1024))
        if i < 3:
            layers.append(torch.nn.ReLU())
    image = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 1000),
    )  # fmt: skip
    specs = {"mlp1024": (torch.nn.Sequential(*layers), (1024,), 1024),
             "image": (image, (3, 224, 224), 1000)}  # fmt: skip
    out = {}
    for name, (module, shape, width) in specs.items():
        d = root / name
        d.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(module.eval(), torch.rand(2, *shape))
        traced.save(str(d / "model.pt"))
        manifest = {
            "format": "torchscript", "weights": "model.pt", "name": name,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, width]}],
        }  # fmt: skip
        (d / "model.yaml").write_text(yaml.safe_dump(manifest))
        count = 1
        for n in shape:
            count *= n
        # short decimals, so the JSON body is what a client sending rounded pixels would send
        data = [round(((i * 7919) % 200) / 100.0 - 1.0, 2) for i in range(count)]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, *shape], "data": data}]}
        (d / "request.json").write_text(json.dumps(body, separators=(",", ":")))
        header = json.dumps({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, *shape],
                        "parameters": {"binary_data_size": 4 * count}}],
            "parameters": {"binary_data_output": True},
        }, separators=(",", ":")).encode()  # fmt: skip
        blob = torch.tensor(data, dtype=torch.float32).numpy().tobytes()
        (d / "request.bin").write_bytes(header + blob)
        (d / "request.bin.hlen").write_text(str(len(header)))
        out[name] = (d, shape, width)
    return out


def build_loadgen() -> Path:
    subprocess.run(
        ["go", "build", "-o", str(LOADGEN), "."], cwd=REPO / "bench/peers/loadgen", check=True,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )  # fmt: skip
    return LOADGEN


def go_drive(server: Server, model: str, body: Path, header_len: int | None, *,
             concurrency: int, duration: float, warmup: float) -> dict[str, Any]:  # fmt: skip
    """One closed-loop point with the Go load generator pinned to LOAD_CPU."""
    rows0, batches0 = server.batch_stats()
    cpu0 = proc_cpu_s(server.proc.pid)
    cmd = ["taskset", "-c", str(LOAD_CPU), str(LOADGEN),
           "-url", f"http://127.0.0.1:{server.port}/v2/models/{model}/infer",
           "-body", str(body), "-c", str(concurrency), "-d", f"{duration}s",
           "-warmup", f"{warmup}s", "-timeout", "30s", "-expect", '"outputs"']  # fmt: skip
    if header_len is not None:
        cmd += ["-content-type", "application/octet-stream",
                "-H", f"Inference-Header-Content-Length: {header_len}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, check=True, text=True,
                         env={**os.environ, "GOMAXPROCS": "1"},
                         timeout=duration + warmup + 90)  # fmt: skip
    r: dict[str, Any] = json.loads(out.stdout)
    cpu1 = proc_cpu_s(server.proc.pid)
    rows1, batches1 = server.batch_stats()
    bad = r["failed"] + r["rejected"] + r["bad_bodies"]
    if bad or not r["ok"]:
        raise RuntimeError(f"load generator saw errors: {r}")
    return {"rps": r["rps"], "p50": r["p50_ms"] / 1000, "p99": r["p99_ms"] / 1000,
            "mean_batch": (rows1 - rows0) / max(1.0, batches1 - batches0),
            # server CPU per request over everything it answered (warm-up and tail included)
            "cpu_per_req": (cpu1 - cpu0) / max(1, r["completed"])}  # fmt: skip


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PinnedRaw(Raw):
    """Raw ``model(batch)`` with this process pinned to the server's core while it runs.

    The box is shared, so other processes steal the core at random: throughput is the best of
    five short windows (interference only ever slows a window down), and the CPU time per row
    (thread CPU time, which such interference barely moves) is kept beside it."""

    def __init__(self, model_dir: Path, shape: tuple[int, ...]) -> None:
        super().__init__(model_dir, 0)
        self.shape = shape
        self.cpu_per_row = 0.0

    def rows_per_s(self, batch: int, seconds: float = 0.2) -> float:
        x = self.torch.rand(batch, *self.shape)
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {SERVER_CPU})
        best, cpu_rows = 0.0, []
        try:
            with self.torch.inference_mode():
                for _ in range(3):
                    self.model(x)
                for _ in range(5):
                    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
                    while (elapsed := time.perf_counter() - t0) < seconds:
                        self.model(x)
                        n += 1
                    best = max(best, n * batch / elapsed)
                    cpu_rows.append((time.thread_time() - c0) / (n * batch))
        finally:
            os.sched_setaffinity(0, mask)
        self.cpu_per_row = statistics.median(cpu_rows)
        return best


def raw_malloc_tuned() -> None:
    """The glibc thresholds the runtime sets (modelfleet_runtime/malloc.py), for the raw
    baseline too: with glibc's defaults raw model(batch) on the image model faults its
    buffers in again every call (~2x the CPU per row here), a handicap the runtime no
    longer has, so the tuned baseline is the stricter one."""
    import ctypes  # noqa: PLC0415

    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt(-8, 1)  # M_ARENA_MAX
    mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD


def payload_suite(args: argparse.Namespace) -> None:
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    if args.raw_malloc == "tuned":
        raw_malloc_tuned()
    build_loadgen()
    started = time.monotonic()
    load_start = loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelfleet-bench-") as tmp:
        models = build_payload_models(Path(tmp))
        for name, (model_dir, shape, _width) in models.items():
            if args.models and name not in args.models.split(","):
                continue
            raw = PinnedRaw(model_dir, shape)
            raw_max = raw.rows_per_s(MAX_BATCH)
            server = Server(model_dir, 1, MAX_BATCH, cpu=SERVER_CPU)
            try:
                for encoding in ("json", "binary"):
                    if encoding == "json":
                        body, hlen = model_dir / "request.json", None
                    else:
                        body = model_dir / "request.bin"
                        hlen = int((model_dir / "request.bin.hlen").read_text())
                    for c in CONCURRENCY:
                        r = go_drive(server, name, body, hlen, concurrency=c,
                                     duration=args.duration, warmup=args.warmup)  # fmt: skip
                        batch = max(1, round(r["mean_batch"]))
                        raw_at = raw.rows_per_s(batch)
                        r["cpu_ratio"] = raw.cpu_per_row / r["cpu_per_req"]
                        rows.append((name, encoding, c, r, raw_at, raw_max, loadavg()))
                        print(f"  {name} {encoding} c={c} {r['rps']:.0f} req/s  batch "
                              f"{r['mean_batch']:.1f}  raw@b {raw_at:.0f}  load {loadavg()}",
                              file=sys.stderr, flush=True)  # fmt: skip
            finally:
                server.stop()
    elapsed = time.monotonic() - started
    print(f"modelfleet runtime vs raw model(batch), real payloads - torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), server on "
          f"core {SERVER_CPU} (--threads 1, max batch {MAX_BATCH}), Go load generator on core "
          f"{LOAD_CPU}, {args.duration:g} s per point, raw malloc {args.raw_malloc}, one run of "
          f"{elapsed:.0f} s, load average "
          f"{load_start} at start")  # fmt: skip
    header = (f"{'model':<8} {'body':<6} {'conc':>4} {'req/s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'batch':>5} {'raw@b':>7} {'ratio':>5} {'raw@32':>7} "
              f"{'r@32':>5} {'cpu us':>6} {'cpu r':>5}  load")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, encoding, c, r, raw_at, raw_max, load in rows:
        print(f"{name:<8} {encoding:<6} {c:>4} {r['rps']:7.0f} {r['p50'] * 1000:7.2f} "
              f"{r['p99'] * 1000:7.2f} {r['mean_batch']:5.1f} {raw_at:7.0f} "
              f"{r['rps'] / raw_at:5.2f} {raw_max:7.0f} "
              f"{r['rps'] / raw_max:5.2f} {r['cpu_per_req'] * 1e6:6.0f} "
              f"{r['cpu_ratio']:5.2f}  {load}")  # fmt: skip
    print(
        "ratio = served req/s / raw model(batch) rows/s at the served mean batch size; r@32 = "
        "the same against raw at the max batch size (raw: best of five 0.2 s windows); cpu us "
        "= server CPU per request; cpu r = raw CPU per row at the served batch size / server "
        "CPU per request (the ratio on a core nobody else uses). Goals at c=64: mlp1024 json "
        ">= 0.8, binary >= 0.9; image binary >= 0.9."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch intra-op threads, for the server and for raw model(batch); "
        "the default leaves one core for HTTP and the load generator",
    )
    parser.add_argument(
        "--suite",
        choices=("classic", "payloads"),
        default="classic",
        help="classic: the cpu-bound and light models (JSON, unpinned); "
        "payloads: 1024-value and image-sized tensors, JSON and binary, pinned",
    )
    parser.add_argument("--models", help="payloads suite: comma list of mlp1024,image")
    parser.add_argument(
        "--raw-malloc", choices=("tuned", "default"), default="tuned",
        help="payloads suite: glibc malloc thresholds for the raw baseline (tuned: the "
        "runtime's, the stricter baseline; default: glibc's)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen_main(args)
        return
    if args.suite == "payloads":
        payload_suite(args)
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
    print(
        "ratio = served req/s / raw model(batch) rows/s at the mean batch size; "
        "p50 ovh = p50 latency at c=1 minus the bare forward pass at batch 1. "
        "Goals: ratio >= 0.8 for cpu-bound at c=64, p50 overhead <= 1.5 ms at c=1."
    )


if __name__ == "__main__":
    main()
