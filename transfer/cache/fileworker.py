"""One worker thread for the cache's file calls, run in the order the loop issues them.

Why a thread and not aiofiles, nor one hop per call to asyncio's default pool
(docs/design.md, Cache; the timings: Performance notes, File calls): a
sidecar write (open, write, rename), the unlink of an evicted entry and the
fallocate of a large part file can each block the loop for milliseconds; one
hop to a thread costs the caller less than aiofiles, which hops per open,
write, close and rename and has no `pwrite` on a descriptor. One thread
keeps them in order: a sidecar written during a download lands before the
record that completes the entry, an eviction's unlink before the same entry
is downloaded again, with no lock and no wait on the loop. Fsyncs (the
slowest calls) and the start-up scan run in asyncio's default pool instead,
so they never hold up this queue. The data path's `pwrite`/`pread` stay on
the loop (docs/design.md, Performance notes).

`submit` returns the call's future at once (fire and forget: its error is
read by whoever checks the future, else logged); `run` awaits it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class FileWorker:
    def __init__(self, name: str = "s3feed-cache-files") -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None  # started by the first call

    def submit(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        future.add_done_callback(_retrieved)
        return future

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self.submit(fn, *args)

    async def close(self) -> None:
        """Wait for every call submitted so far, then stop the thread (a
        later call starts another; closing twice is fine)."""
        if self._pool is None:
            return
        await self.run(_nothing)
        pool, self._pool = self._pool, None
        pool.shutdown(wait=False)


def _nothing() -> None:
    pass


def _retrieved(future: asyncio.Future[Any]) -> None:
    # Marks the error retrieved (no "never retrieved" at garbage collection);
    # a caller that holds the future still sees it.
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.debug("cache file call failed: %r", exc)
