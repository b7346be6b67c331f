"""A flight: the one download of one cache entry that every fetch of it waits for.

Who waits on whom: the cache (transfer/cache/cache.py) runs a flight in a task it
owns; every caller awaits `done` through `asyncio.shield`, so a caller that
goes away does not stop it. When the last waiter leaves, the flight is
cancelled (its done ranges stay in the sidecar for a later resume); when the
waiter whose store the flight uses (`runner`) leaves while others wait, the
cache restarts it with a remaining waiter's store, and `download` resumes
from the ranges already on disk: credentials are never used on behalf of a
job that is gone. One task writes a part file at a time (a restart waits for
the task it replaces).

What runs where (docs/design.md, Cache): bodies go from the store's buffer
to the part file with `pwrite` on the loop (Engine.download); every other
file call -- the sidecar, opening and reserving the part file, closing it,
the rename that completes the entry -- goes through the cache's file worker
in the order issued. The sidecar is rewritten as parts land, coalesced
(transfer/cache/sidecar.py).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from s3feed.transfer.cache.disk import CacheDir, Record
from s3feed.transfer.cache.fileworker import FileWorker
from s3feed.transfer.cache.sidecar import Sidecar
from s3feed.transfer.engine import Engine
from s3feed.transfer.progress import Progress
from s3feed.transfer.store import ObjectMeta, ObjectStore


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    etag: str
    verified: tuple[str, ...]


@dataclass
class Waiter:
    store: ObjectStore
    tenant: str


@dataclass
class Flight:
    rec: Record
    meta: ObjectMeta
    done: asyncio.Future[CacheEntry]
    progress: Progress = field(default_factory=Progress)
    waiters: dict[object, Waiter] = field(default_factory=dict)  # one token per fetch call
    runner: object = None  # the waiter whose store the current task uses
    # The limiter owner of the fetch that started it, joined before its HEAD
    # (FairLimiter.join): the download competes as that transfer.
    transfer: object | None = None
    task: asyncio.Task[None] | None = None
    allocated: bool = False  # reserve() took the part file's blocks from the file system
    ending: bool = False  # failed for good; its files are being removed

    @classmethod
    def start(cls, rec: Record, meta: ObjectMeta) -> Flight:
        flight = cls(rec, meta, asyncio.get_running_loop().create_future())
        flight.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        return flight

    def follow(self, progress: Progress) -> None:
        """A waiter's `progress` shows this download's from now on."""
        p = self.progress
        progress.size, progress.bytes_done, progress.started = p.size, p.bytes_done, p.started
        if p.moving.is_set():  # joined a download under way: it moves already
            progress.moving.set()
        p.followers.append(progress)

    def unfollow(self, progress: Progress) -> None:
        # By identity: two waiters' Progress compare equal field by field.
        self.progress.followers[:] = [f for f in self.progress.followers if f is not progress]

    @property
    def owed(self) -> int:
        """Bytes this download will still take from the disk that free space
        does not show yet (nothing once its blocks are reserved)."""
        return 0 if self.allocated else self.rec.size - self.rec.ranges.total


async def download(
    flight: Flight,
    waiter: Waiter,
    *,
    cache_dir: CacheDir,
    files: FileWorker,
    engine: Engine,
) -> None:
    """Download what the entry still misses with `waiter`'s store, then
    complete it on disk and in `flight.rec`. Raises what the download or a
    file call raised; the caller decides what is kept."""
    rec = flight.rec
    await files.run(
        cache_dir.write_record, rec.snapshot()
    )  # before the part file: see CacheDir.scan
    opening = files.submit(cache_dir.open_part, rec.id, rec.size)
    try:
        fd, flight.allocated = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(close_opened)
        raise
    sidecar = Sidecar(rec, cache_dir, files)
    try:

        def range_done(start: int, end: int) -> None:
            # Per part: a SIGKILL loses at most the parts in flight
            # (transfer/cache/sidecar.py says how the writes are coalesced).
            rec.ranges.add(start, end)
            sidecar.changed()  # a failed sidecar write fails the download

        await engine.download(
            waiter.store,
            rec.key,
            fd,
            tenant=waiter.tenant,
            progress=flight.progress,
            meta=flight.meta,
            skip=rec.ranges,
            on_range_done=range_done,
            owner=flight.transfer,
        )
    finally:
        sidecar.settle()  # what landed is recorded, also when cancelled
        files.submit(os.close, fd)  # after every write queued above, before the rename
    await sidecar.flush()
    complete = rec.snapshot()
    complete.complete(flight.progress.verified, cache_dir.boot_id)
    await files.run(cache_dir.finish, complete)
    rec.complete(flight.progress.verified, cache_dir.boot_id)


def close_opened(opening: asyncio.Future[tuple[int, bool]]) -> None:
    # Cancelled while the part file was being opened: close what it opened.
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result()[0])
