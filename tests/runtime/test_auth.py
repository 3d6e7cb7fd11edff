"""API keys on a real runtime process: every route but the probes needs a key, keys rotate
and revoke without a restart, per-key limits answer 429, /metrics never takes a caller key,
and no key material reaches the log."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import REPO, Runtime, free_port, metric_value
from modelfleet_runtime.app import OPEN_PATHS, App, resolve_identity
from modelfleet_runtime.auth import hash_key, mint
from modelfleet_runtime.config import ServeConfig
from modelfleet_runtime.metrics import Metrics

pytestmark = pytest.mark.runtime

AFFINE_DOC = {
    "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "scale", "shape": [1, 1], "datatype": "FP32", "data": [1]},
    ]
}


def write_keys(directory: Path, keys: dict[str, str]) -> None:
    """Like the kubelet: the files live in a fresh ..data dir, swapped in by one rename."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = f"..{time.monotonic_ns()}"
    (directory / stamp).mkdir()
    for key_id, key in keys.items():
        (directory / stamp / key_id).write_text(hash_key(key))
    tmp = directory / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp)
    os.replace(tmp, directory / "..data")
    for entry in directory.iterdir():
        if not entry.name.startswith("."):
            entry.unlink()
    for key_id in keys:
        (directory / key_id).symlink_to(f"..data/{key_id}")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"alice": mint("alice")[0], "bob": mint("bob")[0]}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Path:
    d = tmp_path_factory.mktemp("keys") / "api-keys"
    write_keys(d, keys)
    return d


@pytest.fixture(scope="module")
def secured(
    affine_dirs: dict[str, tuple[Path, object]], key_dir: Path
) -> Iterator[tuple[Runtime, int]]:
    metrics_port = free_port()
    server = Runtime(affine_dirs["safetensors"][0], "--api-keys", str(key_dir),
                     "--metrics-port", str(metrics_port), "--key-rate", "1000")  # fmt: skip
    try:
        yield server.wait_ready(), metrics_port
    finally:
        server.stop()


def every_route(model_dir: Path) -> list[tuple[str, str]]:
    """(method, path) for every route the runtime's table holds, each way it is spelled."""
    cfg = ServeConfig(model_dir=model_dir, api_keys=Path("/nonexistent"))
    ident = resolve_identity(cfg)
    loop = asyncio.new_event_loop()
    try:
        app = App(cfg, ident, Metrics(ident.name, ident.version), loop)
    finally:
        loop.close()
    out: list[tuple[str, str]] = []
    for path, route in app._routes.items():
        for method in (*route.methods, "DELETE"):
            out += [(method, path), (method, path + "/")]
    model = f"/v2/models/{ident.name}"
    for action, route in app._model_routes.items():
        for base in (model, f"{model}/versions/{ident.version}"):
            path = f"{base}/{action}" if action else base
            out += [(m, path) for m in (*route.methods, "PUT")]
    out += [("GET", "/metrics"), ("GET", "/no/such/route"), ("GET", "/v2/models/other/ready"),
            ("POST", "/v2/models/other/infer"), ("GET", "/")]  # fmt: skip
    return out


def test_every_route_but_the_probes_needs_a_key(
    secured: tuple[Runtime, int], keys: dict[str, str]
) -> None:
    server, _ = secured
    routes = every_route(server.model_dir)
    assert len(routes) > 30
    opened = []
    for method, path in routes:
        body = json.dumps(AFFINE_DOC).encode() if method == "POST" else None
        status, headers, answer = server.request(method, path, body)
        if path.rstrip("/") in OPEN_PATHS:
            if method in ("GET", "HEAD"):
                assert status == 200, (method, path, status)
            continue
        if status != 401:
            opened.append((method, path, status))
            continue
        assert headers["www-authenticate"].startswith("Bearer")
        if method != "HEAD":
            assert "API key" in json.loads(answer)["error"]
    assert opened == [], f"answered without a key: {opened}"

    # with a key, the same routes answer what they would without --api-keys
    infer = f"/v2/models/{server.model_dir.name}/infer"
    status, _, _ = server.request("POST", infer, json.dumps(AFFINE_DOC).encode(),
                                  bearer(keys["alice"]))  # fmt: skip
    assert status == 200
    assert server.request("GET", "/v2", headers=bearer(keys["bob"]))[0] == 200
    assert server.request("GET", "/no/such/route", headers=bearer(keys["bob"]))[0] == 404


def test_metrics_are_never_served_to_a_caller_key(
    secured: tuple[Runtime, int], keys: dict[str, str]
) -> None:
    server, metrics_port = secured
    status, _, body = server.request("GET", "/metrics", headers=bearer(keys["alice"]))
    assert status == 404 and "--metrics-port" in json.loads(body)["error"]
    scrape = Runtime.__new__(Runtime)
    scrape.port = metrics_port
    status, _, text = scrape.request("GET", "/metrics")
    assert status == 200 and b"modelfleet_api_keys" in text
    assert scrape.request("GET", "/v2/health/ready")[0] == 200
    # the metrics port serves nothing else, with or without a key
    name = server.model_dir.name
    status, _, _ = scrape.request("POST", f"/v2/models/{name}/infer",
                                  json.dumps(AFFINE_DOC).encode(),
                                  bearer(keys["alice"]))  # fmt: skip
    assert status == 404
    assert scrape.request("GET", "/v2", headers=bearer(keys["alice"]))[0] == 404


def test_wrong_missing_and_malformed_keys_are_refused(
    secured: tuple[Runtime, int], keys: dict[str, str]
) -> None:
    server, metrics_port = secured
    path = f"/v2/models/{server.model_dir.name}/ready"
    alice = keys["alice"]
    cases = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "basic scheme": {"Authorization": "Basic " + alice},
        "last char changed": bearer(alice[:-1] + ("A" if alice[-1] != "A" else "B")),
        "another id's secret": bearer("mf_bob_" + alice.split("_", 2)[2]),
        "unknown id": bearer(mint("carol")[0]),
        "hash instead of key": bearer(hash_key(alice)),
        "huge": bearer("mf_alice_" + "x" * 5000),
        "not utf-8 ours": {"X-API-Key": "mf_alice_\u00e9"},
    }
    for what, headers in cases.items():
        assert server.request("GET", path, headers=headers)[0] == 401, what
    assert server.request("GET", path, headers={"X-API-Key": alice})[0] == 200
    assert server.request("GET", path, headers={"authorization": f"bearer  {alice} "})[0] == 200
    scrape = Runtime.__new__(Runtime)
    scrape.port = metrics_port
    text = scrape.request("GET", "/metrics")[2].decode()
    assert metric_value(text, "modelfleet_auth_failures_total", reason="missing") >= 3
    assert metric_value(text, "modelfleet_auth_failures_total", reason="invalid") >= 5
    assert metric_value(text, "modelfleet_key_requests_total", key="alice",
                        outcome="success") >= 2  # fmt: skip
    for key in keys.values():
        assert key not in text and key.split("_", 2)[2] not in text


def test_rotation_and_revocation_take_effect_without_a_restart(
    affine_dirs: dict[str, tuple[Path, object]], tmp_path: Path
) -> None:
    old, new, other = mint("svc")[0], mint("svc")[0], mint("ops")[0]
    key_dir = tmp_path / "keys"
    write_keys(key_dir, {"svc": old, "ops": other})
    server = Runtime(affine_dirs["torchscript"][0], "--api-keys", str(key_dir))
    try:
        server.wait_ready()
        pid = server.proc.pid
        path = "/v2/models/" + server.model_dir.name + "/ready"
        assert server.request("GET", path, headers=bearer(old))[0] == 200

        def until(key: str, status: int) -> float:
            started = time.monotonic()
            while time.monotonic() - started < 10:
                if server.request("GET", path, headers=bearer(key))[0] == status:
                    return time.monotonic() - started
                time.sleep(0.05)
            raise AssertionError(f"still not {status} after 10 s:\n{server.log}")

        write_keys(key_dir, {"svc": new, "ops": other})  # rotated
        took = until(old, 401)
        assert took < 5
        assert server.request("GET", path, headers=bearer(new))[0] == 200
        write_keys(key_dir, {"svc": new})  # ops revoked
        until(other, 401)
        assert server.request("GET", path, headers=bearer(new))[0] == 200
        # a hand-written plaintext key is skipped, named in the log, never echoed
        (key_dir / "..data" / "plain").write_text(other)
        (key_dir / "plain").symlink_to("..data/plain")
        write_keys(key_dir, {"svc": new})
        time.sleep(2.5)
        assert server.proc.pid == pid and server.proc.poll() is None
    finally:
        server.stop()
    log = server.log
    assert "rotated ['svc']" in log and "removed ['ops']" in log
    for key in (old, new, other):
        assert key not in log and key.split("_", 2)[2] not in log


def test_a_missing_key_directory_refuses_to_start(
    affine_dirs: dict[str, tuple[Path, object]], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfleet_runtime", "serve", "--model-dir",
         str(affine_dirs["torchscript"][0]), "--port", str(free_port()),
         "--api-keys", str(tmp_path / "absent")],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MODELFLEET_TERMINATION_LOG": str(tmp_path / "term")},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot read the key directory" in (tmp_path / "term").read_text()


def test_rate_limit_per_key_answers_429_with_retry_after(
    affine_dirs: dict[str, tuple[Path, object]], tmp_path: Path
) -> None:
    a, b = mint("a")[0], mint("b")[0]
    write_keys(tmp_path / "keys", {"a": a, "b": b})
    server = Runtime(affine_dirs["torchscript"][0], "--api-keys", str(tmp_path / "keys"),
                     "--key-rate", "2", "--key-burst", "5")  # fmt: skip
    try:
        server.wait_ready()
        path = "/v2/models/" + server.model_dir.name + "/ready"
        answers = [server.request("GET", path, headers=bearer(a)) for _ in range(12)]
        codes = [s for s, _, _ in answers]
        # 5 of burst, plus what 2/s refilled while these ran
        assert 5 <= codes.count(200) <= 8, codes
        refused = [(h, body) for s, h, body in answers if s == 429]
        assert refused and all(int(h["retry-after"]) >= 1 for h, _ in refused)
        assert "'a'" in json.loads(refused[0][1])["error"]
        # another key has its own bucket
        assert server.request("GET", path, headers=bearer(b))[0] == 200
        time.sleep(1.2)  # refilled
        assert server.request("GET", path, headers=bearer(a))[0] == 200
        text = server.request("GET", "/metrics", headers=bearer(a))
        assert text[0] == 404  # with keys and no --metrics-port, /metrics is nowhere
    finally:
        server.stop()


def test_concurrency_limit_per_key(slow_dir: Path, tmp_path: Path) -> None:
    key = mint("batch")[0]
    other = mint("web")[0]
    write_keys(tmp_path / "keys", {"batch": key, "web": other})
    server = Runtime(slow_dir, "--api-keys", str(tmp_path / "keys"), "--key-concurrency", "2",
                     "--max-batch-size", "1")  # fmt: skip
    doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    body = json.dumps(doc).encode()
    try:
        server.wait_ready()
        path = "/v2/models/" + server.model_dir.name + "/infer"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(server.request, "POST", path, body, bearer(key))
                       for _ in range(8)]  # fmt: skip
            time.sleep(0.01)
            web = server.request("POST", path, body, bearer(other))[0]
            codes = sorted(f.result()[0] for f in futures)
        assert web == 200
        assert codes.count(429) >= 1 and codes.count(200) >= 2, codes
        # every slot was given back: sequential requests all pass
        assert [server.request("POST", path, body, bearer(key))[0] for _ in range(4)] == [200] * 4
    finally:
        server.stop()


def test_tritonclient_sends_the_key(secured: tuple[Runtime, int], keys: dict[str, str]) -> None:
    server, _ = secured
    name = server.model_dir.name
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live()  # the probes need nothing
    with pytest.raises(triton.InferenceServerException, match=r"401|API key"):
        client.get_model_metadata(name)
    headers = bearer(keys["bob"])
    assert client.get_model_metadata(name, headers=headers)["name"] == name
    inputs = [triton.InferInput("x", [1, 4], "FP32"), triton.InferInput("scale", [1, 1], "FP32")]
    inputs[0].set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    inputs[1].set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
    result = client.infer(name, inputs, headers=headers)
    assert result.as_numpy("y").shape == (1, 3)


def test_mint_key_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfleet_runtime", "mint-key", "team-a", "--secret", "keys",
         "--namespace", "ml"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    key = proc.stderr.strip().rsplit(" ", 1)[1]
    assert key.startswith("mf_team-a_")
    assert doc["kind"] == "Secret" and doc["metadata"]["namespace"] == "ml"
    assert doc["metadata"]["labels"] == {"modelfleet.io/api-keys": "true"}
    assert {k: base64.b64decode(v).decode() for k, v in doc["data"].items()} == {
        "team-a": hash_key(key)
    }
    assert key not in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "modelfleet_runtime", "mint-key", "Team_A"],
                         check=False, capture_output=True, text=True, timeout=60,
                         cwd=REPO)  # fmt: skip
    assert bad.returncode == 2 and "key id" in bad.stderr
