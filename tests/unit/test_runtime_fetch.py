"""``modelfleet-runtime fetch``: file:// and http:// sources, tarballs, digests, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelfleet_runtime.cli import main
from modelfleet_runtime.errors import LoadError
from modelfleet_runtime.fetch import FetchError, fetch
from modelfleet_runtime.model import verify_digest


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
    with pytest.raises(FetchError, match="not supported"):
        fetch("s3://bucket/model", tmp_path / "d")
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
