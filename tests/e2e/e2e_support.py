"""Helpers for the end-to-end tests: the real-node cluster, kubectl, the host's state, models.

The shell scripts (hack/cluster, hack/node, hack/images) are the one implementation; this
module only runs them, so `make dev` and these tests bring up exactly the same node.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import pathlib
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

REPO = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = "mf-e2e"
REAL_NODE = "realnode"
NODE_IP = "10.200.0.1"  # hack/node/lib.sh: the bridge address, where host services listen
NODE_PATHS = ("/run/modelfleet-node", "/var/lib/modelfleet-node")
T = TypeVar("T")


class E2EError(AssertionError):
    pass


def run(args: list[str], timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None, stdin: str | None = None) -> str:  # fmt: skip
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env, input=stdin, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise E2EError(f"timed out after {timeout:.0f}s: {' '.join(args)}") from exc
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise E2EError(f"exit {proc.returncode}: {' '.join(args)}\n{tail}")
    return proc.stdout


def bin_dir() -> pathlib.Path:
    return pathlib.Path(run(["hack/cluster/build", "--print-bin-dir"]).strip())


def kubeconfig() -> pathlib.Path:
    cache = os.environ.get("MODELFLEET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelfleet"
    )
    return pathlib.Path(cache) / "clusters" / CLUSTER / "kubeconfig"


@dataclasses.dataclass
class Kube:
    kubeconfig: pathlib.Path
    bin: pathlib.Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}  # fmt: skip

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True,
                stdin: str | None = None) -> str:  # fmt: skip
        return run([str(self.bin / "kubectl"), *args], timeout=timeout, check=check,
                   env=self.env(), stdin=stdin)  # fmt: skip

    def helm(self, *args: str, timeout: float = 300) -> str:
        return run([str(self.bin / "helm"), *args], timeout=timeout, env=self.env())

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, doc: dict[str, Any] | list[dict[str, Any]]) -> None:
        docs = doc if isinstance(doc, list) else [doc]
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": docs}))  # fmt: skip


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 180,
             interval: float = 0.5, describe: Callable[[], str] | None = None) -> T:  # fmt: skip
    """Poll probe until it returns something other than None/False; fail naming what."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except E2EError as exc:  # a transient kubectl failure
            last_exc = exc
        time.sleep(interval)
    extra = describe() if describe else ""
    raise E2EError(f"{what}: not reached in {timeout:.0f}s {last_exc or ''}\n{extra}")


def infer_json(host: str, port: int, model: str, inputs: list[dict[str, Any]],
               timeout: float) -> list[float]:  # fmt: skip
    """One OIP v2 JSON inference; the first output's data, or E2EError naming the status."""
    body = json.dumps({"inputs": inputs})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body,
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise E2EError(f"infer: HTTP {resp.status}: {data[:300]!r}")
    return [float(v) for v in json.loads(data)["outputs"][0]["data"]]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


# --- the host's state, before and after -------------------------------------------------------


def host_state() -> dict[str, list[str]]:
    """What the real node may change on the host: mounts, links, nft ruleset, processes."""
    # podman's own build mounts come and go with image builds; they are not the node's
    mounts = sorted(m for m in (ln.split()[1] for ln in
                                pathlib.Path("/proc/mounts").read_text().splitlines())
                    if not m.startswith("/var/lib/containers/"))  # fmt: skip
    links = sorted(re.findall(r"^\d+: ([^:@]+)", run(["ip", "-o", "link", "show"]), re.M))
    ruleset = [ln for ln in run(["nft", "list", "ruleset"]).splitlines()
               if ln.strip()]  # fmt: skip
    procs = []
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(word in cmd for word in ("modelfleet-node", "kubelet ", "kube-proxy ", "coredns ",
                                        "containerd-shim")):  # fmt: skip
            procs.append(cmd.strip())
    return {"mounts": mounts, "links": links, "nft": ruleset, "processes": sorted(procs)}


def diff_states(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    out = []
    for key, was in before.items():
        gone = sorted(set(was) - set(after[key]))
        new = sorted(set(after[key]) - set(was))
        if gone or new:
            out.append(f"{key}: left behind {new}, removed {gone}")
    return out
