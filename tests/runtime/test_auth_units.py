"""The API key functions alone: format, verification, the key directory, the limiter."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from modelfleet_runtime.auth import (
    MAX_FILE_BYTES,
    KeyLimits,
    KeyRing,
    Limiter,
    hash_key,
    key_id_of,
    load_key_dir,
    mint,
    presented_key,
)


def ring(**keys: str) -> KeyRing:
    return KeyRing({k: bytes.fromhex(hash_key(v).removeprefix("sha256:")) for k, v in keys.items()})


def test_minted_keys_verify_and_nothing_else_does() -> None:
    key, digest = mint("alice")
    assert digest == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert key_id_of(key) == "alice"
    assert len(key) == len("mf_alice_") + 43  # 32 bytes, unpadded urlsafe base64
    r = ring(alice=key, bob=mint("bob")[0])
    assert r.verify(key) == "alice"
    assert r.verify(key + "x") is None
    assert r.verify(key.replace("alice", "bob", 1)) is None
    assert mint("alice")[0] != key


@given(st.text(max_size=300))
def test_verify_never_raises_and_accepts_only_the_key(text: str) -> None:
    key = "mf_k_" + "A" * 43
    assert ring(k=key).verify(text) == ("k" if text == key else None)


@given(st.text(max_size=80))
def test_key_id_of_returns_a_valid_id_or_none(text: str) -> None:
    got = key_id_of(text)
    if got is not None:
        assert text.startswith(f"mf_{got}_") and len(text) > len(got) + 4
        try:
            mint(got)
        except ValueError as exc:  # every id key_id_of returns must be mintable
            raise AssertionError(got) from exc


def test_presented_key_reads_bearer_then_x_api_key() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer   abc  "}) == "abc"
    assert presented_key({"authorization": "Basic abc", "x-api-key": "k"}) is None
    assert presented_key({"authorization": "Bearer"}) is None
    assert presented_key({"x-api-key": " k "}) == "k"
    assert presented_key({"x-api-key": "  "}) is None
    assert presented_key({}) is None


def test_key_dir_takes_hashes_and_names_what_it_skips(tmp_path: Path) -> None:
    key = mint("good")[0]
    (tmp_path / "good").write_text(hash_key(key) + "\n")
    (tmp_path / "plain").write_text(key)
    (tmp_path / "Bad_Name").write_text(hash_key(key))
    (tmp_path / "upper").write_text(hash_key(key).upper())
    (tmp_path / "big").write_text("sha256:" + "0" * MAX_FILE_BYTES)
    (tmp_path / "..data").mkdir()
    loaded = load_key_dir(tmp_path)
    assert set(loaded.ring.digests) == {"good"}
    assert loaded.ring.verify(key) == "good"
    text = "\n".join(loaded.problems)
    assert "'plain'" in text and "plaintext key" in text and key not in text
    assert "'Bad_Name'" in text and "'upper'" in text and "'big'" in text
    assert len(loaded.problems) == 4


def test_token_bucket_refills_at_the_rate() -> None:
    lim = Limiter(KeyLimits(rate=2.0, burst=3))
    assert [lim.admit("a", 0.0) for _ in range(3)] == [None] * 3
    wait = lim.admit("a", 0.0)
    assert wait is not None and math.isclose(wait, 0.5)
    assert lim.admit("b", 0.0) is None  # its own bucket
    assert lim.admit("a", 0.5) is None  # one token back after 1/rate
    assert lim.admit("a", 0.5) is not None
    assert [lim.admit("a", 100.0) for _ in range(4)].count(None) == 3  # capped at burst


def test_concurrency_is_given_back_and_unknown_ids_leave_no_state() -> None:
    lim = Limiter(KeyLimits(concurrency=2))
    assert lim.admit("a", 0) is None and lim.admit("a", 0) is None
    assert lim.admit("a", 0) == 1.0
    lim.release("a")
    assert lim.admit("a", 0) is None
    lim.retain({"b"})
    assert lim.inflight("a") == 0
    lim.release("a")  # a revoked key's answer arriving late: nothing to give back
    assert lim.inflight("a") == 0
    assert KeyLimits(rate=0.5).bucket_size == 1.0 and KeyLimits().bucket_size == math.inf
