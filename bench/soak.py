"""A mixed soak: normal clients and hostile ones against one runtime; prints the server's
RSS and descriptors over time.

    .venv/bin/python bench/soak.py [--duration 120]

Normal load: the Go load generator (bench/peers/loadgen) at c=8 on keep-alive connections
(the light model of bench/http_front.py). Hostile, all at once, each in a loop for the
whole run: a client that pipelines requests and reads nothing (dropped by --write-timeout),
slowloris heads trickled a byte at a time (reaped by --request-timeout), bursts of 300 idle
connections (past --max-connections: pushed out or refused), garbage and truncated
requests, oversized and half-sent bodies. RSS should stay flat once warm: the figure to
read is the last sample against the one after warm-up. Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_front import REPO, build_light, build_loadgen, free_port, loadavg

STOP = threading.Event()
COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def count(name: str) -> None:
    with _LOCK:
        COUNTS[name] = COUNTS.get(name, 0) + 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def drain(sock: socket.socket, wait_s: float) -> None:
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def pipeliner(port: int) -> None:
    request = b"GET /v2/models/light/config HTTP/1.1\r\nHost: soak\r\n\r\n" * 1000
    while not STOP.is_set():
        try:
            sock = connect(port, rcvbuf=4096)
            sock.settimeout(1)
            try:
                while not STOP.is_set():
                    sock.send(request)
            except TimeoutError:
                count("pipeliner paused")
                drain(sock, 30)  # the server drops us after --write-timeout
                count("pipeliner dropped")
            sock.close()
        except OSError:
            count("pipeliner reset")
            time.sleep(0.1)


def slowloris(port: int) -> None:
    head = b"POST /v2/models/light/infer HTTP/1.1\r\nHost: soak\r\nX-Pad: " + b"a" * 10000
    while not STOP.is_set():
        try:
            sock = connect(port)
            for byte in head:
                if STOP.is_set():
                    break
                sock.send(bytes([byte]))
                time.sleep(0.2)
            sock.close()
        except OSError:
            count("slowloris reaped")
            time.sleep(0.1)


def idle_burst(port: int) -> None:
    while not STOP.is_set():
        opened = []
        for _ in range(300):
            try:
                opened.append(connect(port))
            except OSError:
                count("idle refused")
        STOP.wait(5)
        for sock in opened:
            sock.close()
        count("idle burst")


GARBAGE = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST /v2/models/light/infer HTTP/1.1\r\nHost: s\r\nContent-Length: \xc2\xb9\r\n\r\n",
    b"POST /v2/models/light/infer HTTP/1.1\r\nHost: s\r\nContent-Length: 999999999\r\n\r\n",
    b"POST /v2/models/light/infer HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b'POST /v2/models/light/infer HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\n\r\n{"in',
    b"GET /v2 HTTP/1.1\r\nHost: s\r\nX: \x01\r\n\r\n",
    b"PUT /v2/models/light/infer HTTP/1.1\r\nHost: s\r\n\r\n",
    b'POST /v2/models/light/infer HTTP/1.1\r\nHost: s\r\nContent-Length: 7\r\n\r\n{"a":1}',
]


def garbage(port: int) -> None:
    rng = random.Random(0)
    while not STOP.is_set():
        try:
            sock = connect(port)
            data = rng.choice(GARBAGE) if rng.random() < 0.7 else rng.randbytes(200)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            drain(sock, 10)
            sock.close()
            count("garbage")
        except OSError:
            count("garbage reset")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    build_loadgen()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_light(Path(tmp))
        port = free_port()
        log = Path(tmp) / "runtime.log"
        with log.open("wb") as log_file:
            server = subprocess.Popen(
                [
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
                    "--max-connections",
                    "256",
                    "--request-timeout",
                    "5",
                    "--write-timeout",
                    "5",
                    "--keepalive-timeout",
                    "30",
                    "--log-level",
                    "warning",
                ],
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                run(server, port, Path(tmp) / "request.json", args.duration, args.every)
            finally:
                STOP.set()
                server.terminate()
                server.wait(60)
        lines = log.read_text(errors="replace").splitlines()
        print(
            f"\nruntime log: {len(lines)} lines, "
            f"{sum('Traceback' in ln for ln in lines)} tracebacks; exit {server.returncode}"
        )
        for line in lines[-5:]:
            print("  " + line)


def run(
    server: subprocess.Popen[bytes], port: int, body: Path, duration: float, every: float
) -> None:
    from http_front import LOADGEN  # noqa: PLC0415

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: s\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            pass
        time.sleep(0.2)
    normal = subprocess.Popen(
        [
            str(LOADGEN),
            "-url",
            f"http://127.0.0.1:{port}/v2/models/light/infer",
            "-body",
            str(body),
            "-c",
            "8",
            "-d",
            f"{duration}s",
            "-warmup",
            "0s",
            "-timeout",
            "30s",
            "-expect",
            '"outputs"',
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "GOMAXPROCS": "1"},
    )
    hostile = [pipeliner, slowloris, slowloris, slowloris, idle_burst, garbage, garbage]
    threads = [threading.Thread(target=fn, args=(port,), daemon=True) for fn in hostile]
    for t in threads:
        t.start()
    print(f"{'t s':>5}{'RSS MB':>9}{'fds':>6}  load average   hostile events so far")
    start = time.monotonic()
    samples = []
    while time.monotonic() - start < duration:
        time.sleep(every)
        t = time.monotonic() - start
        samples.append((t, rss_mb(server.pid)))
        with _LOCK:
            events = ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
        print(
            f"{t:>5.0f}{samples[-1][1]:>9.1f}{fds(server.pid):>6}  {loadavg():<14} {events}",
            flush=True,
        )
    STOP.set()
    out, _ = normal.communicate(timeout=120)
    result = json.loads(out)
    warm = samples[min(1, len(samples) - 1)][1]
    print(
        f"\nnormal clients: {result['ok']} answered 2xx, {result['rps']:.0f} req/s, "
        f"p99 {result['p99_ms']:.1f} ms, failed {result['failed']}, "
        f"rejected {result['rejected']}, errors {result['errors']}"
    )
    print(
        f"RSS: {warm:.1f} MB after warm-up (t={samples[min(1, len(samples) - 1)][0]:.0f}s) -> "
        f"{samples[-1][1]:.1f} MB at the end; max {max(r for _, r in samples):.1f} MB"
    )


if __name__ == "__main__":
    main()
