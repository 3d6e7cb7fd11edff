"""``modelfleet-runtime fetch``: file://, http(s):// (with retries) and s3:// (a real moto S3
server) sources, tarballs (safe on every Python 3.11), digests, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from modelfleet_runtime import fetch as fetch_module
from modelfleet_runtime.cli import main
from modelfleet_runtime.errors import LoadError
from modelfleet_runtime.fetch import FetchError, fetch, s3_location, unpack
from modelfleet_runtime.model import verify_digest
from moto.server import ThreadedMotoServer


def make_tarball(path: Path, files: dict[str, bytes], prefix: str = "") -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_file_uri_single_file_with_digest(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    digest = "sha256:" + hashlib.sha256(b"weights").hexdigest()
    out = fetch(src.as_uri(), tmp_path / "dest", digest)
    assert out == tmp_path / "dest" / "model.pt" and out.read_bytes() == b"weights"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [
        ".modelfleet-fetch.json", "model.pt"]  # fmt: skip


def test_http_tarball_with_top_directory_is_flattened(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    url, root = http_root
    digest = make_tarball(root / "m.tar.gz", {"model.yaml": b"format: x", "model.pt": b"w"}, "m/")
    dest = tmp_path / "models"
    assert main(["fetch", f"{url}/m.tar.gz", str(dest), "--digest", digest]) == 0
    assert (dest / "model.yaml").read_bytes() == b"format: x"
    assert sorted(p.name for p in dest.iterdir()) == [
        ".modelfleet-fetch.json", "model.pt", "model.yaml"]  # fmt: skip


def test_digest_mismatch_leaves_nothing(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    make_tarball(root / "m.tar.gz", {"model.yaml": b"x"})
    dest = tmp_path / "models"
    with pytest.raises(FetchError, match="digest mismatch"):
        fetch(f"{url}/m.tar.gz", dest, "sha256:" + "0" * 64)
    assert list(dest.iterdir()) == []


def test_errors_are_clear(tmp_path: Path, http_root: tuple[str, Path],
                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    url, _ = http_root
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{url}/missing.pt", tmp_path / "d")
    with pytest.raises(FetchError, match="pvc:// is not fetched"):
        fetch("pvc://claim/model", tmp_path / "d")
    with pytest.raises(FetchError, match="unsupported URI scheme"):
        fetch("gs://bucket/model", tmp_path / "d")
    termlog = tmp_path / "termlog"
    monkeypatch.setenv("MODELFLEET_TERMINATION_LOG", str(termlog))
    assert main(["fetch", (tmp_path / "nope").as_uri(), str(tmp_path / "d")]) == 1
    assert "model fetch failed" in termlog.read_text()


def test_tarball_escaping_dest_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    make_tarball(bad, {"../evil": b"x"})
    with pytest.raises(FetchError, match="cannot unpack"):
        fetch(bad.as_uri(), tmp_path / "d")
    assert not (tmp_path / "evil").exists()


def test_archive_digest_or_weights_digest_pins_the_model(tmp_path: Path) -> None:
    """The operator passes one digest to fetch and to serve: it may pin the archive or the
    weights inside it, and serve accepts both for weights that came from that archive."""
    archive = tmp_path / "m.tar.gz"
    files = {"model.yaml": b"format: torchscript\n", "model.pt": b"the weights"}
    archive_digest = make_tarball(archive, files)
    weights_digest = "sha256:" + hashlib.sha256(b"the weights").hexdigest()
    for digest in (archive_digest, weights_digest):
        dest = tmp_path / digest[7:15]
        fetch(archive.as_uri(), dest, digest)
        verify_digest(dest / "model.pt", digest)  # what serve --digest does
    with pytest.raises(LoadError, match="digest mismatch"):
        verify_digest(dest / "model.pt", "sha256:" + "1" * 64)
    (dest / "model.pt").write_bytes(b"tampered")
    with pytest.raises(LoadError, match="digest mismatch"):
        verify_digest(dest / "model.pt", archive_digest)


# --- http(s): retries -----------------------------------------------------------------------


@pytest.fixture
def flaky_http() -> Iterator[tuple[str, Callable[[list[str]], None], list[str]]]:
    """A server answering each GET with the next planned behaviour: "503", "cut" (a body that
    breaks off halfway) or "ok"; the log lists what it did."""
    body = b"the weights" * 1000
    plan: list[str] = []
    log: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            what = plan.pop(0) if plan else "ok"
            log.append(what)
            if what == "503":
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if what == "cut" else body)
            if what == "cut":
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def set_plan(steps: list[str]) -> None:
        plan[:] = steps
        log.clear()

    yield f"http://127.0.0.1:{server.server_address[1]}/model.pt", set_plan, log
    server.shutdown()


def test_http_retries_server_errors_and_broken_bodies(
    tmp_path: Path, flaky_http: tuple[str, Callable[[list[str]], None], list[str]]
) -> None:
    url, plan, log = flaky_http
    want = "sha256:" + hashlib.sha256(b"the weights" * 1000).hexdigest()
    plan(["503", "503", "ok"])
    assert fetch(url, tmp_path / "a", want).read_bytes() == b"the weights" * 1000
    assert log == ["503", "503", "ok"]
    plan(["cut", "ok"])
    assert fetch(url, tmp_path / "b", want).read_bytes() == b"the weights" * 1000
    assert log == ["cut", "ok"]


def test_http_gives_up_with_the_status(
    tmp_path: Path, flaky_http: tuple[str, Callable[[list[str]], None], list[str]]
) -> None:
    url, plan, log = flaky_http
    plan(["503"] * 10)
    with pytest.raises(FetchError, match="HTTP 503"):
        fetch(url, tmp_path / "d")
    assert len(log) == fetch_module.HTTP_ATTEMPTS
    plan(["cut"] * 10)
    with pytest.raises(FetchError, match="broke off 4 times"):
        fetch(url, tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []


def test_http_unreachable_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"GET http://127\.0\.0\.1:9/m\.pt: .*after 4 attempts"):
        fetch("http://127.0.0.1:9/m.pt", tmp_path / "d")


# --- s3:// against a real S3-compatible server (moto's server mode) ------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server._server.server_port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """Credentials and endpoint in the environment, as a pod's env/IRSA would give them."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "modelfleet")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelfleet-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"models-{os.getpid()}-{len(os.listdir('/proc/self/fd'))}"
    client.create_bucket(Bucket=bucket)
    yield bucket, client


def test_s3_tarball_with_digest(tmp_path: Path, s3: tuple[str, object]) -> None:
    bucket, client = s3
    archive = tmp_path / "m.tar.gz"
    digest = make_tarball(archive, {"model.yaml": b"format: x", "model.pt": b"w"}, "m/")
    client.upload_file(str(archive), bucket, "iris/m.tar.gz")  # type: ignore[attr-defined]
    dest = tmp_path / "models"
    assert main(["fetch", f"s3://{bucket}/iris/m.tar.gz", str(dest), "--digest", digest]) == 0
    assert (dest / "model.pt").read_bytes() == b"w"
    with pytest.raises(FetchError, match="digest mismatch"):
        fetch(f"s3://{bucket}/iris/m.tar.gz", tmp_path / "other", "sha256:" + "0" * 64)
    assert list((tmp_path / "other").iterdir()) == []


def test_s3_errors_name_what_is_wrong(
    tmp_path: Path, s3: tuple[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, client = s3
    client.put_object(Bucket=bucket, Key="private.pt", Body=b"w")  # type: ignore[attr-defined]
    with pytest.raises(FetchError, match=rf"s3 GET s3://{bucket}/missing.pt: no such object"):
        fetch(f"s3://{bucket}/missing.pt", tmp_path / "d")
    with pytest.raises(FetchError, match=r"no such object|no such bucket"):
        fetch("s3://no-such-bucket-here/m.pt", tmp_path / "d")
    with pytest.raises(FetchError, match="an s3:// URI is s3://<bucket>/<key"):
        fetch(f"s3://{bucket}/", tmp_path / "d")
    with pytest.raises(FetchError, match="unknown s3:// URI parameter endpoint"):
        fetch(f"s3://{bucket}/m.pt?endpoint=x", tmp_path / "d")
    # No credentials at all: anonymous access is tried, and the refusal says so.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(FetchError, match=r"access denied \(no AWS credentials found"):
        fetch(f"s3://{bucket}/private.pt", tmp_path / "d")


def test_s3_public_object_anonymously_with_endpoint_in_the_uri(
    tmp_path: Path, s3: tuple[str, object], s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pod without credentials does: the endpoint in the URI (Arrow's syntax)."""
    bucket, client = s3
    client.put_object(Bucket=bucket, Key="pub.pt", Body=b"public", ACL="public-read")  # type: ignore[attr-defined]
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var)
    hostport = s3_server.removeprefix("http://")
    uri = f"s3://{bucket}/pub.pt?endpoint_override={hostport}&scheme=http"
    out = fetch(uri, tmp_path / "d", "sha256:" + hashlib.sha256(b"public").hexdigest())
    assert out.name == "pub.pt" and out.read_bytes() == b"public"


def test_s3_location_parsing() -> None:
    assert s3_location("s3://b/k/m.pt") == ("b", "k/m.pt", None, None)
    assert s3_location("s3://b/m.pt?endpoint_override=minio:9000&scheme=http&region=eu-1") == (
        "b", "m.pt", "http://minio:9000", "eu-1")  # fmt: skip
    assert s3_location("s3://b/m.pt?endpoint_override=https://s3.example")[2] == (
        "https://s3.example")  # fmt: skip
    with pytest.raises(FetchError, match="scheme must be http or https"):
        s3_location("s3://b/m.pt?scheme=ftp")


# --- archives: safe on Python 3.11.0-3.11.3 too (no tarfile filters there) ------------------


def _tar_with(path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"w"))
        add(tar)
    return path


def _link(name: str, target: str, kind: bytes) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)

    return add


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)

    return add


BAD_MEMBERS = {
    "parent": (_member("../evil"), "path leaves the model directory"),
    "absolute": (_member("/tmp/evil"), "path leaves the model directory"),
    "nested parent": (_member("a/../../evil"), "path leaves the model directory"),
    "symlink out": (_link("w.pt", "/etc/passwd", tarfile.SYMTYPE), "links are not allowed"),
    "symlink in": (_link("w.pt", "model.pt", tarfile.SYMTYPE), "links are not allowed"),
    "hardlink": (_link("w.pt", "/etc/passwd", tarfile.LNKTYPE), "links are not allowed"),
    "device": (_member("dev", tarfile.CHRTYPE), "only regular files and directories"),
    "fifo": (_member("fifo", tarfile.FIFOTYPE), "only regular files and directories"),
}


@pytest.mark.parametrize("use_filter", [True, False], ids=["with-filter", "python<3.11.4"])
@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_unsafe_archives_are_refused(tmp_path: Path, case: str, use_filter: bool) -> None:
    if use_filter and not fetch_module.HAS_TAR_FILTER:
        pytest.skip("this Python has no tarfile filters")
    add, why = BAD_MEMBERS[case]
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(FetchError, match=why):
        unpack(_tar_with(tmp_path / "bad.tgz", add), dest, use_filter=use_filter)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("use_filter", [True, False], ids=["with-filter", "python<3.11.4"])
def test_archive_modes_are_sanitised(tmp_path: Path, use_filter: bool) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("sub/tool")
        info.size, info.mode = 1, 0o6777
        tar.addfile(info, io.BytesIO(b"x"))

    dest = tmp_path / "d"
    dest.mkdir()
    unpack(_tar_with(tmp_path / "m.tgz", add), dest, use_filter=use_filter)
    mode = stat.S_IMODE((dest / "sub" / "tool").stat().st_mode)
    assert mode == 0o755 and (dest / "model.pt").read_bytes() == b"w"


def _old_pythons() -> list[str]:
    """Interpreters on this machine older than 3.11.4 (no tarfile filters), e.g. Debian 12's."""
    found = []
    for cand in ("/usr/bin/python3.11", shutil.which("python3.11") or ""):
        if not cand or not os.path.exists(cand) or cand in found:
            continue
        probe = "import sys, yaml; print(sys.version_info[:3] < (3, 11, 4))"
        out = subprocess.run([cand, "-c", probe], capture_output=True, text=True, check=False)
        if out.stdout.strip() == "True":
            found.append(cand)
    return found


@pytest.mark.parametrize("python", _old_pythons() or ["none"])
def test_fetch_runs_on_python_before_3_11_4(tmp_path: Path, python: str) -> None:
    """The bug a real init container hit on Debian's python3 (3.11.2): TypeError on filter=."""
    if python == "none":
        pytest.skip("no Python 3.11.0-3.11.3 with PyYAML on this machine (Debian: python3-yaml)")
    good = tmp_path / "good.tar.gz"
    digest = make_tarball(good, {"model.yaml": b"format: x", "model.pt": b"w"}, "m/")
    bad = _tar_with(tmp_path / "bad.tar.gz", _link("w.pt", "/etc/passwd", tarfile.SYMTYPE))
    runtime_src = str(Path(fetch_module.__file__).resolve().parents[1])
    code = (
        "import sys; from pathlib import Path\n"
        "from modelfleet_runtime.fetch import fetch, FetchError\n"
        "fetch(sys.argv[1], Path(sys.argv[2]), sys.argv[3])\n"
        "try:\n    fetch(sys.argv[4], Path(sys.argv[5]))\n"
        "except FetchError as e:\n    print('refused:', e)\n"
    )
    out = subprocess.run(
        [python, "-c", code, good.as_uri(), str(tmp_path / "g"), digest, bad.as_uri(),
         str(tmp_path / "b")],
        capture_output=True, text=True, env={"PYTHONPATH": runtime_src, "PATH": os.defpath},
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "g" / "model.pt").read_bytes() == b"w"
    assert "refused:" in out.stdout and "links are not allowed" in out.stdout
    assert sys.version_info >= (3, 11)
