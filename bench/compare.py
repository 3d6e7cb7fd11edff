"""Side-by-side runtime benchmark: modelfleet against the servers users would pick instead.

    .venv/bin/python bench/compare.py            # full run (all peers, ~20 min)
    .venv/bin/python bench/compare.py --quick    # a few peers, short runs (~4 min)

Each server runs pinned to core 0 (``taskset``), the Go load generator (bench/peers/loadgen)
to core 1. Sweep: closed loop at concurrency 1, 8, 64; overload: open loop at 2x the peak rate
this server reached; drain: SIGTERM under load. Then the conformance leg (tritonclient and
KServe's REST client against modelfleet and PyTriton). Prints one Markdown report and writes it
(with the raw JSON) under ~/.cache/modelfleet/bench/results/<time>/. Every server is killed at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import mfbench_common as common
from envs import CACHE, PEERS_DIR, REPO, ensure_env, python_of
from recipes import RECIPES, Recipe

SERVER_CPU, LOAD_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIVE: list[subprocess.Popen[bytes]] = []  # servers to kill on any exit path


# ---------------------------------------------------------------- process tree accounting


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, session id, cpu seconds incl. reaped children) of pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = raw[raw.rindex(")") + 2 :].split()
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return int(f[1]), int(f[3]), ticks / CLK_TCK


def tree(root: int) -> list[int]:
    """root, its descendants, and anything still in its session (daemonised helpers)."""
    info: dict[int, tuple[int, int, float]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))):
            info[int(d)] = s
    out = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid, _) in info.items():
            if pid not in out and (ppid in out or sid == root):
                out.add(pid)
                changed = True
    return [p for p in out if p in info]


def cpu_seconds(root: int) -> float:
    return sum(s[2] for p in tree(root) if (s := _stat(p)))


def pss_mib(root: int) -> float:
    """Proportional set size of the tree: shared torch pages are not counted twice."""
    total = 0
    for p in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def kill_tree(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    pids = tree(proc.pid)
    if grace:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    pids = set(pids) | set(tree(proc.pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in LIVE:
        LIVE.remove(proc)


def kill_all(*_: Any) -> None:
    for p in list(LIVE):
        kill_tree(p)
    if _:
        raise SystemExit(130)


# ---------------------------------------------------------------- servers and load


_next_port = [int(os.environ.get("MFBENCH_PORT_BASE", "18100"))]


def free_port() -> int:
    """A port with the next two free as well (Triton and TorchServe use three)."""
    while True:
        base = _next_port[0]
        _next_port[0] += 10
        try:
            for off in range(3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue


@dataclasses.dataclass
class Server:
    recipe: Recipe
    model: str
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log: Path
    startup_s: float


def post(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def first_floats(obj: Any) -> list[float] | None:
    """The output rows wherever a server puts them (OIP "data", BentoML's list, ...)."""
    if isinstance(obj, list) and obj and all(isinstance(v, float) for v in obj):
        return obj
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    for v in items:
        if (found := first_floats(v)) is not None:
            return found
    return None


def start(  # noqa: PLR0917
    recipe: Recipe, model: str, batch: int, delay_ms: float, run_dir: Path, expected: list[float]
) -> Server:
    model_dir = CACHE / "models" / model
    port = free_port()
    work = run_dir / "work" / f"{recipe.name}-{model}-{batch}"
    work.mkdir(parents=True, exist_ok=True)
    log = run_dir / "logs" / f"{recipe.name}-{model}-b{batch}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["taskset", "-c", SERVER_CPU, *recipe.command(model_dir, port, batch, delay_ms, work)]
    env = {**os.environ, **recipe.env(model_dir, batch, delay_ms)}
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
    LIVE.append(proc)
    url = f"http://127.0.0.1:{port}{recipe.infer_path(model)}"
    body = (CACHE / "bodies" / f"{model}.json").read_bytes()
    deadline = t0 + 180
    while True:  # ready = an infer answers 200 with the right numbers
        if proc.poll() is not None:
            raise RuntimeError(f"{recipe.name} exited {proc.returncode} while starting; see {log}")
        code, data = post(url, body, timeout=5)
        if code == 200:
            break
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise RuntimeError(
                f"{recipe.name} not ready after 180 s (last {code} {data[:200]!r}); see {log}"
            )
        time.sleep(0.5)
    got = first_floats(json.loads(data))
    if (
        got is None
        or len(got) != len(expected)
        or max(abs(a - b) for a, b in zip(got, expected, strict=True)) > 1e-4
    ):
        kill_tree(proc)
        raise RuntimeError(f"{recipe.name} answered wrong numbers: {data[:300]!r}")
    return Server(recipe, model, proc, port, url, log, time.monotonic() - t0)


def load(
    server: Server,
    *,
    conc: int,
    duration: float,
    rate: float = 0.0,
    warmup: float = 1.0,
    timeout: float = 10.0,
    max_requests: int = 2_000_000,
) -> dict[str, Any]:
    body = CACHE / "bodies" / f"{server.model}.json"
    cmd = [
        "taskset",
        "-c",
        LOAD_CPU,
        str(CACHE / "bin/loadgen"),
        "-url",
        server.url,
        "-body",
        str(body),
        "-c",
        str(conc),
        "-d",
        f"{duration}s",
        "-warmup",
        f"{warmup}s",
        "-timeout",
        f"{timeout}s",
        "-n",
        str(max_requests),
        "-rate",
        str(rate),
        "-expect",
        "output",
    ]
    cpu0 = cpu_seconds(server.proc.pid)
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOMAXPROCS": "1"},
        timeout=warmup + duration + timeout + 30,
    )
    cpu1 = cpu_seconds(server.proc.pid)
    if res.returncode != 0:
        raise RuntimeError(f"loadgen failed: {res.stderr[-500:]}")
    r: dict[str, Any] = json.loads(res.stdout)
    # CPU of the whole tree over warm-up + run + tail; per request counted over everything sent.
    total = r["sent"] + int(r["rps"] * warmup) if r["sent"] else 0
    r["cpu_s_per_1k"] = (cpu1 - cpu0) / total * 1000 if total else None
    r["pss_mib"] = pss_mib(server.proc.pid)
    return r


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


# ---------------------------------------------------------------- legs


@dataclasses.dataclass
class Plan:
    peers: list[str]
    models: list[str]
    concurrency: list[int]
    duration: float
    settings: list[tuple[str, int, float]]
    drain: bool
    overload: bool
    conformance: bool


def sweep(
    plan: Plan, run_dir: Path, expected: dict[str, list[float]], say: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in plan.models:
        for label, batch, delay in plan.settings:
            for name in plan.peers:
                recipe = RECIPES[name]
                row_base = {"model": model, "batching": label, "server": name}
                if batch > 1 and not recipe.batching:
                    rows.append({**row_base, "conc": None, "skipped": "no in-process batcher"})
                    continue
                try:
                    srv = start(recipe, model, batch, delay, run_dir, expected[model])
                except Exception as exc:
                    say(f"  {name} {model} {label}: FAILED TO START: {exc}")
                    rows.append({**row_base, "conc": None, "skipped": f"start failed: {exc}"})
                    continue
                try:
                    peak = 0.0
                    for c in plan.concurrency:
                        r = load(srv, conc=c, duration=plan.duration)
                        peak = max(peak, r["rps"])
                        rows.append(
                            {
                                **row_base,
                                "conc": c,
                                "load": uptime(),
                                "startup_s": srv.startup_s,
                                **r,
                            }
                        )
                        say(
                            f"  {model:4} {label:3} c={c:<3} {name:11} {r['rps']:8.1f} rps"
                            f"  p50 {r['p50_ms']:7.2f}"
                            f"  p99 {r['p99_ms']:8.2f} ms  err {r['failed'] + r['rejected']}"
                            f"  load {uptime()}"
                        )
                    if plan.overload and peak > 0:
                        rate = 2 * peak
                        r = load(srv, conc=1024, duration=plan.duration, rate=rate, timeout=5.0)
                        rows.append({**row_base, "conc": "overload", "load": uptime(), **r})
                        say(
                            f"  {model:4} {label:3} 2x={rate:.0f}/s {name:11} ok {r['rps']:8.1f}/s"
                            f"  status {r['status']}"
                            f"  err {r['errors']}  p99ok {r['p99_ms']:.1f} ms"
                        )
                finally:
                    kill_tree(srv.proc, grace=0)
    return rows


def drain(
    plan: Plan, run_dir: Path, expected: dict[str, list[float]], say: Any
) -> list[dict[str, Any]]:
    """SIGTERM the server 2 s into a 16-connection closed loop on the CNN; count what broke.

    Only the root process gets the signal (what the kubelet does to PID 1); when it exits, the
    rest of its tree is killed at once, as a container's PID namespace would be.
    """
    rows = []
    model = "cnn" if "cnn" in plan.models else plan.models[0]
    for name in plan.peers:
        recipe = RECIPES[name]
        batch = 8 if recipe.batching else 1
        try:
            srv = start(recipe, model, batch, 5.0, run_dir, expected[model])
        except Exception as exc:
            rows.append({"server": name, "skipped": f"start failed: {exc}"})
            continue
        try:
            body = CACHE / "bodies" / f"{model}.json"
            cmd = [
                "taskset",
                "-c",
                LOAD_CPU,
                str(CACHE / "bin/loadgen"),
                "-url",
                srv.url,
                "-body",
                str(body),
                "-c",
                "16",
                "-d",
                "6s",
                "-warmup",
                "0.5s",
                "-timeout",
                "20s",
                "-expect",
                "output",
            ]
            lg = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, env={**os.environ, "GOMAXPROCS": "1"}
            )
            time.sleep(2.5)
            t_term = time.monotonic()
            os.kill(srv.proc.pid, signal.SIGTERM)  # the process an orchestrator would signal
            exited_after = None
            while time.monotonic() - t_term < 25:
                if srv.proc.poll() is not None:
                    exited_after = time.monotonic() - t_term
                    # In a container, PID 1 exiting takes every other process with it.
                    kill_tree(srv.proc)
                    break
                time.sleep(0.05)
            out, _ = lg.communicate(timeout=60)
            r = json.loads(out)
            rows.append(
                {
                    "server": name,
                    "model": model,
                    "batch": batch,
                    "exit_s": exited_after,
                    "exit_code": srv.proc.returncode,
                    "load": uptime(),
                    **r,
                }
            )
            say(
                f"  drain {name:11} ok {r['ok']:5}  accepted-then-failed {r['failed']:4}"
                f"  refused/503 {r['rejected']}"
                f"  errors {r['errors']}  exit {srv.proc.returncode} after "
                f"{f'{exited_after:.1f} s' if exited_after is not None else '>25 s (killed)'}"
            )
        finally:
            kill_tree(srv.proc, grace=0)
    return rows


def conformance(
    run_dir: Path, expected_file: Path, say: Any, peers: list[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    exp = json.loads(expected_file.read_text())
    clients = [
        (
            "tritonclient[http]",
            python_of("modelfleet"),
            PEERS_DIR / "conformance/tritonclient_check.py",
            False,
        ),
        (
            "kserve InferenceRESTClient",
            python_of("kserve"),
            PEERS_DIR / "conformance/kserve_check.py",
            True,
        ),
    ]
    for name in [p for p in ("modelfleet", "pytriton") if p in peers]:
        try:
            srv = start(
                RECIPES[name], "mlp", 8 if name != "kserve" else 1, 5.0, run_dir, exp["output"]
            )
        except Exception as exc:
            rows.append({"server": name, "client": "-", "result": {"start": f"FAIL: {exc}"}})
            continue
        try:
            for client, py, script, wants_base in clients:
                target = f"http://127.0.0.1:{srv.port}" if wants_base else f"127.0.0.1:{srv.port}"
                res = subprocess.run(
                    [str(py), str(script), target, "mlp", str(expected_file)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=120,
                )
                try:
                    result = json.loads(res.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    result = {"run": f"FAIL: {res.stderr[-300:]}"}
                rows.append({"server": name, "client": client, "result": result})
                say(f"  conformance {client:28} -> {name:10} {result}")
        finally:
            kill_tree(srv.proc, grace=0)
    return rows


# ---------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(v: float | None, base: float | None) -> str:
    return "-" if not v or not base else f"{v / base:.2f}x"


def not_first(rows: list[dict[str, Any]]) -> list[str]:
    """The rows where some peer beat modelfleet, metric by metric (what to profile next)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        # a server that answered nothing (every request timed out) wins no latency metric
        if r.get("conc") not in (None, "overload") and r.get("ok"):
            groups.setdefault((r["model"], r["batching"], r["conc"]), []).append(r)
    lines = []
    metrics = (("rps", max), ("p50_ms", min), ("p99_ms", min), ("cpu_s_per_1k", min))
    for key, rs in groups.items():
        mf = next((r for r in rs if r["server"] == "modelfleet"), None)
        if mf is None:
            continue
        lost = []
        for m, best_of in metrics:
            best = best_of((r for r in rs if r.get(m) is not None), key=lambda r: r[m])
            if best["server"] != "modelfleet" and mf.get(m) is not None:
                lost.append(f"{m} {best['server']} {best[m]:.2f} vs {mf[m]:.2f}")
        if lost:
            lines.append(f"- {key[0]}, batching {key[1]}, c={key[2]}: " + "; ".join(lost))
    head = "Rows where a peer beat modelfleet (metric: best peer, its value vs modelfleet's):"
    return [head, "", *lines] if lines else ["modelfleet was first on every row and metric."]


def report(
    plan: Plan,
    rows: list[dict[str, Any]],
    drains: list[dict[str, Any]],
    conf: list[dict[str, Any]],
    meta: dict[str, Any],
) -> str:
    out = [
        f"Run {meta['started']} · modelfleet @ {meta['rev']} · load average at start "
        f"{meta['load_start']} / end "
        f"{meta['load_end']} (2 cores, shared) · server on core {SERVER_CPU}, "
        f"load generator on core {LOAD_CPU} · "
        f"torch threads 1 · {plan.duration:g} s per point after 1 s warm-up",
        "",
        "Ratios (xmf) are peer / modelfleet on the same row (rps: >1 means the peer served "
        "more; p99 and CPU: >1 means the peer was slower / used more). Errors = non-2xx + "
        "transport errors. CPU-s/1k = CPU seconds of the server's whole process tree per 1000 "
        "requests. PSS = proportional memory of the tree.",
        "",
        "| model | batching | conc | server | rps | rps xmf | p50 ms | p99 ms | p99 xmf | errors "
        "| CPU-s/1k | CPU xmf | PSS MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {
        (r["model"], r["batching"], r["conc"]): r
        for r in rows
        if r["server"] == "modelfleet" and r.get("conc")
    }
    for r in rows:
        if r.get("conc") in (None, "overload"):
            continue
        b = base.get((r["model"], r["batching"], r["conc"]), {})
        errs = r["failed"] + r["rejected"] + r.get("bad_bodies", 0)
        if not r.get("ok"):
            out.append(
                f"| {r['model']} | {r['batching']} | {r['conc']} | {r['server']} | 0 | - | - | "
                f"- | - | {errs} (nothing answered within the 10 s client timeout) | - | - | "
                f"{r['pss_mib']:.0f} |"
            )
            continue
        out.append(
            f"| {r['model']} | {r['batching']} | {r['conc']} | {r['server']} | {r['rps']:.1f} | "
            f"{ratio(r['rps'], b.get('rps'))} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{ratio(r['p99_ms'], b.get('p99_ms'))} | {errs} | {fmt(r['cpu_s_per_1k'], '.2f')} | "
            f"{ratio(r['cpu_s_per_1k'], b.get('cpu_s_per_1k'))} | {r['pss_mib']:.0f} |"
        )
    out += ["", *not_first(rows)]
    skipped = sorted({(r["server"], r["batching"], r["skipped"]) for r in rows if r.get("skipped")})
    if skipped:
        out += ["", "Not run: " + "; ".join(f"{s} ({b}): {why}" for s, b, why in skipped)]
    over = [r for r in rows if r.get("conc") == "overload"]
    if over:
        out += [
            "",
            "Overload: open loop at 2x the peak rps that server reached in the sweep "
            "(at most 1024 in flight, "
            "5 s client timeout). p99 is of accepted (2xx) requests only.",
            "",
            "| model | batching | server | offered/s | served/s | status mix | transport errors "
            "| p99 ok ms |",
            "|---|---|---|---:|---:|---|---|---:|",
        ]
        for r in over:
            mix = ", ".join(f"{k}: {v}" for k, v in sorted(r["status"].items()))
            errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
            if r["client_dropped"]:
                errs += f", client-side drops: {r['client_dropped']}"
            out.append(
                f"| {r['model']} | {r['batching']} | {r['server']} | {r['rate']:.0f} | "
                f"{r['rps']:.1f} | {mix} | "
                f"{errs} | {r['p99_ms']:.1f} |"
            )
    if drains:
        out += [
            "",
            "Drain: SIGTERM to the server 2 s into a 6 s closed loop (16 connections, CNN, "
            "batching on where supported). Accepted-then-failed = reset/EOF/timeout/5xx "
            "(not 503) after the request was sent; "
            "refused = connection refused, closed idle keep-alive, or 503.",
            "",
            "| server | ok | accepted-then-failed | refused | errors | exit code | exited after |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in drains:
            if r.get("skipped"):
                out.append(f"| {r['server']} | - | - | - | {r['skipped'][:80]} | - | - |")
                continue
            errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
            st = ", ".join(
                f"{k}: {v}" for k, v in sorted(r["status"].items()) if not k.startswith("2")
            )
            ex = f"{r['exit_s']:.1f} s" if r["exit_s"] is not None else "> 25 s (killed)"
            out.append(
                f"| {r['server']} | {r['ok']} | {r['failed']} | {r['rejected']} | "
                f"{errs}{'; ' + st if st else ''}"
                f" | {r['exit_code']} | {ex} |"
            )
    if conf:
        out += [
            "",
            "Conformance (independent clients):",
            "",
            "| client | server | result |",
            "|---|---|---|",
        ]
        for r in conf:
            res = r["result"]
            bad = {k: v for k, v in res.items() if v != "pass"}
            verdict = "pass (" + ", ".join(res) + ")" if not bad else "FAIL " + json.dumps(bad)
            out.append(f"| {r['client']} | {r['server']} | {verdict} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


def prepare(
    peers: list[str], say: Any
) -> tuple[list[str], dict[str, list[float]], Path, list[str]]:
    subprocess.run(
        ["go", "build", "-o", str(CACHE / "bin/loadgen"), "."],
        cwd=PEERS_DIR / "loadgen",
        check=True,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    import torch  # noqa: PLC0415 (only here: the harness itself needs no torch until now)

    expected: dict[str, list[float]] = {}
    (CACHE / "bodies").mkdir(parents=True, exist_ok=True)
    for m in common.MODELS:
        d = common.write_model_dir(m, CACHE / "models")
        (CACHE / "bodies" / f"{m}.json").write_bytes(common.oip_body(m))
        net = common.load(d)
        x = torch.tensor(common.request_data(m)).reshape(1, *common.MODELS[m][0])
        with torch.inference_mode():
            expected[m] = net(x).reshape(-1).tolist()
        (CACHE / "bodies" / f"{m}.expected.json").write_text(
            json.dumps(
                {
                    "input": common.request_data(m),
                    "shape": [1, *common.MODELS[m][0]],
                    "output": expected[m],
                }
            )
        )
    ok, failed = [], []
    for p in peers:
        try:
            ensure_env(p, CACHE / "logs" / f"setup-{p}.log")
            ok.append(p)
        except Exception as exc:
            say(f"  {p}: environment failed ({exc}); see {CACHE / 'logs' / f'setup-{p}.log'}")
            failed.append(f"{p}: {exc}")
    return ok, expected, CACHE / "bodies" / "mlp.expected.json", failed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="4 peers, concurrency 1 and 64, 2 s points"
    )
    ap.add_argument("--peers", help=f"comma list from {','.join(RECIPES)}")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument(
        "--duration", type=float, help="seconds per measured point (default 4, quick 2)"
    )
    ap.add_argument("--no-drain", action="store_true")
    ap.add_argument("--no-overload", action="store_true")
    ap.add_argument("--no-conformance", action="store_true")
    ap.add_argument("--out", type=Path, help="report file (default: results dir/report.md)")
    a = ap.parse_args()
    peers = (
        a.peers.split(",")
        if a.peers
        else (["modelfleet", "fastapi", "litserve", "pytriton"] if a.quick else list(RECIPES))
    )
    if "modelfleet" not in peers:
        peers.insert(0, "modelfleet")  # every ratio is to modelfleet
    unknown = [p for p in peers if p not in RECIPES]
    if unknown:
        ap.error(f"unknown peers {unknown}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_dir = CACHE / "results" / started.replace(":", "")
    run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, kill_all)
    signal.signal(signal.SIGTERM, kill_all)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    meta = {"started": started, "host": socket.gethostname(), "load_start": uptime(), "rev": rev}
    try:
        say(f"preparing (loadgen, models, peer environments under {CACHE}) ...")
        peers, expected, exp_file, env_failed = prepare(peers, say)
        plan = Plan(
            peers=peers,
            models=a.models.split(","),
            concurrency=[1, 64] if a.quick else [1, 8, 64],
            duration=a.duration or (2.0 if a.quick else 4.0),
            settings=[("off", 1, 0.0), ("on", 8, 5.0)],
            drain=not a.no_drain,
            overload=not a.no_overload,
            conformance=not a.no_conformance,
        )
        say(f"sweep: {plan.peers} x {plan.models} x batching off/on x c={plan.concurrency}")
        rows = sweep(plan, run_dir, expected, say)
        drains = drain(plan, run_dir, expected, say) if plan.drain else []
        conf = conformance(run_dir, exp_file, say, plan.peers) if plan.conformance else []
    finally:
        kill_all()
    meta["load_end"] = uptime()
    text = report(plan, rows, drains, conf, meta)
    if env_failed:
        text += "\nPeers whose environment failed: " + "; ".join(env_failed) + "\n"
    (run_dir / "raw.json").write_text(
        json.dumps(
            {"meta": meta, "rows": rows, "drain": drains, "conformance": conf},
            indent=1,
            default=str,
        )
    )
    out = a.out or run_dir / "report.md"
    out.write_text(text)
    print(text)
    say(
        f"report: {out}\nraw: {run_dir / 'raw.json'}\n"
        f"reproduce: cd {REPO} && .venv/bin/python bench/compare.py"
        f"{' --quick' if a.quick else ''}"
    )


if __name__ == "__main__":
    main()
