"""The glibc malloc thresholds the runtime sets for batch-sized buffers."""

from __future__ import annotations

import ctypes
import platform

import pytest
from modelfleet_runtime import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_thresholds_set_on_glibc() -> None:
    assert malloc.tune_for_batches()


def test_no_mallopt_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_args: object, **_kwargs: object) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert not malloc.tune_for_batches()
