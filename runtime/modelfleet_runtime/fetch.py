"""``modelfleet-runtime fetch URI DEST``: bring a model into DEST for an init container.

A single file lands as DEST/<basename>; a .tar.gz is unpacked into DEST (a lone top-level
directory is flattened). Everything is staged inside DEST and moved into place with
os.replace, so DEST can be a volume mount and a crash never leaves a half-written file under
its final name. The digest covers the downloaded file (the archive itself for a .tar.gz).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


class FetchError(Exception):
    pass


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def _is_tarball(name: str, path: Path) -> bool:
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return True
    with path.open("rb") as f:
        magic = f.read(2)
    return magic == b"\x1f\x8b" and tarfile.is_tarfile(path)


def _download(uri: str, staging: Path) -> tuple[Path, str, str]:
    """Copy the source into staging; returns (file, sha256 hex, basename)."""
    parsed = urllib.parse.urlparse(uri)
    name = os.path.basename(urllib.parse.unquote(parsed.path.rstrip("/"))) or "model"
    target = staging / "download"
    if parsed.scheme == "file":
        src = Path(urllib.parse.unquote(parsed.path))
        if not src.is_file():
            raise FetchError(f"{src} is not a file (point file:// at a file or a .tar.gz)")
        with src.open("rb") as fin, target.open("wb") as fout:
            sha = _copy_stream(fin, fout)
    elif parsed.scheme in ("http", "https"):
        request = urllib.request.Request(uri, headers={"User-Agent": "modelfleet-runtime"})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp, target.open("wb") as fout:
                sha = _copy_stream(resp, fout)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"GET {uri}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"GET {uri}: {getattr(exc, 'reason', exc)}") from None
    elif parsed.scheme in ("s3", "gs", "pvc"):
        raise FetchError(
            f"{parsed.scheme}:// is not supported by fetch yet (pvc:// is mounted by the "
            "operator; use http(s):// or file:// for now)"
        )
    else:
        raise FetchError(f"unsupported URI scheme in {uri!r}")
    return target, sha, name


def fetch(uri: str, dest: Path, digest: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".modelfleet-fetch-", dir=dest))
    try:
        downloaded, sha, name = _download(uri, staging)
        if digest is not None:
            want = digest.removeprefix("sha256:").lower()
            if sha != want:
                raise FetchError(f"digest mismatch for {uri}: expected sha256:{want}, "
                                 f"got sha256:{sha}")  # fmt: skip
        if not _is_tarball(name, downloaded):
            final = dest / name
            os.replace(downloaded, final)
            return final
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        try:
            with tarfile.open(downloaded) as tar:
                tar.extractall(unpacked, filter="data")  # refuses links/paths outside
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"cannot unpack {name}: {exc}") from None
        root = unpacked
        entries = list(root.iterdir())
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        for entry in root.iterdir():
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
