"""An entry's sidecar kept current while its bytes arrive: `Sidecar`.

Why after every part and not on a timer (docs/design.md, Cache: Atomic
completion): the sidecar is what a restart resumes from, and a SIGKILL must
lose at most the parts in flight, one per connection. A timer lets a fast
download record nothing for its whole interval. So every change asks for a
write, and writes are coalesced: at most one runs in the cache's file worker
and at most one more is owed, written from the record as it is when its turn
comes. The cost is one small rename per part at most, and fewer when parts
land faster than the worker writes.

A failed write is kept and raised by the next `changed` or by `flush`, so a
download whose progress cannot be recorded fails (as before) instead of
going on with nothing a restart could resume.
"""

from __future__ import annotations

import asyncio

from s3feed.transfer.cache.disk import CacheDir, Record
from s3feed.transfer.cache.fileworker import FileWorker


class Sidecar:
    def __init__(self, rec: Record, cache_dir: CacheDir, files: FileWorker) -> None:
        self._rec, self._dir, self._files = rec, cache_dir, files
        self._running: asyncio.Future[None] | None = None
        self._owed = False
        self._error: BaseException | None = None

    def changed(self) -> None:
        """The record changed: write it soon. Raises an earlier write's error."""
        if self._error is not None:
            raise self._error
        if self._running is None:
            self._start()
        else:
            self._owed = True

    def _start(self) -> None:
        self._owed = False
        running = self._files.submit(self._dir.write_record, self._rec.snapshot())
        running.add_done_callback(self._written)
        self._running = running

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._running = None
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self._error = self._error or exc
        if self._owed and self._error is None:
            self._start()

    def settle(self) -> None:
        """Queue the last write now, without waiting: a download that is
        cancelled (a shutdown, its last waiter leaving) cannot await, and the
        file worker runs it after any write still running."""
        if self._owed or self._running is not None:
            self._owed = False
            self._files.submit(self._dir.write_record, self._rec.snapshot())

    async def flush(self) -> None:
        """Every change so far is on disk (or its write's error is raised)."""
        while (running := self._running) is not None:
            if running.done():
                await asyncio.sleep(0)  # its done callback (`_written`) has yet to run
            else:
                await asyncio.wait([running])
        if self._error is not None:
            raise self._error
