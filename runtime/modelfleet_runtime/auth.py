"""API keys: the format, minting, the key ring read from a directory of hashes, and the
per-key limits. No HTTP and no asyncio here (app.py wires it in).

A key is ``mf_<id>_<secret>``: ``id`` names the key (it is not secret: metrics, logs and
the ModelDeployment status carry it), ``secret`` is 32 random bytes (urlsafe base64). The
server holds only ``sha256:<hex>`` of the whole key, one file per key id: a Kubernetes
Secret mounted as a volume, whose data keys are the ids. A plain SHA-256 is enough for 256
random bits (nothing to brute-force, so no slow hash: a check costs ~1 µs); the comparison
is ``hmac.compare_digest`` so its time does not depend on how much of a guess is right.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

PREFIX = "mf_"
# A DNS label without dots (a Secret data key allows [-._a-zA-Z0-9]): short, readable in a
# metric label, and free of "_", which separates the id from the secret.
KEY_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
SECRET_BYTES = 32
# A presented key longer than this is refused before hashing (a 64 KiB header is not a key).
MAX_KEY_LENGTH = 256
# A key file bigger than this is not a hash (the Secret holds one line per key).
MAX_FILE_BYTES = 1024
# Most keys one server keeps (a Secret is at most 1 MiB: ~13k hashes); bounds the limiter.
MAX_KEYS = 10_000
_DUMMY = hashlib.sha256(b"modelfleet: no such key").digest()


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def mint(key_id: str) -> tuple[str, str]:
    """A new key for ``key_id`` and the hash to store: (key, "sha256:<hex>")."""
    if not KEY_ID_PATTERN.match(key_id):
        raise ValueError(
            f"key id {key_id!r} must be 1-32 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    key = f"{PREFIX}{key_id}_{secret}"
    return key, hash_key(key)


def key_id_of(key: str) -> str | None:
    """The id part of a presented key, None when it is not shaped like one of ours."""
    if len(key) > MAX_KEY_LENGTH or not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or not secret or not KEY_ID_PATTERN.match(key_id):
        return None
    return key_id


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    header = headers.get("x-api-key")
    return header.strip() if header is not None and header.strip() else None


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """Key id -> the SHA-256 digest of its key."""

    digests: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    def verify(self, key: str) -> str | None:
        """The key's id when it is a current key, else None. Unknown ids are compared
        against a dummy digest, so a miss costs what a wrong secret costs."""
        key_id = key_id_of(key)
        expected = self.digests.get(key_id, _DUMMY) if key_id is not None else _DUMMY
        actual = hashlib.sha256(key.encode(errors="surrogateescape")).digest()
        if hmac.compare_digest(actual, expected) and key_id is not None:
            return key_id
        return None

    def __len__(self) -> int:
        return len(self.digests)


@dataclasses.dataclass(frozen=True)
class LoadedKeys:
    ring: KeyRing
    problems: tuple[str, ...]  # one line per skipped entry, naming the entry, never its value


def load_key_dir(directory: Path) -> LoadedKeys:
    """Every ``<id>`` file holding ``sha256:<hex>`` in ``directory`` (a mounted Secret:
    entries starting with "." are the kubelet's bookkeeping). Raises OSError when the
    directory cannot be listed."""
    digests: dict[str, bytes] = {}
    problems: list[str] = []
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith("."))
    for name in names:
        if len(digests) >= MAX_KEYS:
            problems.append(f"more than {MAX_KEYS} keys: the rest are ignored")
            break
        if not KEY_ID_PATTERN.match(name):
            problems.append(f"{name!r}: not a key id (1-32 of a-z, 0-9, '-')")
            continue
        try:
            with open(directory / name, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            problems.append(f"{name!r}: unreadable: {exc.strerror or exc}")
            continue
        text = raw.decode(errors="replace").strip()
        if len(raw) > MAX_FILE_BYTES or not HASH_PATTERN.match(text):
            hint = (
                " (it looks like a plaintext key: store its hash)"
                if text.startswith(PREFIX)
                else ""
            )
            problems.append(f"{name!r}: not sha256:<64 lower-case hex digits>{hint}")
            continue
        digests[name] = bytes.fromhex(text.removeprefix("sha256:"))
    return LoadedKeys(KeyRing(digests), tuple(problems))


@dataclasses.dataclass(frozen=True)
class KeyLimits:
    """Per key: a token bucket of ``rate`` requests/s holding ``burst``, and at most
    ``concurrency`` requests in flight. None: no such limit."""

    rate: float | None = None
    burst: int | None = None
    concurrency: int | None = None

    @property
    def bucket_size(self) -> float:
        if self.rate is None:
            return math.inf
        return float(self.burst) if self.burst else max(1.0, math.ceil(self.rate))


@dataclasses.dataclass
class _KeyState:
    tokens: float
    stamp: float
    inflight: int = 0


class Limiter:
    """Admission per key id. State exists only for ids in the key ring (``retain``), so a
    flood of made-up keys grows nothing."""

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self._state: dict[str, _KeyState] = {}

    def retain(self, key_ids: set[str]) -> None:
        for gone in [k for k in self._state if k not in key_ids]:
            del self._state[gone]

    def admit(self, key_id: str, now: float) -> float | None:
        """None: admitted (call ``release`` when answered); else seconds to wait."""
        lim = self.limits
        st = self._state.get(key_id)
        if st is None:
            st = self._state[key_id] = _KeyState(lim.bucket_size, now)
        if lim.concurrency is not None and st.inflight >= lim.concurrency:
            return 1.0
        if lim.rate is not None:
            st.tokens = min(lim.bucket_size, st.tokens + (now - st.stamp) * lim.rate)
            st.stamp = now
            if st.tokens < 1.0:
                return (1.0 - st.tokens) / lim.rate
            st.tokens -= 1.0
        st.inflight += 1
        return None

    def release(self, key_id: str) -> None:
        st = self._state.get(key_id)
        if st is not None and st.inflight > 0:
            st.inflight -= 1

    def inflight(self, key_id: str) -> int:
        st = self._state.get(key_id)
        return st.inflight if st else 0
