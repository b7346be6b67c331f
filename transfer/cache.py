"""The on-disk cache: verified, resumable, shared downloads with LRU eviction.

What runs where: all state lives on the event loop (no locks). `start()`
launches two background tasks: the scan of the cache directory (in a worker
thread; start-up never waits for it, a lookup of an entry the scan has not
reached reads that entry's record directly) and the syncer, which fsyncs
completed entries off the download path (cacheindex.py says why).

Who waits on whom: `fetch` HEADs the object with the job's own store first:
that is the tenant-isolation check (S3 decides, not the cache) and gives the
ETag of the entry key. A complete entry is handed over at once. Otherwise the
caller joins the entry's `_Flight`, the single download of that entry: the
flight runs in a task the cache owns, and every caller awaits its result
through `asyncio.shield`, so a caller that goes away does not stop it. When
the last waiter leaves, the flight is cancelled (its done ranges stay in the
sidecar for a later resume); when the waiter whose store the flight uses
leaves while others wait, the flight restarts with a remaining waiter's store
and resumes from the ranges already on disk (credentials are never used on
behalf of a job that is gone).

What bounds memory and disk: bodies go straight from the store's buffer to
the part file (Engine.download). Disk is bounded by `max_size` (entries count
at their full size from the moment a download starts) and by `min_free` of
the filesystem, counting the bytes running downloads will still write and
the file system has not yet allocated (`_owed`); room is made by evicting
least-recently-used entries that are neither pinned by a live job nor being
downloaded, else InsufficientStorage before any byte moves.

Who may open a file (docs/design.md, Cache): data files are
0600, the daemon's. Each pin carries the uids its owner (a job) grants; when
an entry is handed to an owner, the file's POSIX ACL becomes the union of the
readers of its live owners, and `unpin_all` takes the owner's uids away again
unless another live owner still grants them. ACLs are set on the event loop
(one setxattr, ~6 us measured). Nothing survives the process: the start-up
scan (CacheDir.load) and `close()` strip every entry's ACL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import acl
from .cacheindex import CacheDir, EntryState, Record, reserve
from .config import CacheConfig
from .engine import Engine
from .errors import (
    AccessDenied,
    Cancelled,
    ChecksumMismatch,
    InsufficientStorage,
    NoSuchKey,
    SourceChanged,
)
from .observer import TransferObserver
from .progress import Progress
from .retry import RetryBudget
from .store import ObjectMeta, ObjectStore

SIDECAR_INTERVAL = 0.25  # seconds between sidecar rewrites during a download
SYNC_DELAY = 60.0  # seconds from an entry's completion to its fsync
SYNC_RETRY = 30.0  # seconds between fsync attempts of an entry that failed one
SYNC_ATTEMPTS = 5  # then the entry stays unsynced (a reboot drops it)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    etag: str
    verified: tuple[str, ...]


@dataclass
class _Waiter:
    store: ObjectStore
    tenant: str


@dataclass
class _Flight:
    rec: Record
    meta: ObjectMeta
    done: asyncio.Future[CacheEntry]
    progress: Progress = field(default_factory=Progress)
    waiters: dict[object, _Waiter] = field(default_factory=dict)  # one token per fetch call
    runner: object = None  # the waiter whose store the current task uses
    task: asyncio.Task[None] | None = None
    allocated: bool = False  # reserve() took the part file's blocks from the file system

    @property
    def owed(self) -> int:
        """Bytes this download will still take from the disk that free space
        does not show yet (nothing once its blocks are reserved)."""
        return 0 if self.allocated else self.rec.size - self.rec.ranges.total


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
        sidecar_interval: float = SIDECAR_INTERVAL,
        sync_delay: float = SYNC_DELAY,
        sync_retry: float = SYNC_RETRY,
    ) -> None:
        self.config = config
        self._sync_delay = sync_delay
        self._sync_retry = sync_retry
        self._sidecar_interval = sidecar_interval
        self.engine = engine
        self.observer = observer
        self.dir = CacheDir(config.dir, boot_id)
        self._disk_free = disk_free
        self._acl = False  # the directory's file system keeps ACLs (known at start)
        self._entries: dict[str, Record] = {}
        # entry id -> owner -> the uids that owner lets open the entry's file
        self._pins: dict[str, dict[str, frozenset[int]]] = {}
        self._flights: dict[str, _Flight] = {}
        self._removed: set[str] = set()  # evicted while the scan ran
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._scan: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        # (when to fsync, entry id): see _run_syncer.
        self._to_sync: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self._sync_failures: dict[str, int] = {}

    @property
    def size_bytes(self) -> int:
        return sum(r.size for r in self._entries.values())

    @property
    def capacity_bytes(self) -> int:
        return self.config.max_size

    async def start(self) -> None:
        """Open the directory; AclUnsupported when `[cache] group` is set on a
        file system without ACLs (group members would otherwise need group
        read on every file, which this cache never gives)."""
        group = grp.getgrnam(self.config.group).gr_gid if self.config.group else None
        await asyncio.to_thread(self.dir.open, group)
        self._acl = await asyncio.to_thread(acl.supported, self.config.dir)
        if group is not None and not self._acl:
            raise acl.AclUnsupported(
                f"[cache] group = {self.config.group!r}: cache files are opened by a job's "
                "users through per-uid POSIX ACL entries, and the file system of "
                f"{self.config.dir} ({acl.filesystem(self.config.dir)}) does not keep them; "
                "mount it with ACLs (e.g. -o acl) or unset [cache] group",
            )
        self._scan = asyncio.create_task(self._run_scan())
        self._syncer = asyncio.create_task(self._run_syncer())

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
        self._revoke_all()  # the daemon is stopping: its jobs' access ends
        for task in (self._scan, self._syncer):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        for rid in list(self._entries):  # what the syncer had not reached yet
            try:
                await self._sync_one(rid)
            except OSError:
                log.warning("cache entry not synced at close", exc_info=True, extra={"entry": rid})

    async def _run_scan(self) -> None:
        # Entries being downloaded or handed out are the loop's: their record
        # was loaded (and its ACL stripped) by _known before any grant.
        records = await asyncio.to_thread(self.dir.scan, self._busy)
        for rec in records:
            if rec.id not in self._entries and rec.id not in self._removed:
                self._entries[rec.id] = rec
                if rec.state is EntryState.COMPLETE and not rec.synced:
                    self._to_sync.put_nowait((0.0, rec.id))
        self._removed.clear()
        self._report_size()
        # An entry pinned between the thread's check and its load was
        # stripped after its grant: give its owners their uids back.
        for rid in [r.id for r in records if r.id in self._pins]:
            self._apply_or_forget(rid)

    def _busy(self, rid: str) -> bool:
        return rid in self._flights or rid in self._pins

    async def _run_syncer(self) -> None:
        # A finished entry is fsynced `sync_delay` seconds later, by when the
        # kernel has usually written it back on its own: the fsync then costs
        # little, instead of forcing 1-2 CPU-s of writeback per GiB right as
        # the encoder starts. Until then the entry is served (it is complete)
        # but would not survive a reboot (CacheDir.load drops unsynced entries).
        # A failed fsync (EIO, ENOSPC) is tried again `sync_retry` seconds
        # later, up to SYNC_ATTEMPTS times, and never stops the other entries.
        while True:
            due, rid = await self._to_sync.get()
            if (wait := due - self.engine.monotonic()) > 0:
                await asyncio.sleep(wait)
            try:
                await self._sync_one(rid)
            except OSError as exc:
                failures = self._sync_failures.get(rid, 0) + 1
                again = failures < SYNC_ATTEMPTS
                log.warning(
                    "cache entry fsync failed",
                    extra={"entry": rid, "error": str(exc), "attempt": failures, "retry": again},
                )
                if again:
                    self._sync_failures[rid] = failures
                    self._to_sync.put_nowait((self.engine.monotonic() + self._sync_retry, rid))
                else:
                    self._sync_failures.pop(rid, None)
            else:
                self._sync_failures.pop(rid, None)

    async def _sync_one(self, rid: str) -> None:
        rec = self._entries.get(rid)
        if rec is None or rec.state is not EntryState.COMPLETE or rec.synced:
            return
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
            await asyncio.to_thread(self.dir.fsync, self.dir.data_path(rid))
            if self._entries.get(rid) is rec:
                rec.synced = True
                self.dir.write_record(rec)

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

    def _pin(self, rid: str, owner: str) -> bool:
        """Pin `rid` for `owner`; True when this made a new pin."""
        owners = self._pins.setdefault(rid, {})
        if owner in owners:
            return False
        owners[owner] = frozenset()
        return True

    def _unpin(self, rid: str, owner: str) -> None:
        owners = self._pins.get(rid)
        if owners is None or owner not in owners:
            return
        granted = owners.pop(owner)
        if not owners:
            del self._pins[rid]
        if granted:
            self._apply_or_forget(rid)

    def unpin_all(self, owner: str) -> None:
        """`owner` is gone: unpin its entries, and its uids lose access to
        each file unless another live owner of that entry grants them too."""
        for rid in list(self._pins):
            self._unpin(rid, owner)

    def _grant(self, rid: str, owner: str, readers: frozenset[int]) -> None:
        owners = self._pins.get(rid)
        if owners is None or owner not in owners or readers <= owners[owner]:
            return
        before = owners[owner]
        owners[owner] = before | readers
        try:
            self._apply(rid)
        except OSError as exc:
            owners[owner] = before
            self._apply_or_forget(rid)
            if exc.errno not in (errno.ENOSPC, errno.E2BIG):
                raise
            # ext4 keeps ~500 entries per file (one xattr block), any file
            # system at most 8190 (64 KiB): measured in tests/unit/test_cache.py.
            raise InsufficientStorage(
                f"the cache file {self.dir.data_path(rid).name} cannot name "
                f"{len(self._readers(rid) | readers)} reader uids (the jobs holding it "
                "grant too many distinct uids for the file system's ACL); end some of "
                "those jobs or give them fewer EncoderUids"
            ) from exc

    def _readers(self, rid: str) -> frozenset[int]:
        return frozenset().union(*self._pins.get(rid, {}).values())

    def _apply(self, rid: str) -> None:
        """The entry's file grants exactly what its live owners grant."""
        if not self._acl:
            return  # no group sharing here (start() refused it): 0600 is all there is
        with contextlib.suppress(FileNotFoundError):  # evicted or dropped meanwhile
            acl.set_readers(self.dir.data_path(rid), self._readers(rid))

    def _apply_or_forget(self, rid: str) -> None:
        # Revoking must not fail open: an entry whose ACL cannot be set is
        # removed (the path stops opening for everyone).
        try:
            self._apply(rid)
        except OSError:
            log.error("cache entry ACL not set: entry removed", exc_info=True, extra={"entry": rid})
            self._forget(rid)

    def _revoke_all(self) -> None:
        for rid in [rid for rid in self._pins if self._readers(rid)]:
            for owner in self._pins[rid]:
                self._pins[rid][owner] = frozenset()
            self._apply_or_forget(rid)

    def lookup(self, store: ObjectStore, key: str, etag: str) -> CacheEntry | None:
        """The complete entry of `key` at `etag` in `store`'s bucket, else None;
        counts a hit or a miss. No access check and no pin: the caller HEADs
        the object with the job's own credentials first (that is the check,
        and gives `etag`) and reads the file itself, so no uid is granted."""
        rec = self._known(self.dir.entry_id(store.endpoint, store.bucket, key, etag))
        if rec is None or rec.state is not EntryState.COMPLETE:
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
    ) -> CacheEntry:
        """The complete, verified entry for `key`, downloading it if needed;
        pinned for `owner` until `unpin_all(owner)`, and its file opens for
        the uids in `readers` (besides root and the daemon) until then.
        `meta`: what a HEAD with this job's store just returned (it is the
        access check), else one is made."""
        if bad := [u for u in readers if not 0 <= u <= acl.MAX_UID]:
            raise ValueError(f"readers: uids out of range 0..{acl.MAX_UID}: {bad}")
        budget = RetryBudget(self.engine.config.retries)
        if meta is None:
            meta = await self.engine.retrying(budget, lambda: store.head(key))
        rid = self.dir.entry_id(store.endpoint, store.bucket, key, meta.etag)
        new_pin = self._pin(rid, owner)
        try:
            rec = self._known(rid)
            if rec is not None and rec.state is EntryState.COMPLETE:
                self.observer.cache_hit()
                progress.start(self.engine.monotonic(), rec.size, rec.size)
                progress.finish(self.engine.monotonic(), rec.verified)
                entry = self._entry(rec)
            else:
                self.observer.cache_miss()
                entry = await self._join(rid, rec, meta, store, tenant, owner, progress)
            self._grant(rid, owner, readers)
            return entry
        except BaseException:
            if new_pin:  # an earlier fetch of this owner keeps its pin and grant
                self._unpin(rid, owner)
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
            loop = asyncio.get_running_loop()
            flight = _Flight(rec, meta, loop.create_future())
            flight.done.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._flights[rid] = flight
            self._entries[rid] = rec
            self._report_size()
        p = flight.progress
        progress.size, progress.bytes_done, progress.started = p.size, p.bytes_done, p.started
        if p.moving.is_set():  # joined a download under way: it moves already
            progress.moving.set()
        p.followers.append(progress)
        token = object()
        flight.waiters[token] = _Waiter(store, tenant)
        if flight.task is None:
            self._launch(flight)
        try:
            return await asyncio.shield(flight.done)
        finally:
            # By identity: two waiters' Progress compare equal field by field.
            p.followers[:] = [f for f in p.followers if f is not progress]
            flight.waiters.pop(token, None)
            if not flight.done.done():
                if not flight.waiters:
                    self._cancel(flight)
                elif flight.runner is token:
                    self._launch(flight)  # go on with a remaining job's credentials

    def _launch(self, flight: _Flight) -> None:
        token, waiter = next(iter(flight.waiters.items()))
        previous = flight.task or self._stopping.pop(flight.rec.id, None)
        if previous is not None:
            previous.cancel()
        flight.runner = token
        flight.task = asyncio.create_task(self._download(flight, waiter, previous))

    def _cancel(self, flight: _Flight) -> None:
        if flight.task is not None:
            flight.task.cancel()
            self._stopping[flight.rec.id] = flight.task  # a next flight waits for it
        flight.done.cancel()
        if self._flights.get(flight.rec.id) is flight:
            del self._flights[flight.rec.id]

    async def _make_room(self, rec: Record) -> None:
        """Evict LRU entries until `rec` fits the budget and min_free, else
        InsufficientStorage. `rec` is not yet in the index, or is a partial entry."""
        while True:
            counted = rec.id in self._entries
            over = self.size_bytes + (0 if counted else rec.size) - self.config.max_size
            need_disk = rec.size - rec.ranges.total + self._owed(rec.id)
            short = self.config.min_free + need_disk - self._disk_free(self.config.dir)
            if over <= 0 and short <= 0:
                return
            victims = sorted(
                (r for r in self._entries.values() if self._evictable(r.id) and r.id != rec.id),
                key=lambda r: r.last_used,
            )
            if victims:
                self._evict(victims[0].id)
                continue
            if self._scan is not None and not self._scan.done():
                await asyncio.wait([self._scan])  # entries it finds may be evictable
                continue
            raise InsufficientStorage(
                f"the cache cannot make room for {rec.size} bytes: {self.size_bytes} of "
                f"{self.config.max_size} bytes in use by entries pinned by running jobs, "
                f"{self._disk_free(self.config.dir)} bytes free on disk of which running "
                f"downloads will still write {self._owed(rec.id)} (min_free "
                f"{self.config.min_free}); raise cache.max_size or free disk space"
            )

    def _owed(self, besides: str) -> int:
        """What the other running downloads will still take from the disk."""
        return sum(f.owed for rid, f in self._flights.items() if rid != besides)

    def _evictable(self, rid: str) -> bool:
        return rid not in self._pins and rid not in self._flights

    def _evict(self, rid: str) -> None:
        self._forget(rid)
        self.observer.cache_eviction()
        self._report_size()

    async def _download(
        self, flight: _Flight, waiter: _Waiter, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # one writer of the part file at a time
            if self._stopping.get(flight.rec.id) is previous:
                del self._stopping[flight.rec.id]
        rec, dir_ = flight.rec, self.dir
        try:
            dir_.write_record(rec)  # before the part file: see CacheDir.scan
            # 0600 always, also for a part file an older version left group-readable.
            fd = os.open(dir_.part_path(rec.id), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, rec.size)
                flight.allocated = reserve(fd, rec.size)

                last_write = self.engine.monotonic()

                def range_done(start: int, end: int) -> None:
                    # The sidecar is what a restart resumes from; rewriting it
                    # after every range cost ~9 % of the cache path's CPU. A
                    # crash loses at most a quarter second of recorded ranges: those
                    # are fetched again, never trusted unrecorded.
                    nonlocal last_write
                    rec.ranges.add(start, end)
                    now = self.engine.monotonic()
                    if now - last_write >= self._sidecar_interval:
                        dir_.write_record(rec)
                        last_write = now

                await self.engine.download(
                    waiter.store,
                    rec.key,
                    fd,
                    tenant=waiter.tenant,
                    progress=flight.progress,
                    meta=flight.meta,
                    skip=rec.ranges,
                    on_range_done=range_done,
                )
            finally:
                os.close(fd)
            os.replace(dir_.part_path(rec.id), dir_.data_path(rec.id))
            rec.complete(flight.progress.verified, dir_.boot_id)
            dir_.write_record(rec)
        except (SourceChanged, ChecksumMismatch, AccessDenied, NoSuchKey) as exc:
            self._drop(flight)  # nothing here is worth resuming
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
            self._drop(flight)
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
        self._to_sync.put_nowait((self.engine.monotonic() + self._sync_delay, rec.id))
        flight.done.set_result(self._entry(rec))

    def _drop(self, flight: _Flight) -> None:
        self._flights.pop(flight.rec.id, None)
        self._forget(flight.rec.id)

    def _forget(self, rid: str) -> None:
        self._entries.pop(rid, None)
        if self._scan is not None and not self._scan.done():
            self._removed.add(rid)
        self.dir.remove(rid)
        self._report_size()
