"""Serving an object to a job: the access check, then the cache or S3.

Design note. `ObjectServer` is the one way daemon/ reaches an object's bytes
(docs/design.md, Cache). Each entry point starts with a HEAD of the key
through the job's own store, signed with the job's credentials: S3 decides
whether this job may read the object, never the cache, and the ETag it
answers names the cache entry. The answer travels as an `Authorised`, which
only this module makes, so no caller can hand the cache a check it did not
make or skip one with a flag.

`fetch` puts the object into the cache for a job and grants the job's uids
read access to the file (the cache keeps the grants per job; `release` takes
them back when the job ends). `open` starts a stream: a complete cache entry
for that ETag is read with pread in 1 MiB slices; otherwise the engine's
window fetches ranges in parallel and hands them over in order. The caller
iterates a `Delivery` in its own task, so a slow reader stops the reads (and
the window, the fetches). A stream that is likely to come from S3 sends its
first range's GET with the HEAD (`early`: docs/design.md, Streams: first
bytes); nothing of it is served before the HEAD has answered 200 with the
same ETag. A read `through_cache` (a URL read), and any stream
of an object whose partial cache entry already holds bytes, reads the entry
instead, fetching what is missing into it (transfer/cache/reads.py); when the
cache has no room even for its first piece, it streams as above. Either
way the first bytes are in hand before `async with` returns, so a first
request that fails for good is the caller's error before any header goes out. A `Delivery` reports its transfer and its bytes to
the observer itself and settles once: success when the caller says the last
byte was handed over, otherwise failed or cancelled when it is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from s3feed.transfer.cache import Cache, CacheEntry, EntryReader, EntryState
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import InsufficientStorage
from s3feed.transfer.fairshare import Membership
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.store import ObjectMeta, ObjectStore
from s3feed.transfer.stream import FIRST_RANGE, EarlyGet, ObjectStream

FILE_CHUNK = 1024 * 1024
SEEN_KEYS = 4096  # ETags remembered to tell whether an object may be in the cache
_SEAL = object()


@dataclass(frozen=True)
class Authorised:
    """A HEAD of `meta.key` through `store` answered `meta`: that job may read it."""

    store: ObjectStore
    meta: ObjectMeta
    seal: object

    def __post_init__(self) -> None:
        if self.seal is not _SEAL:
            raise TypeError("only ObjectServer.authorise makes an Authorised")


class ObjectServer:
    def __init__(
        self,
        engine: Engine,
        cache: Cache,
        observer: TransferObserver,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.observer = observer
        self._monotonic = monotonic
        # (endpoint, bucket, key) -> the ETag its last HEAD answered: where the
        # cache may hold the object, a stream sends no early GET.
        self._seen: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    async def authorise(self, store: ObjectStore, key: str) -> Authorised:
        """HEAD `key` with the job's store; raises NoSuchKey, AccessDenied..."""
        meta = await store.head(key)
        seen = self._seen
        where = (store.endpoint, store.bucket, key)
        seen[where] = meta.etag
        seen.move_to_end(where)
        if len(seen) > SEEN_KEYS:
            seen.popitem(last=False)
        return Authorised(store, meta, _SEAL)

    def _early(
        self, store: ObjectStore, key: str, early_range: tuple[int, int | None] | None
    ) -> EarlyGet | None:
        """The first range's GET, sent now, unless the cache may hold the
        object (its last ETag seen has an entry) or the start is unknown."""
        if early_range is None:
            return None
        etag = self._seen.get((store.endpoint, store.bucket, key))
        if etag is not None and self.cache.holds(store, key, etag):
            return None
        start, end = early_range
        last = start + FIRST_RANGE - 1 if end is None else min(end, start + FIRST_RANGE - 1)
        return EarlyGet(self.engine, store, key, start, last, object())

    async def fetch(
        self,
        auth: Authorised,
        *,
        tenant: str,
        owner: str,
        readers: frozenset[int],
        progress: Progress,
        transfer: Membership | None = None,
    ) -> CacheEntry:
        """The complete cache entry of what `auth` allowed, downloaded if need
        be, pinned for `owner` and readable by `readers` until `release(owner)`.
        `transfer`: the caller's join of the limiter from before its HEAD
        (Cache.fetch)."""
        entry = await self.cache.fetch(
            auth.store,
            auth.meta.key,
            tenant=tenant,
            owner=owner,
            progress=progress,
            meta=auth.meta,
            readers=readers,
            transfer=transfer,
        )
        self.observer.bytes_served("cache", entry.size)
        return entry

    def release(self, owner: str) -> None:
        """`owner`'s job ended: unpin its entries and take back its uids' access."""
        self.cache.unpin_all(owner)

    async def open(
        self,
        store: ObjectStore,
        key: str,
        *,
        tenant: str,
        choose_range: Callable[[ObjectMeta], tuple[int, int] | None],
        through_cache: bool = False,
        early_range: tuple[int, int | None] | None = None,
    ) -> Delivery:
        """Authorise, then pick the bytes' source. `choose_range` maps the
        object to an inclusive (first, last), or None for all of it; it may
        raise (InvalidRange) before anything starts. `through_cache`: what
        is read from S3 stays in the object's cache entry. `early_range`:
        the (first, last or None: to the end) that `choose_range` will pick
        if the object is large enough, known before the HEAD (None: unknown,
        a suffix range); its first range's GET is sent with the HEAD."""
        early = None if through_cache else self._early(store, key, early_range)
        try:
            auth = await self.authorise(store, key)
            meta = auth.meta
            byte_range = choose_range(meta)
        except BaseException:
            if early is not None:
                early.cancel()  # the HEAD's answer is the answer
            raise
        first, last = byte_range if byte_range else (0, meta.size - 1)
        if early is not None and (early.start != first or meta.size == 0):
            early.cancel()
            early = None
        cached: IO[bytes] | None = None
        entry = self.cache.lookup(store, key, meta.etag)
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):  # evicted since: S3 has it
                cached = open(entry.path, "rb", buffering=0)  # noqa: ASYNC230, SIM115 (a local open)
        reader: EntryReader | None = None
        if (
            cached is None
            and meta.size > 0
            and (through_cache or self.cache.has_bytes(store, key, meta.etag))
        ):
            try:
                reader = await self.cache.open_reader(store, meta, tenant=tenant)
            except BaseException:
                if early is not None:
                    early.cancel()
                raise
        if early is not None and (cached is not None or reader is not None):
            early.cancel()  # the cache has it after all
            early = None
        return Delivery(
            self,
            store,
            meta,
            first,
            last,
            partial=byte_range is not None,
            tenant=tenant,
            cached=cached,
            reader=reader,
            through_cache=through_cache,
            early=early,
        )


_OUTCOMES = ("success", "failed", "cancelled")


class Delivery:
    """One stream of an object's bytes, in order; an async context manager
    and, inside it, an async iterator of chunks."""

    def __init__(
        self,
        server: ObjectServer,
        store: ObjectStore,
        meta: ObjectMeta,
        first: int,
        last: int,
        *,
        partial: bool,
        tenant: str,
        cached: IO[bytes] | None,
        reader: EntryReader | None = None,
        through_cache: bool = False,
        early: EarlyGet | None = None,
    ) -> None:
        self._server = server
        self._early = early
        self._store = store
        self.meta = meta
        self.first = first
        self.last = last
        self.length = last - first + 1 if meta.size else 0
        self.partial = partial
        self.progress = Progress()
        self._tenant = tenant
        self._cached = cached
        self._reader = reader
        self._through_cache = through_cache
        self.first_source = self._planned()
        self._read: AsyncIterator[bytes] | None = None
        self._head: bytes | None = None  # a read's first chunk, in hand before the headers
        self._stream: ObjectStream | None = None
        self._started = 0.0
        self.outcome: str | None = None

    async def __aenter__(self) -> Delivery:
        server = self._server
        self._started = server._monotonic()
        self.progress.start(self._started, self.length)
        server.observer.transfer_started("stream")
        try:
            if self._reader is not None and self.length and await self._first_read():
                return self
            if self._cached is None and self._read is None and self.length:
                stream = ObjectStream(
                    server.engine,
                    self._store,
                    self.meta.key,
                    tenant=self._tenant,
                    start=self.first,
                    end=self.last,
                    meta=self.meta,
                    early=self._early,
                )
                self._stream = await stream.__aenter__()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _first_read(self) -> bool:
        """Take the read's first chunk; False when the cache has no room for
        it (the caller streams instead)."""
        assert self._reader is not None
        self._read = self._reader.chunks(self.first, self.last)
        try:
            self._head = await anext(self._read)
        except InsufficientStorage:
            await self._close_read()
            return False
        return True

    async def _close_read(self) -> None:
        """End the read (its reader stays, closed, for its counts: `source`)."""
        read, self._read = self._read, None
        try:
            if read is not None:
                await read.aclose()  # type: ignore[attr-defined]
        finally:
            if self._reader is not None:
                await self._reader.close()  # once; a second call returns at once

    def _planned(self) -> str:
        """Where the bytes will come from, as far as is known before any moves:
        "cache", "s3", or "mixed" (a partial entry holds some of them)."""
        if self._cached is not None:
            return "cache"
        if self._reader is None:
            return "s3"
        ranges = self._reader.entry.rec.ranges
        present = sum(e - s + 1 for s, e in ranges.overlap(self.first, self.last))
        if present == 0:
            return "s3"
        return "cache" if present == self.length else "mixed"

    @property
    def source(self) -> str:
        """Where the bytes came from so far: "cache", "s3", or "mixed" (a read
        of a partial entry that held some of them)."""
        if self._cached is not None:
            return "cache"
        reader = self._reader
        from_cache, from_s3 = (reader.from_cache, reader.from_s3) if reader else (0, 0)
        if from_cache and from_s3:
            return "mixed"
        return "cache" if from_cache else "s3"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._early is not None:
                self._early.cancel()  # unused, or done with: no-op
            await self._close_read()
            if self._stream is not None:
                stream, self._stream = self._stream, None
                await stream.__aexit__(exc_type, exc, tb)
        finally:
            if self._cached is not None:
                self._cached.close()
            if exc is None and self.complete:
                self.settle("success")
            elif exc is None or isinstance(exc, asyncio.CancelledError | ConnectionError):
                self.settle("cancelled")  # the reader left, or the caller stopped reading
            else:
                self.settle("failed")

    @property
    def complete(self) -> bool:
        """Every byte of the range was handed out of this iterator."""
        return self.progress.bytes_done >= self.length

    def settle(self, outcome: str) -> None:
        """The transfer's outcome, counted once; the first call wins."""
        if self.outcome is not None:
            return
        assert outcome in _OUTCOMES
        self.outcome = outcome
        now = self._server._monotonic()
        if outcome == "success":
            verified: Iterable[str] = self._stream.verified if self._stream else ()
            rec = self._reader.entry.rec if self._reader is not None else None
            if rec is not None and self.first == 0 and self.last == self.meta.size - 1:
                verified = rec.verified if rec.state is EntryState.COMPLETE else ()
            self.progress.finish(now, verified)
        self._server.observer.transfer_finished("stream", outcome, now - self._started)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def _read_chunks(self, read: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        head, self._head = self._head, None
        return _resume(head, read)

    async def _chunks(self) -> AsyncIterator[bytes]:
        observer = self._server.observer
        if self._cached is not None:
            source: AsyncIterator[bytes] = _read_file(
                self._cached.fileno(), self.first, self.length
            )
        elif self._read is not None:
            source = self._read_chunks(self._read)  # the reader counts where bytes came from
        elif self._stream is not None:
            source = aiter(self._stream)
        else:
            return
        # A URL read's bytes by source (`read_bytes`): a whole cache file's, or
        # a stream's when the cache had no room.
        whole = (
            ("cache" if self._cached else "s3") if self._through_cache and not self._read else ""
        )
        async for chunk in source:
            self.progress.add(len(chunk))
            observer.bytes_served("stream", len(chunk))
            if whole:
                observer.read_bytes(whole, len(chunk))
            yield chunk


async def _resume(head: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _read_file(fd: int, offset: int, count: int) -> AsyncIterator[bytes]:
    """`count` bytes of a cache file from `offset`, in 1 MiB slices.

    uvloop has no loop.sendfile, so the file is read and written through the
    transport (one copy more than sendfile(2); the transport's flow control
    still paces a slow reader).
    """
    while count > 0:
        chunk = os.pread(fd, min(count, FILE_CHUNK), offset)
        if not chunk:
            raise RuntimeError(f"a cache file ended {count} bytes early")
        yield chunk
        offset += len(chunk)
        count -= len(chunk)
