"""glibc malloc settings for a process that allocates the same big tensors batch after batch.

With glibc's defaults, a buffer above the (dynamic) mmap threshold is mmap'ed and unmapped
on every forward pass, and a freed heap top above the trim threshold goes back to the kernel:
the next batch faults every page in again and the kernel zeroes it. Measured here (the
bench's image model, 32 rows of 3x224x224 FP32 per forward, one thread): 2946 us of CPU per
row on the main thread and 1413 us on another with the defaults, 1492 / 1509 us with the
settings below; the server spent a quarter of its batcher thread's CPU in page faults.
Raising both keeps that memory in the process for the next batch, as a long-running server
wants (its peak is the batch's working set, which it needs again at once).

musl and other C libraries have no ``mallopt``: nothing happens there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# buffers up to 1 GiB come from the heap and a freed heap top is kept up to 2 GiB; one arena
# for every thread: the batcher thread's own arena lives in heaps of at most 64 MiB that glibc
# unmaps when they empty, so batch buffers faulted in again there whatever the thresholds
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 31


def tune_for_batches() -> bool:
    """Set the thresholds; False where the C library has no mallopt (or refuses)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, 1))
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and ok
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    if not ok:
        log.debug("mallopt refused the batch thresholds")
    return ok
