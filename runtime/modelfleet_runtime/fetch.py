"""``modelfleet-runtime fetch URI DEST``: bring a model into DEST for an init container.

A single file lands as DEST/<basename>; a .tar.gz is unpacked into DEST (a lone top-level
directory is flattened). Everything is staged inside DEST and moved into place with
os.replace, so DEST can be a volume mount and a crash never leaves a half-written file under
its final name.

The digest may pin the downloaded file (the archive itself for a .tar.gz) or, for an archive,
the weights file inside it (what ``serve --digest`` checks). Either way a record of what was
verified is left in ``DEST/.modelfleet-fetch.json``, so ``serve --digest`` with the archive's
digest accepts the weights that came out of that archive (and only while they are unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from .manifest import DEFAULT_WEIGHTS, MANIFEST_FILE

_CHUNK = 1 << 20
FETCH_RECORD = ".modelfleet-fetch.json"


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_name(model_dir: Path) -> str | None:
    """The weights file a model.yaml names, if the directory has a readable one."""
    try:
        raw = yaml.safe_load((model_dir / MANIFEST_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    name = raw.get("weights") or DEFAULT_WEIGHTS.get(str(raw.get("format")))
    return str(name) if name else None


def _check(uri: str, want: str | None, *candidates: str | None) -> None:
    if want is not None and want not in candidates:
        got = candidates[0]
        raise FetchError(f"digest mismatch for {uri}: expected sha256:{want}, got sha256:{got}")


def _record(dest: Path, uri: str, sha: str, weights: str | None, weights_sha: str | None) -> None:
    doc: dict[str, Any] = {"uri": uri, "sha256": sha}
    if weights is not None and weights_sha is not None:
        doc |= {"weights": weights, "weights_sha256": weights_sha}
    tmp = dest / (FETCH_RECORD + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, dest / FETCH_RECORD)


def read_record(model_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((model_dir / FETCH_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def fetch(uri: str, dest: Path, digest: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    want = None if digest is None else digest.removeprefix("sha256:").lower()
    staging = Path(tempfile.mkdtemp(prefix=".modelfleet-fetch-", dir=dest))
    try:
        downloaded, sha, name = _download(uri, staging)
        if not _is_tarball(name, downloaded):
            _check(uri, want, sha)
            final = dest / name
            os.replace(downloaded, final)
            _record(dest, uri, sha, name, sha)
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
        weights = _weights_name(root)
        weights_sha = None
        if weights is not None and (root / weights).is_file():
            weights_sha = sha256_file(root / weights)
        _check(uri, want, sha, weights_sha)  # before anything lands in dest
        for entry in root.iterdir():
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        _record(dest, uri, sha, weights, weights_sha)
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
