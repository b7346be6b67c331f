"""The C allocator's pattern for a daemon that moves media: reuse while bytes
flow, give back once the flow stops.

Design note (docs/design.md, Performance notes, "Allocator"). Every received
slice a stream window reorders becomes a `bytes` of up to 1 MiB. With glibc's
defaults those come from mmap or from heap top that is trimmed as soon as it
is freed (the dynamic trim threshold is twice the largest freed mmap), so each
slice costs fresh pages: page faults and zeroing, a large share of a stream's
CPU (the figures are in that note). So `tune()` fixes the
mmap threshold at glibc's maximum (32 MiB, above any chunk the daemon makes)
and the trim threshold high, and `trim()` (a timer in daemon/service.py) hands
free pages back with `malloc_trim(0)`: at most `TRIM_INTERVAL` of a burst's
pages stay resident, and the idle daemon's heap is what it uses.

Written with ctypes because no maintained package wraps mallopt; where the C
library is not glibc both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("s3feed.allocator")

MiB = 1024 * 1024
M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * MiB  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1024 * MiB  # above any window; trim() gives the rest back
TRIM_INTERVAL = 10.0  # seconds between trim() calls while the daemon runs


def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


_LIBC = _libc()


def tune() -> bool:
    """Fix glibc's thresholds for this process; False where that is not possible."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.warning("mallopt refused the thresholds; the allocator keeps its defaults")
    return ok


def trim() -> bool:
    """Give free heap pages back to the kernel; True if any were."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
