"""The cache's syncer: completed entries are fsynced in the background, then marked synced.

Why later and not on the download path (docs/design.md, Cache; and Performance
notes): a finished entry is fsynced `sync_delay` seconds after completion, by
when the kernel has usually written it back on its own, so the fsync then
costs little instead of forcing the whole writeback right as the encoder
starts (its cost: docs/design.md, Performance notes: fsync). Until then the
entry is served (it is complete) but would not survive a reboot (CacheDir.load
drops unsynced entries).

What runs where: `run` is one task the cache owns; it waits on a queue of
(due time, entry id), in completion order. The fsync runs in asyncio's
default pool (it is the slowest file call), the record saying "synced" in the
cache's file worker (transfer/cache/fileworker.py). A failed fsync (EIO, ENOSPC) is
tried again `sync_retry` seconds later, up to SYNC_ATTEMPTS times, and never
stops the other entries. Memory: one queue item per completed, unsynced entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from s3feed.transfer.cache.disk import CacheDir, EntryState, Record
from s3feed.transfer.cache.fileworker import FileWorker

SYNC_DELAY = 60.0  # seconds from an entry's completion to its fsync
SYNC_RETRY = 30.0  # seconds between fsync attempts of an entry that failed one
SYNC_ATTEMPTS = 5  # then the entry stays unsynced (a reboot drops it)

log = logging.getLogger("s3feed.transfer.cache")


class Syncer:
    def __init__(
        self,
        entries: Mapping[str, Record],
        cache_dir: CacheDir,
        files: FileWorker,
        monotonic: Callable[[], float],
        *,
        sync_retry: float = SYNC_RETRY,
    ) -> None:
        self._entries = entries  # the cache's index, read only
        self._dir = cache_dir
        self._files = files
        self._monotonic = monotonic
        self._sync_retry = sync_retry
        self._queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self._failures: dict[str, int] = {}

    def schedule(self, rid: str, due: float = 0.0) -> None:
        """fsync entry `rid` at monotonic time `due` (0: as soon as its turn comes)."""
        self._queue.put_nowait((due, rid))

    async def run(self) -> None:
        while True:
            due, rid = await self._queue.get()
            if (wait := due - self._monotonic()) > 0:
                await asyncio.sleep(wait)
            try:
                await self.sync(rid)
            except OSError as exc:
                failures = self._failures.get(rid, 0) + 1
                again = failures < SYNC_ATTEMPTS
                log.warning(
                    "cache entry fsync failed",
                    extra={"entry": rid, "error": str(exc), "attempt": failures, "retry": again},
                )
                if again:
                    self._failures[rid] = failures
                    self.schedule(rid, self._monotonic() + self._sync_retry)
                else:
                    self._failures.pop(rid, None)
            else:
                self._failures.pop(rid, None)

    async def sync(self, rid: str) -> None:
        rec = self._entries.get(rid)
        if rec is None or rec.state is not EntryState.COMPLETE or rec.synced:
            return
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
            await asyncio.to_thread(self._dir.fsync, self._dir.data_path(rid))
            if self._entries.get(rid) is rec:
                rec.synced = True
                await self._files.run(self._dir.write_record, rec.snapshot())
