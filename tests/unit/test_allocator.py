"""daemon/allocator.py: freed slices stay for reuse until trim() gives them back.

Each case runs in a fresh interpreter: the thresholds are process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

from s3feed.daemon import allocator

pytestmark = pytest.mark.skipif(allocator._LIBC is None, reason="glibc only")

CHILD = """
import sys
from s3feed.daemon import allocator

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

tuned = sys.argv[1] == "tune" and allocator.tune()
before = rss()
slices = [b"x" * (1024 * 1024) for _ in range(64)]  # a window's worth of 1 MiB slices
del slices
freed = rss()
allocator.trim()
print(int(tuned), before, freed, rss())
"""


def _run(mode: str) -> tuple[bool, int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    tuned, before, freed, trimmed = (int(x) for x in out)
    return bool(tuned), before, freed, trimmed


def test_tuned_heap_keeps_freed_slices_until_trim_gives_them_back() -> None:
    tuned, before, freed, trimmed = _run("tune")
    assert tuned
    assert freed - before >= 48, (before, freed)  # kept for the next slices: no new faults
    assert trimmed - before <= 16, (before, trimmed)  # and handed back by trim()


def test_default_heap_returns_them_at_once() -> None:
    # The behaviour tune() exists to change: glibc trims at every free.
    _, before, freed, _ = _run("default")
    assert freed - before <= 16, (before, freed)
