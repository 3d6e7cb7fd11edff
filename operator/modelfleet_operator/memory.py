"""Give freed memory back to the kernel after a burst of work.

A storm of creates leaves the process's heap full of holes (watch events parsed, requests
built, per-object kopf workers that exited): freed, but kept by glibc, so RSS stays at the
burst's peak. Once the work queue drains, a full collection and glibc's ``malloc_trim(0)``
return the free pages; it runs only after a burst, so it costs nothing when idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only; musl has none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_freed_memory() -> None:
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
