"""Where a served request's CPU goes: per-thread CPU of the runtime under closed-loop load.

    .venv/bin/python bench/profile_payloads.py [--model mlp1024] [--body json|binary]
        [--concurrency 64] [--duration 8] [--py-spy out.txt]

Builds the payload suite's models (bench/runtime.py), serves one pinned to core 0 with
``--threads 1`` and max batch 32, drives it with the Go load generator on core 1 and prints,
per thread of the server (the event loop is the main thread; the batcher runs the forward
pass and encodes answers), CPU microseconds per request over the measured window, plus the
rows per batch and the load average. ``--py-spy FILE`` also records the server with py-spy
(``--threads --nonblocking``, raw format) for the same window, if py-spy is installed (a
measuring tool, not a dependency: ``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime as bench


def thread_cpu(pid: int) -> dict[int, tuple[str, float, int, int]]:
    """tid -> (name, user+system CPU seconds, voluntary and involuntary context switches)
    for every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        switches = {k: int(v) for k, _, v in (line.partition(":") for line in status.splitlines())
                    if k.endswith("ctxt_switches")}  # fmt: skip
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick,
                               switches["voluntary_ctxt_switches"],
                               switches["nonvoluntary_ctxt_switches"])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp1024", choices=("mlp1024", "image"))
    parser.add_argument("--body", default="json", choices=("json", "binary"))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--py-spy", dest="py_spy", help="write a py-spy raw profile here")
    parser.add_argument("--perf", help="write a `perf record` (cpu-clock, per thread) here")
    args = parser.parse_args()
    bench.build_loadgen()
    with tempfile.TemporaryDirectory(prefix="modelfleet-prof-") as tmp:
        model_dir, _shape, _width = bench.build_payload_models(Path(tmp))[args.model]
        if args.body == "json":
            body, hlen = model_dir / "request.json", None
        else:
            body = model_dir / "request.bin"
            hlen = int((model_dir / "request.bin.hlen").read_text())
        server = bench.Server(model_dir, 1, bench.MAX_BATCH, cpu=bench.SERVER_CPU)
        try:
            # warm-up point, then the measured one
            bench.go_drive(server, args.model, body, hlen, concurrency=args.concurrency,
                           duration=1.0, warmup=0.5)  # fmt: skip
            spy = None
            if args.py_spy:
                exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                spy = subprocess.Popen(
                    [exe, "record", "--pid", str(server.proc.pid), "--threads", "--nonblocking",
                     "--format", "raw", "--rate", "200", "--output", args.py_spy,
                     "--duration", str(int(args.duration))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)
            perf = None
            if args.perf:
                perf = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "1999", "-s", "-o", args.perf,
                     "-p", str(server.proc.pid), "--", "sleep", str(args.duration)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            load0 = bench.loadavg()
            before = thread_cpu(server.proc.pid)
            r = bench.go_drive(server, args.model, body, hlen, concurrency=args.concurrency,
                               duration=args.duration, warmup=0.0)  # fmt: skip
            after = thread_cpu(server.proc.pid)
            for tool in (spy, perf):
                if tool is not None:
                    tool.wait(60)
        finally:
            server.stop()
    done = r["rps"] * args.duration
    print(f"{args.model} {args.body} c={args.concurrency}: {r['rps']:.0f} req/s, "
          f"{r['mean_batch']:.1f} rows/batch, server CPU {r['cpu_per_req'] * 1e6:.0f} us/req, "
          f"p50 {r['p50'] * 1000:.1f} ms, load {load0} -> {bench.loadavg()}")  # fmt: skip
    rows = []
    for tid, (name, cpu, vol, invol) in after.items():
        _name, cpu0, vol0, invol0 = before.get(tid, (name, 0.0, 0, 0))
        if cpu > cpu0:
            label = "event loop (main)" if tid == server.proc.pid else name
            rows.append((cpu - cpu0, tid, label, (vol - vol0) / done, (invol - invol0) / done))
    for spent, tid, label, vol, invol in sorted(rows, reverse=True):
        print(f"  {label:<24} tid {tid:>7} {spent * 1e6 / done:8.1f} us/req, context switches "
              f"per request: {vol:.2f} voluntary, {invol:.2f} involuntary")  # fmt: skip
    print(json.dumps({"rps": r["rps"], "batch": r["mean_batch"],
                      "cpu_us": r["cpu_per_req"] * 1e6}))  # fmt: skip


if __name__ == "__main__":
    main()
