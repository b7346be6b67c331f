"""The on-disk cache: verified, resumable, shared downloads with LRU eviction.

What runs where: all state lives on the event loop (no locks). `start()`
launches two background tasks: the scan of the cache directory (in a worker
thread; start-up never waits for it, a lookup of an entry the scan has not
reached reads that entry's record directly) and the syncer
(transfer/cache/sync.py). File calls other than the data path's pwrite go
through one file worker thread in the order issued (transfer/cache/fileworker.py
says why); the on-disk format is transfer/cache/disk.py.

Who waits on whom: `fetch` HEADs the object with the job's own store first:
that is the tenant-isolation check (S3 decides, not the cache) and gives the
ETag of the entry key. A complete entry is handed over at once, else the
caller joins the entry's single download (transfer/cache/flight.py).

What bounds memory and disk: bodies go straight from the store's buffer to
the part file (Engine.download). Disk is bounded by `max_size` (entries count
at their full size from the moment a download starts) and by `min_free` of
the filesystem, counting the bytes running downloads will still write and
the file system has not yet allocated (`_owed`); room is made by evicting
least-recently-used entries that are neither pinned by a live job nor being
downloaded, else InsufficientStorage before any byte moves.

Who may open a file: pins and per-uid ACL grants (transfer/cache/grants.py);
the start-up scan (CacheDir.load) and `close()` strip every entry's ACL.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from s3feed.transfer.cache import acl
from s3feed.transfer.cache.disk import CacheDir, EntryState, Record
from s3feed.transfer.cache.fileworker import FileWorker
from s3feed.transfer.cache.flight import CacheEntry, Flight, Waiter, close_opened, download
from s3feed.transfer.cache.grants import Grants
from s3feed.transfer.cache.reads import EntryReader, Hashed, OpenEntry
from s3feed.transfer.cache.sidecar import Sidecar
from s3feed.transfer.cache.sync import SYNC_DELAY, SYNC_RETRY, Syncer
from s3feed.transfer.config import CacheConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import (
    AccessDenied,
    AclUnsupported,
    Cancelled,
    ChecksumMismatch,
    InsufficientStorage,
    NoSuchKey,
    SourceChanged,
)
from s3feed.transfer.fairshare import Membership
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.retry import RetryBudget
from s3feed.transfer.store import ObjectMeta, ObjectStore

log = logging.getLogger(__name__)


def _statvfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Cache:
    def __init__(
        self,
        config: CacheConfig,
        engine: Engine,
        observer: TransferObserver,
        *,
        disk_free: Callable[[Path], int] = _statvfs_free,
        boot_id: str | None = None,
        sync_delay: float = SYNC_DELAY,
        sync_retry: float = SYNC_RETRY,
    ) -> None:
        self.config = config
        self._sync_delay = sync_delay
        self.engine = engine
        self.observer = observer
        self.dir = CacheDir(config.dir, boot_id)
        self._disk_free = disk_free
        self._files = FileWorker()
        self._entries: dict[str, Record] = {}
        self._grants = Grants(self.dir.data_path, self._fail_closed)
        self._flights: dict[str, Flight] = {}
        self._removed: set[str] = set()  # evicted while the scan ran
        self._reads: dict[str, OpenEntry] = {}  # entries URL reads have open
        self._completing: dict[str, asyncio.Task[None]] = {}  # reads' entries being verified
        self._hashed: dict[str, Hashed] = {}  # what reads hashed of partial entries as bytes landed
        # Entries a read is opening (record written, part file not yet in
        # _reads): busy for the scan, which would otherwise take their
        # record for an orphan's.
        self._opening: Counter[str] = Counter()
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._scan: asyncio.Task[None] | None = None
        self._sync = Syncer(
            self._entries, self.dir, self._files, engine.monotonic, sync_retry=sync_retry
        )
        self._syncer: asyncio.Task[None] | None = None

    @property
    def size_bytes(self) -> int:
        return sum(self._counted(r) for r in self._entries.values())

    def _counted(self, rec: Record) -> int:
        """What an entry counts against `max_size`: its full size once complete
        or while a fetch downloads it, else its present bytes and those being
        read into it (docs/design.md, Cache: Partial entries)."""
        if rec.state is EntryState.COMPLETE or rec.id in self._flights:
            return rec.size
        entry = self._reads.get(rec.id)
        return rec.ranges.total + (entry.in_flight if entry is not None else 0)

    @property
    def capacity_bytes(self) -> int:
        return self.config.max_size

    async def start(self) -> None:
        """Open the directory; AclUnsupported when `[cache] group` is set on a
        file system without ACLs (group members would otherwise need group
        read on every file, which this cache never gives)."""
        group = grp.getgrnam(self.config.group).gr_gid if self.config.group else None
        await asyncio.to_thread(self.dir.open, group)
        self._grants.acl = await asyncio.to_thread(acl.supported, self.config.dir)
        if group is not None and not self._grants.acl:
            raise AclUnsupported(
                f"[cache] group = {self.config.group!r}: cache files are opened by a job's "
                "users through per-uid POSIX ACL entries, and the file system of "
                f"{self.config.dir} ({acl.filesystem(self.config.dir)}) does not keep them; "
                "mount it with ACLs (e.g. -o acl) or unset [cache] group",
            )
        self._scan = asyncio.create_task(self._run_scan())
        self._syncer = asyncio.create_task(self._sync.run())

    async def close(self) -> None:
        """Cancel downloads, sync completed entries, stop background tasks."""
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        tasks += self._stopping.values()
        if tasks:
            await asyncio.wait(tasks)
        for flight in list(self._flights.values()):
            if not flight.done.done():
                flight.done.set_exception(Cancelled("the cache is shutting down"))
        self._flights.clear()
        for entry in list(self._reads.values()):
            await self._close_entry(entry, force=True)
        self._grants.revoke_all()  # the daemon is stopping: its jobs' access ends
        for task in (self._scan, self._syncer):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        for rid in list(self._entries):  # what the syncer had not reached yet
            try:
                await self._sync.sync(rid)
            except OSError:
                log.warning("cache entry not synced at close", exc_info=True, extra={"entry": rid})
        await self._files.close()

    async def _run_scan(self) -> None:
        # Entries being downloaded or handed out are the loop's: their record
        # was loaded (and its ACL stripped) by _known before any grant.
        records = await asyncio.to_thread(self.dir.scan, self._busy)
        for rec in records:
            if rec.id not in self._entries and rec.id not in self._removed:
                self._entries[rec.id] = rec
                if rec.state is EntryState.COMPLETE and not rec.synced:
                    self._sync.schedule(rec.id)
        self._removed.clear()
        self._report_size()
        # An entry pinned between the thread's check and its load was
        # stripped after its grant: give its owners their uids back.
        for rid in [r.id for r in records if r.id in self._grants]:
            self._grants.apply_or_forget(rid)

    def _busy(self, rid: str) -> bool:
        return (
            rid in self._flights
            or rid in self._grants
            or rid in self._reads
            or self._opening[rid] > 0
        )

    def _report_size(self) -> None:
        self.observer.cache_size(self.size_bytes, self.capacity_bytes)

    def _known(self, rid: str) -> Record | None:
        rec = self._entries.get(rid)
        if rec is None and self._scan is not None and not self._scan.done():
            rec = self.dir.load(rid)  # the scan has not got here yet
            if rec is not None:
                self._entries[rid] = rec
        return rec

    def _entry(self, rec: Record) -> CacheEntry:
        rec.last_used = time.time()
        return CacheEntry(self.dir.data_path(rec.id), rec.size, rec.etag, rec.verified)

    def _vanished(self, rec: Record) -> bool:
        """A complete entry whose data file was deleted behind the daemon's back
        (an operator, a tmp cleaner): forgotten, so it is fetched again
        (docs/design.md, Cache). One stat(2) of the daemon's own directory."""
        if rec.state is not EntryState.COMPLETE or self.dir.data_path(rec.id).exists():
            return False
        log.warning(
            "a cache file was deleted behind the daemon's back; the object is fetched again",
            extra={"entry": rec.id},
        )
        self._forget(rec.id)
        self._files.submit(self.dir.remove, rec.id)  # its record, and a part file if any
        return True

    def unpin_all(self, owner: str) -> None:
        """`owner` is gone: unpin its entries, and its uids lose access to
        each file unless another live owner of that entry grants them too."""
        self._grants.unpin_all(owner)

    def lookup(self, store: ObjectStore, key: str, etag: str) -> CacheEntry | None:
        """The complete entry of `key` at `etag` in `store`'s bucket, else None;
        counts a hit or a miss. No access check and no pin: the caller HEADs
        the object with the job's own credentials first (that is the check,
        and gives `etag`) and reads the file itself, so no uid is granted."""
        rec = self._known(self.dir.entry_id(store.endpoint, store.bucket, key, etag))
        if rec is None or rec.state is not EntryState.COMPLETE or self._vanished(rec):
            self.observer.cache_miss()
            return None
        self.observer.cache_hit()
        return self._entry(rec)

    async def fetch(
        self,
        store: ObjectStore,
        key: str,
        *,
        tenant: str,
        owner: str,
        progress: Progress,
        meta: ObjectMeta | None = None,
        readers: frozenset[int] = frozenset(),
        transfer: Membership | None = None,
    ) -> CacheEntry:
        """The complete, verified entry for `key`, downloading it if needed;
        pinned for `owner` until `unpin_all(owner)`, its file open to `readers`
        until then. `meta`: what transfer/objectserver.py's HEAD with this job's
        store returned (the access check); without it, one is made.
        `transfer`: the caller's join of the limiter, made before that HEAD;
        the download it starts competes as its owner, and it is left at once
        when the entry is complete or another fetch's download is under way."""
        if bad := [u for u in readers if not 0 <= u <= acl.MAX_UID]:
            raise ValueError(f"readers: uids out of range 0..{acl.MAX_UID}: {bad}")
        budget = RetryBudget(self.engine.config.retries)
        if meta is None:
            meta = await self.engine.retrying(budget, lambda: store.head(key))
        rid = self.dir.entry_id(store.endpoint, store.bucket, key, meta.etag)
        if (completing := self._completing.get(rid)) is not None:
            await asyncio.wait([completing])  # URL reads are finishing this entry
        new_pin = self._grants.pin(rid, owner)
        try:
            rec = self._known(rid)
            if rec is not None and self._vanished(rec):
                rec = None  # fetched again, never answered with a path that does not exist
            if rec is not None and rec.state is EntryState.COMPLETE:
                if transfer is not None:
                    transfer.leave()  # nothing to download
                self.observer.cache_hit()
                progress.start(self.engine.monotonic(), rec.size, rec.size)
                progress.finish(self.engine.monotonic(), rec.verified)
                entry = self._entry(rec)
            else:
                self.observer.cache_miss()
                entry = await self._join(rid, rec, meta, store, tenant, owner, progress, transfer)
            self._grants.grant(rid, owner, readers)
            return entry
        except BaseException:
            if new_pin:  # an earlier fetch of this owner keeps its pin and grant
                self._grants.unpin(rid, owner)
            raise

    async def _join(
        self,
        rid: str,
        rec: Record | None,
        meta: ObjectMeta,
        store: ObjectStore,
        tenant: str,
        owner: str,
        progress: Progress,
        transfer: Membership | None = None,
    ) -> CacheEntry:
        flight = self._flights.get(rid)
        if flight is None:
            if rec is None:
                rec = Record(rid, store.endpoint, store.bucket, meta.key, meta.etag, meta.size)
                rec.version_id, rec.boot_id = meta.version_id, self.dir.boot_id
            await self._make_room(rec)
            flight = self._flights.get(rid)  # making room may have yielded
        if flight is None:
            assert rec is not None
            flight = Flight.start(rec, meta)
            self._flights[rid] = flight
            self._entries[rid] = rec
            self._report_size()
        flight.follow(progress)
        token = object()
        flight.waiters[token] = Waiter(store, tenant)
        if flight.task is None:
            if transfer is not None:
                flight.transfer = transfer.owner
            self._launch(flight)
        elif transfer is not None:
            transfer.leave()  # another fetch's download is under way: it competes
        try:
            return await asyncio.shield(flight.done)
        finally:
            flight.unfollow(progress)
            flight.waiters.pop(token, None)
            if not flight.done.done():
                if not flight.waiters:
                    self._cancel(flight)
                elif flight.runner is token and not flight.ending:
                    self._launch(flight)  # go on with a remaining job's credentials

    def _launch(self, flight: Flight) -> None:
        token, waiter = next(iter(flight.waiters.items()))
        previous = flight.task or self._stopping.pop(flight.rec.id, None)
        if previous is not None:
            previous.cancel()
        flight.runner = token
        flight.task = asyncio.create_task(self._download(flight, waiter, previous))

    def _cancel(self, flight: Flight) -> None:
        if flight.task is not None:
            flight.task.cancel()
            self._stopping[flight.rec.id] = flight.task  # a next flight waits for it
        flight.done.cancel()
        if self._flights.get(flight.rec.id) is flight:
            del self._flights[flight.rec.id]

    async def _make_room(self, rec: Record) -> None:
        """Evict LRU entries until a fetch of `rec` fits the budget and
        min_free, else InsufficientStorage. `rec` is not yet in the index, or
        is a partial entry (counted then at its present bytes)."""
        counted = self._counted(rec) if rec.id in self._entries else 0
        await self._room(rec.id, rec.size - counted, rec.size - rec.ranges.total)

    async def room_for(self, entry: OpenEntry, n: int) -> None:
        """Room for `n` more bytes read into `entry` (transfer/cache/reads.py)."""
        await self._room(entry.rec.id, n, n)

    async def _room(self, rid: str, more: int, need_disk: int) -> None:
        """Evict LRU entries until `more` bytes more fit `max_size` and
        `need_disk` bytes more leave `min_free`, else InsufficientStorage."""
        while True:
            over = self.size_bytes + more - self.config.max_size
            disk = need_disk + self._owed(rid)
            short = self.config.min_free + disk - self._disk_free(self.config.dir)
            if over <= 0 and short <= 0:
                return
            victims = sorted(
                (r for r in self._entries.values() if self._evictable(r.id) and r.id != rid),
                key=lambda r: r.last_used,
            )
            if victims:
                await self._evict(victims[0].id)
                continue
            if self._scan is not None and not self._scan.done():
                await asyncio.wait([self._scan])  # entries it finds may be evictable
                continue
            raise InsufficientStorage(
                f"the cache cannot make room for {more} bytes: {self.size_bytes} of "
                f"{self.config.max_size} bytes in use by entries pinned or read by running "
                f"jobs, {self._disk_free(self.config.dir)} bytes free on disk of which running "
                f"downloads will still write {self._owed(rid)} (min_free "
                f"{self.config.min_free}); raise cache.max_size or free disk space"
            )

    def _owed(self, besides: str) -> int:
        """What the other running downloads will still take from the disk."""
        return sum(f.owed for rid, f in self._flights.items() if rid != besides)

    def _evictable(self, rid: str) -> bool:
        return (
            rid not in self._grants
            and rid not in self._flights
            and rid not in self._reads
            and rid not in self._completing
        )

    async def _evict(self, rid: str) -> None:
        self._forget(rid)
        self.observer.cache_eviction()
        await self._files.run(self.dir.remove, rid)

    async def _download(
        self, flight: Flight, waiter: Waiter, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # one writer of the part file at a time
            if self._stopping.get(flight.rec.id) is previous:
                del self._stopping[flight.rec.id]
        rec = flight.rec
        try:
            await download(
                flight,
                waiter,
                cache_dir=self.dir,
                files=self._files,
                engine=self.engine,
            )
        except (SourceChanged, ChecksumMismatch, AccessDenied, NoSuchKey) as exc:
            await self._drop(flight)  # nothing here is worth resuming
            flight.done.set_exception(exc)
            return
        except asyncio.CancelledError:
            raise  # a restart or the last waiter leaving; the done ranges stay
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._flights.pop(rec.id, None)
                flight.done.set_exception(exc)
                return
            # Something else filled the disk: give back what this entry holds.
            await self._drop(flight)
            flight.done.set_exception(
                InsufficientStorage(
                    f"the cache's file system ({self.config.dir}) has no room left for "
                    f"s3://{rec.bucket}/{rec.key}; free space or lower "
                    "[cache] max_size, then fetch again"
                )
            )
            return
        except Exception as exc:
            self._flights.pop(rec.id, None)
            flight.done.set_exception(exc)
            return
        self._flights.pop(rec.id, None)
        self._hashed.pop(rec.id, None)  # complete: no read hashes it any more
        self._sync.schedule(rec.id, self.engine.monotonic() + self._sync_delay)
        flight.done.set_result(self._entry(rec))

    async def _drop(self, flight: Flight) -> None:
        flight.ending = True  # not restarted while its files go: nothing is left to resume
        self._forget(flight.rec.id)
        await self._files.run(self.dir.remove, flight.rec.id)
        self._flights.pop(flight.rec.id, None)

    def _forget(self, rid: str) -> None:
        """Out of the index; the caller removes the files."""
        self._entries.pop(rid, None)
        self._hashed.pop(rid, None)
        if (entry := self._reads.get(rid)) is not None:
            entry.dropped = True  # its readers go on from what they have; nothing is recorded
        if self._scan is not None and not self._scan.done():
            self._removed.add(rid)
        self._report_size()

    def _fail_closed(self, rid: str) -> None:
        # An entry whose ACL could not be set: its path stops opening for
        # everyone before the call returns, so the unlink is inline (rare).
        self._forget(rid)
        self.dir.remove(rid)

    # --- Reads at any offset (transfer/cache/reads.py) ---

    def holds(self, store: ObjectStore, key: str, etag: str) -> bool:
        """Whether an entry of `key` at `etag` is complete or holds bytes (no
        hit or miss counted: a stream asks before its HEAD)."""
        rec = self._known(self.dir.entry_id(store.endpoint, store.bucket, key, etag))
        return rec is not None and (rec.state is EntryState.COMPLETE or bool(rec.ranges))

    def has_bytes(self, store: ObjectStore, key: str, etag: str) -> bool:
        """Whether a partial entry of `key` at `etag` holds bytes a stream can use."""
        rec = self._known(self.dir.entry_id(store.endpoint, store.bucket, key, etag))
        return rec is not None and rec.state is EntryState.PARTIAL and bool(rec.ranges)

    async def open_reader(
        self, store: ObjectStore, meta: ObjectMeta, *, tenant: str
    ) -> EntryReader | None:
        """A reader of the entry of `meta` (what the job's own HEAD answered:
        the access check is the caller's), fetching what is missing into it;
        None when the entry is complete (read the file: `lookup`). Close it."""
        rid = self.dir.entry_id(store.endpoint, store.bucket, meta.key, meta.etag)
        if (completing := self._completing.get(rid)) is not None:
            await asyncio.wait([completing])
        entry = self._reads.get(rid)
        if entry is None:
            entry = await self._open_entry(rid, store, meta)
            if entry is None:
                return None
        entry.readers += 1
        rec = entry.rec
        rec.last_used = time.time()
        return EntryReader(entry, store, tenant, release=self._release_reader)

    async def _open_entry(self, rid: str, store: ObjectStore, meta: ObjectMeta) -> OpenEntry | None:
        self._opening[rid] += 1
        try:
            return await self._open_entry_busy(rid, store, meta)
        finally:
            self._opening[rid] -= 1
            if not self._opening[rid]:
                del self._opening[rid]

    async def _open_entry_busy(
        self, rid: str, store: ObjectStore, meta: ObjectMeta
    ) -> OpenEntry | None:
        rec = self._known(rid)
        if rec is not None and rec.state is EntryState.COMPLETE:
            return None
        if rec is None:
            rec = Record(rid, store.endpoint, store.bucket, meta.key, meta.etag, meta.size)
            rec.version_id, rec.boot_id = meta.version_id, self.dir.boot_id
            self._entries[rid] = rec  # counted at its present bytes: none yet
        await self._files.run(self.dir.write_record, rec.snapshot())  # before the part file
        opening = self._files.submit(self.dir.open_part, rid, rec.size, False)
        try:
            fd, _ = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(close_opened)
            raise
        if (entry := self._reads.get(rid)) is not None:  # another reader opened it meanwhile
            self._files.submit(os.close, fd)
            return entry
        if self._entries.get(rid) is not rec or rec.state is EntryState.COMPLETE:
            self._files.submit(os.close, fd)  # completed or dropped meanwhile: start over
            return await self._open_entry_busy(rid, store, meta)
        hashed = self._hashed.setdefault(rid, Hashed())
        sidecar = Sidecar(rec, self.dir, self._files)
        entry = OpenEntry(rec, meta, fd, sidecar, self, self.engine, hashed=hashed)
        self._reads[rid] = entry
        return entry

    def landed(self, entry: OpenEntry) -> None:
        self._report_size()

    async def complete(self, entry: OpenEntry, store: ObjectStore) -> None:
        """Every byte of a read's entry is present: verify and complete it once."""
        rid = entry.rec.id
        running = self._completing.get(rid)
        if running is None:
            if rid in self._flights or entry.rec.state is not EntryState.PARTIAL:
                return  # a fetch's download completes it
            if entry.dropped:
                return  # forgotten (its check failed, or it was evicted): its reads fail
            running = asyncio.create_task(self._complete(entry, store))
            self._completing[rid] = running
            running.add_done_callback(lambda _: self._completing.pop(rid, None))
        await asyncio.shield(running)

    async def _complete(self, entry: OpenEntry, store: ObjectStore) -> None:
        rec = entry.rec
        await entry.sidecar.flush()
        budget = RetryBudget(self.engine.config.retries)
        parts, exact = await self.engine.layout(store, entry.meta, budget)
        try:
            verified = await entry.verify(parts, exact)  # from what was hashed as pieces landed
        except ChecksumMismatch as exc:
            entry.failed = exc
            log.warning(
                "a cache entry read through URLs failed its check and is dropped",
                extra={"entry": rec.id, "code": exc.code},
            )
            self._forget(rec.id)
            await self._files.run(self.dir.remove, rec.id)
            raise
        if rec.state is not EntryState.PARTIAL or self._entries.get(rec.id) is not rec:
            return  # a fetch completed it meanwhile, or it was dropped
        complete = rec.snapshot()
        complete.complete(verified, self.dir.boot_id)
        await self._files.run(self.dir.finish, complete)
        rec.complete(verified, self.dir.boot_id)
        self._hashed.pop(rec.id, None)
        self._sync.schedule(rec.id, self.engine.monotonic() + self._sync_delay)
        self._report_size()

    async def _release_reader(self, reader: EntryReader) -> None:
        entry = reader.entry
        entry.readers -= 1
        if entry.readers == 0:
            await self._close_entry(entry)

    async def _close_entry(self, entry: OpenEntry, *, force: bool = False) -> None:
        """The last reader left: record what landed, close the descriptor."""
        rid = entry.rec.id
        if force:
            for piece in list(entry.pieces):
                if piece.task is not None:
                    piece.task.cancel()
            tasks = [p.task for p in entry.pieces if p.task is not None]
            if tasks:
                await asyncio.wait(tasks)
        if (completing := self._completing.get(rid)) is not None:
            await asyncio.wait([completing])  # it reads the descriptor
        try:
            await entry.sidecar.flush()
        except OSError:
            log.warning("a cache entry's record was not written", exc_info=True)
        if entry.closed or (not force and (entry.readers or entry.pieces)):
            return  # closed already, or a reader came back meanwhile
        entry.closed = True
        if self._reads.get(rid) is entry:
            del self._reads[rid]
        # A read that opens the entry while this one's hashing thread ends
        # starts from fresh hashes: one thread at a time updates a `Hashed`.
        hashed = self._hashed.pop(rid, None)
        await entry.stop()  # no thread reads the descriptor once it is closed
        rec = self._entries.get(rid)
        if hashed is not None and rec is not None and rec.state is EntryState.PARTIAL:
            self._hashed.setdefault(rid, hashed)
        self._files.submit(os.close, entry.fd)
        self._report_size()
