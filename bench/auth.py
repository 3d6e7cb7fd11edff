"""What API keys cost the runtime, and whether a per-key rate limit holds, measured.

    .venv/bin/python bench/auth.py [--rounds 3] [--duration 5] [--keys 1000]

Throughput: the light model of bench/http_front.py (the HTTP path is what is measured), the
server pinned to core 0 (--threads 1), the Go load generator on core 1 at c=64, rounds
alternating between a server without keys and one with ``--api-keys`` (a directory of
``--keys`` hashes, the one used among them), so a shared machine's drift hits both.

Limits: one key at ``--key-rate 50 --key-burst 10`` driven closed-loop at c=8 for the
duration: the admitted rate against the configured one (the bucket may also spend its
burst once: 50 + 10/duration per second at most), and every other answer a 429.

Prints the load average next to every figure. Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchutil import loadavg
from http_front import build_light, build_loadgen, drive, serve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))
from modelfleet_runtime.auth import mint  # noqa: E402  (the runtime's own key format)

RATE, BURST = 50.0, 10


def bearer(key: str | None) -> list[str]:
    return [f"Authorization: Bearer {key}"] if key else []


def write_keys(directory: Path, count: int) -> str:
    directory.mkdir()
    used = ""
    for i in range(count):
        key, digest = mint(f"k{i}")
        (directory / f"k{i}").write_text(digest)
        used = used or key
    return used


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--keys", type=int, default=1000, help="hashes in the key directory")
    args = parser.parse_args()
    build_loadgen()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_light(root)
        body = root / "request.json"
        keys = root / "keys"
        key = write_keys(keys, args.keys)
        modes: dict[str, tuple[tuple[str, ...], str | None]] = {
            "no keys": ((), None),
            f"{args.keys} keys": (("--api-keys", str(keys)), key),
        }
        rps: dict[str, list[float]] = {m: [] for m in modes}
        p50: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(args.rounds):
            for mode, (extra, used) in modes.items():
                proc, port = serve(model_dir, REPO, *extra)
                try:
                    r = drive(port, body, 64, args.duration, headers=bearer(used))
                finally:
                    proc.terminate()
                    proc.wait(30)
                rps[mode].append(r["rps"])
                p50[mode].append(r["p50_ms"])
                print(f"round {i + 1} {mode:<10} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:5.1f} "
                      f"ms  load {loadavg()}", flush=True)  # fmt: skip
        print(f"\nlight model, c=64, {args.duration:.0f} s x {args.rounds} rounds (server on "
              "core 0, load generator on core 1)")  # fmt: skip
        print(f"{'server':<12}{'median req/s':>14}{'min':>9}{'max':>9}{'median p50 ms':>15}")
        for mode in modes:
            print(f"{mode:<12}{statistics.median(rps[mode]):>14.0f}{min(rps[mode]):>9.0f}"
                  f"{max(rps[mode]):>9.0f}{statistics.median(p50[mode]):>15.1f}")  # fmt: skip
        names = list(modes)
        ratio = statistics.median(rps[names[1]]) / statistics.median(rps[names[0]])
        print(f"with keys / without: {ratio:.3f}  (load {loadavg()})")

        proc, port = serve(model_dir, REPO, "--api-keys", str(keys), "--key-rate", str(RATE),
                           "--key-burst", str(BURST))  # fmt: skip
        try:
            r = drive(port, body, 8, args.duration, headers=bearer(key), strict=False)
        finally:
            proc.terminate()
            proc.wait(30)
        admitted = r["ok"] / r["duration_s"]
        ceiling = RATE + BURST / r["duration_s"]
        print(f"\none key at --key-rate {RATE:g} --key-burst {BURST}, c=8 for "
              f"{r['duration_s']:.1f} s: admitted {admitted:.1f} req/s (at most {ceiling:.1f}), "
              f"statuses {r['status']}, failed {r['failed']}  (load {loadavg()})")  # fmt: skip


if __name__ == "__main__":
    main()
