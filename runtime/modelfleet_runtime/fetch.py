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
import time
import urllib.parse
from pathlib import Path, PurePosixPath
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


# http(s): retried on connection errors, timeouts and 429/5xx (honouring Retry-After), and the
# whole GET again when the body breaks off midway (urllib3 retries only up to the headers).
HTTP_ATTEMPTS = 4
HTTP_BACKOFF_S = 0.5
_HTTP_RETRY_STATUS = (429, 500, 502, 503, 504)


def _http_download(uri: str, target: Path) -> str:
    import urllib3  # noqa: PLC0415 (only init containers fetching over http pay the import)

    retries = urllib3.Retry(
        total=HTTP_ATTEMPTS - 1, backoff_factor=HTTP_BACKOFF_S,
        status_forcelist=_HTTP_RETRY_STATUS, allowed_methods=["GET"],
        respect_retry_after_header=True, raise_on_status=False,
    )  # fmt: skip
    pool = urllib3.PoolManager(retries=retries, timeout=urllib3.Timeout(connect=15, read=60))
    headers = {"User-Agent": "modelfleet-runtime"}
    last = ""
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            time.sleep(HTTP_BACKOFF_S * 2**attempt)
        try:
            resp = pool.request("GET", uri, headers=headers, preload_content=False)
        except urllib3.exceptions.MaxRetryError as exc:
            raise FetchError(f"GET {uri}: {exc.reason} (after {HTTP_ATTEMPTS} attempts)") from None
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"GET {uri}: {exc}") from None
        try:
            if resp.status != 200:
                raise FetchError(f"GET {uri}: HTTP {resp.status} {resp.reason}")
            with target.open("wb") as fout:
                return _copy_stream(resp, fout)  # type: ignore[arg-type]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"  # the body broke off: GET it again
        finally:
            resp.release_conn()
    raise FetchError(f"GET {uri}: the download broke off {HTTP_ATTEMPTS} times (last: {last})")


_S3_ERRORS = {
    "404": "no such object",
    "NoSuchKey": "no such object",
    "NoSuchBucket": "no such bucket",
    "403": "access denied",
    "AccessDenied": "access denied",
}


S3_URI_PARAMS = ("endpoint_override", "scheme", "region")


def s3_location(uri: str) -> tuple[str, str, str | None, str | None]:
    """(bucket, key, endpoint URL or None, region or None) of an s3:// URI.

    The optional query parameters follow Apache Arrow's S3 URIs, for S3-compatible stores:
    ``s3://bucket/key?endpoint_override=minio.ns.svc:9000&scheme=http&region=eu-west-1``.
    """
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))
    if not bucket or not key or key.endswith("/"):
        raise FetchError(f"{uri!r}: an s3:// URI is s3://<bucket>/<key of a file or .tar.gz>")
    try:
        query = urllib.parse.parse_qs(parsed.query, strict_parsing=bool(parsed.query))
    except ValueError:
        raise FetchError(f"{uri!r}: malformed query string {parsed.query!r}") from None
    unknown = sorted(set(query) - set(S3_URI_PARAMS))
    if unknown:
        raise FetchError(f"{uri!r}: unknown s3:// URI parameter {', '.join(unknown)} (known: "
                         f"{', '.join(S3_URI_PARAMS)})")  # fmt: skip
    scheme = query.get("scheme", ["https"])[-1]
    if scheme not in ("http", "https"):
        raise FetchError(f"{uri!r}: scheme must be http or https (got {scheme!r})")
    endpoint = query.get("endpoint_override", [None])[-1]
    if endpoint is not None and "://" not in endpoint:
        endpoint = f"{scheme}://{endpoint}"
    return bucket, key, endpoint, query.get("region", [None])[-1]


def _s3_download(uri: str, target: Path) -> str:
    """s3://BUCKET/KEY with boto3's standard configuration: credentials from the environment,
    web identity (IRSA), pod identity, instance profile or profiles; AWS_ENDPOINT_URL(_S3) or
    the URI's endpoint_override for S3-compatible stores; anonymous (public objects) when no
    credentials are found."""
    bucket, key, endpoint, region = s3_location(uri)
    import boto3  # noqa: PLC0415 (only s3:// fetches pay the import)
    import botocore.exceptions  # noqa: PLC0415
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415
    from botocore import UNSIGNED  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=15,
                    read_timeout=60)  # fmt: skip
    anonymous = session.get_credentials() is None
    if anonymous:
        config = config.merge(Config(signature_version=UNSIGNED))
    try:
        client = session.client("s3", config=config, endpoint_url=endpoint, region_name=region)
        # Ranged parallel GETs for big weights; s3transfer retries a body that breaks off.
        client.download_file(
            bucket, key, str(target), Config=TransferConfig(num_download_attempts=5)
        )
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        why = _S3_ERRORS.get(code, str(err.get("Message") or code))
        if why == "access denied" and anonymous:
            why += " (no AWS credentials found; anonymous access was tried)"
        raise FetchError(f"s3 GET {uri}: {why} (HTTP {code})") from None
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise FetchError(f"s3 GET {uri}: {exc}") from None
    return sha256_file(target)


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
        sha = _http_download(uri, target)
    elif parsed.scheme == "s3":
        sha = _s3_download(uri, target)
    elif parsed.scheme == "pvc":
        raise FetchError(
            "pvc:// is not fetched: the operator mounts the claim as the model directory "
            "(read-only) and serve --digest checks the pin there"
        )
    else:
        raise FetchError(f"unsupported URI scheme in {uri!r} (file://, http://, https:// or s3://)")
    return target, sha, name


# tarfile's extraction filters (filter="data") exist from 3.11.4 on; 3.11.0-3.11.3 (e.g. Debian
# 12's python3) have none, so every member is checked here, filter or not.
HAS_TAR_FILTER = hasattr(tarfile, "data_filter")


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Regular files and directories that stay inside the destination; anything else refuses
    the whole archive, naming the member. Modes lose setuid/setgid/sticky and group/other
    write bits, as the "data" filter does."""
    members = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise FetchError(f"refusing archive member {member.name!r}: path leaves the model "
                             "directory")  # fmt: skip
        if member.issym() or member.islnk():
            raise FetchError(f"refusing archive member {member.name!r}: links are not allowed "
                             f"in a model archive (-> {member.linkname!r})")  # fmt: skip
        if not (member.isfile() or member.isdir()):
            raise FetchError(f"refusing archive member {member.name!r}: only regular files and "
                             "directories are allowed in a model archive")  # fmt: skip
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        members.append(member)
    return members


def unpack(
    archive: Path, dest: Path, *, use_filter: bool = HAS_TAR_FILTER, name: str | None = None
) -> None:
    """Extract a (compressed) tarball into dest, refusing unsafe members on any Python 3.11."""
    label = name or archive.name
    try:
        with tarfile.open(archive) as tar:
            members = _checked_members(tar)
            if use_filter:
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)  # members checked above
    except FetchError as exc:
        raise FetchError(f"cannot unpack {label}: {exc}") from None
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"cannot unpack {label}: {exc}") from None


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
        unpack(downloaded, unpacked, name=name)
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
