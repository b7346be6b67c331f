"""Reads at any offset through the cache: partial entries and read-ahead.

Design note (docs/design.md, URLs for encoders: Reads). A URL read does not
stream through a window: it reads the object's cache entry, and what is
missing is fetched with ranged GETs into the entry's part file (sparse, the
same file a fetch writes) and recorded in its sidecar, so a later read,
stream, delivery or fetch of the same ETag does not fetch those bytes again.

The shapes:
- `OpenEntry`, one per entry that has readers (the cache keeps them): the
  part file's descriptor, the pieces being fetched, and the CRCs of pieces
  that landed whole (used when the entry completes).
- `Piece`, one ranged GET into the part file. It belongs to the reader that
  started it and uses that reader's store: one job's credentials never fetch
  for another job's reader. When its reader leaves, a piece is cancelled and
  the bytes that had landed stay recorded; another reader that was waiting
  for it fetches the rest itself.
- `EntryReader`, one read of bytes first..last, in order; it takes a piece's
  bytes as they land (`Piece.written`), a chunk at a time, not once the GET ends.

Read-ahead, in the manner of mountpoint-s3's prefetcher: a reader keeps
`depth` bytes ahead of its position requested. Depth starts at FIRST_PIECE
and doubles each time the reader has to wait for S3, up to `stream_window`
(or a part per GET the link needs in flight: `Engine.window_max`), taken
from `[transfer] stream_memory` as a stream window's growth is (the bytes go
to the page cache, not the daemon's heap, but the budget still bounds what
is in flight). A new read, as ffmpeg opens after every seek,
starts small again. Pieces are cut at `part_size` boundaries and never cross
an object part, so their CRCs combine into a composite checksum.

Verification: every GET carries If-Match, so the bytes of a piece are the
ETag's. What the completion check needs is computed while pieces land, so
completing an entry does not read the whole file again (docs/design.md,
Cache: Partial entries):
- a CRC (full-object or composite): each piece keeps the CRC of the bytes it
  wrote, also when it is cut short (its reader left, its budget ran out), and
  the CRCs combine (`Algorithm.combine`); only bytes that landed before the
  entry was opened (a restart, a reader that came back) have no CRC, and
  just those ranges are read again, cut at part boundaries;
- the ETag as MD5 (a single-part object with no checksum): MD5 cannot be
  combined, so `_TrailingMd5` hashes the entry from its first byte in a
  worker thread, following the bytes present as they land (a pread from the
  page cache, off the event loop), and completion waits only for what landed
  last. Not for an SSE-KMS object, whose ETag is not an MD5;
- a multipart ETag, with no checksum, is not checked (a fetch does not
  either): its per-part MD5s would cost an MD5 of every byte.
When the last missing byte of the object lands, the entry is completed as a
fetch's is and the part file becomes the data file. The piece that
completes the entry waits for the check, so a reader of the whole object gets
its last bytes only after it, as a stream's reader does. A mismatch drops
the entry and fails its readers.

What runs where: everything on the event loop; `pwrite`/`pread` of the part
file on the loop as the cache's data path does, other file calls in the
cache's file worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from s3feed.transfer.cache.disk import EntryState, Record
from s3feed.transfer.cache.sidecar import Sidecar
from s3feed.transfer.checksums import Algorithm, RangeDigest, Verifier
from s3feed.transfer.engine import Engine, object_parts
from s3feed.transfer.errors import Cancelled, ChecksumMismatch
from s3feed.transfer.progress import RangeSet
from s3feed.transfer.retry import RetryBudget
from s3feed.transfer.store import ObjectMeta, ObjectStore
from s3feed.transfer.streammemory import MIN_WINDOW

FIRST_PIECE = 1024 * 1024  # a new read's first GET: S3 answers a small range sooner
CHUNK = 1024 * 1024  # bytes per pread handed to the reader
HASH_STEP = 8 * 1024 * 1024  # bytes the trailing MD5 hashes per thread hop
NOT_MD5_ETAGS = ("aws:kms", "aws:kms:dsse")  # x-amz-server-side-encryption whose ETag is no MD5


class EntryHost(Protocol):
    """What an open entry needs from the cache that owns it."""

    def room_for(self, entry: OpenEntry, n: int) -> Awaitable[None]:
        """Make room for `n` more bytes of `entry`, or raise InsufficientStorage."""

    def landed(self, entry: OpenEntry) -> None:
        """Bytes of `entry` landed (its size in the cache grew)."""

    def complete(self, entry: OpenEntry, store: ObjectStore) -> Awaitable[None]:
        """Every byte of `entry` is present: verify it and make it complete."""


@dataclass(eq=False)
class Piece:
    start: int
    end: int
    reader: EntryReader
    task: asyncio.Task[None] | None = None
    written: int = field(init=False)  # bytes start..written-1 are in the part file
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.written = self.start

    def wrote(self, pos: int) -> None:
        self.written = pos
        for want, fut in self.waiters:
            if pos >= want and not fut.done():
                fut.set_result(None)

    async def written_to(self, want: int) -> None:
        """Until bytes up to `want` - 1 are written, or the piece ended."""
        assert self.task is not None
        if self.written >= want or self.task.done():
            return
        waiter = (want, asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        try:
            await asyncio.wait([waiter[1], self.task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiters.remove(waiter)


class _PieceSink:
    __slots__ = ("digest", "engine", "fd", "piece", "pos", "tenant")

    def __init__(
        self, piece: Piece, fd: int, digest: RangeDigest | None, engine: Engine, tenant: str
    ) -> None:
        self.piece, self.fd, self.pos, self.digest = piece, fd, piece.start, digest
        self.engine, self.tenant = engine, tenant

    def landed(self) -> RangeDigest | None:
        """The CRC of the bytes written so far (all of them if the piece ended),
        or None when nothing landed or the object has no CRC."""
        d = self.digest
        if d is None or d.pos == d.start:
            return None
        if d.pos == d.end + 1:
            return d
        cut = RangeDigest(d.alg, d.start, d.pos - 1)
        cut.crc, cut.pos = d.crc, d.pos
        return cut

    def write(self, offset: int, data: memoryview) -> None:
        n, done = len(data), 0
        while done < n:
            done += os.pwrite(self.fd, data[done:], offset + done)
        if self.digest is not None:
            self.digest.update(offset, data)
        self.pos = offset + n
        self.engine.observer.bytes_received(self.tenant, n)
        self.piece.wrote(self.pos)


@dataclass(eq=False)
class Hashed:
    """What was hashed of an entry's bytes as they landed. The cache keeps it
    while the entry is partial, across its readers' comings and goings (ffmpeg
    reconnects after every seek), so only a restart loses it."""

    digests: dict[int, RangeDigest] = field(default_factory=dict)  # CRCs of pieces, by start
    md5: hashlib._Hash = field(default_factory=hashlib.md5)  # of bytes 0..md5_pos-1
    md5_pos: int = 0


@dataclass(eq=False)
class OpenEntry:
    rec: Record
    meta: ObjectMeta
    fd: int
    sidecar: Sidecar
    host: EntryHost
    engine: Engine
    readers: int = 0
    pieces: list[Piece] = field(default_factory=list)  # in flight, unordered
    hashed: Hashed = field(default_factory=Hashed)
    failed: BaseException | None = None
    dropped: bool = False  # the cache forgot the entry: nothing more is recorded
    closed: bool = False  # its descriptor is closed
    alg: Algorithm | None = field(init=False)  # the CRC a piece keeps, if the object has one
    md5: _TrailingMd5 | None = field(init=False)  # for an ETag that is the object's MD5
    reread: int = 0  # bytes read back from the part file by the completion check

    def __post_init__(self) -> None:
        meta = self.meta
        v = Verifier(meta.size, meta.etag, meta.checksums, meta.checksum_type, parts_later=True)
        self.alg = v.alg
        md5 = v.md5_expected is not None and meta.encryption not in NOT_MD5_ETAGS
        self.md5 = _TrailingMd5(self, v.md5_expected) if md5 and v.md5_expected else None
        if self.md5 is not None:
            self.md5.kick()  # bytes an earlier reader left

    @property
    def digests(self) -> dict[int, RangeDigest]:
        return self.hashed.digests

    @property
    def in_flight(self) -> int:
        return sum(p.end - p.start + 1 for p in self.pieces)

    def present(self, pos: int) -> int:
        """The last present byte of the run that holds `pos`, or -1."""
        for s, e in self.rec.ranges:
            if s <= pos <= e:
                return e
            if s > pos:
                break
        return -1

    def piece_at(self, pos: int) -> Piece | None:
        for p in self.pieces:
            if p.start <= pos <= p.end:
                return p
        return None

    def forget(self, piece: Piece) -> None:
        if piece in self.pieces:
            self.pieces.remove(piece)

    def part_end(self, pos: int) -> int:
        """Where a piece starting at `pos` must end at the latest: the end of
        its `part_size` block and of the object part that holds it."""
        end = (pos // self.engine.config.part_size + 1) * self.engine.config.part_size - 1
        for s, e in object_parts(self.meta, None) or ():
            if s <= pos <= e:
                return min(end, e)
        return min(end, self.meta.size - 1)

    def land(self, start: int, end: int, digest: RangeDigest | None) -> None:
        if self.dropped or end < start:
            return
        self.rec.ranges.add(start, end)
        if digest is not None and digest.pos > digest.end:
            self.digests[start] = digest
        self.sidecar.changed()
        self.host.landed(self)
        if self.md5 is not None:
            self.md5.kick()

    @property
    def whole(self) -> bool:
        return self.rec.ranges.covers(0, self.meta.size - 1) if self.meta.size else True

    def verifier(self, parts: list[tuple[int, int]] | None, exact: bool) -> Verifier:
        """A verifier for the complete entry, holding the CRCs of whole pieces
        that fit the object's parts (the rest is re-read)."""
        meta = self.meta
        v = Verifier(meta.size, meta.etag, meta.checksums, meta.checksum_type, parts, exact)
        if v.alg is None:
            return v
        for d in sorted(self.digests.values(), key=lambda d: d.start):
            if d.alg is not v.alg:
                continue
            if v.composite and not any(s <= d.start and d.end <= e for s, e in parts or ()):
                continue
            v.adopt(d)
        return v

    async def verify(self, parts: list[tuple[int, int]] | None, exact: bool) -> list[str]:
        """Check the whole entry (every byte present); the kinds verified, or
        ChecksumMismatch. Reads back only bytes no piece hashed as it landed."""
        v = self.verifier(parts, exact)
        v.md5_expected = None  # the trailing MD5's, below
        self.reread += sum(e - s + 1 for s, e in v.missing_digests())
        verified = await self.engine.verify_file(self.fd, v)
        if self.md5 is not None:
            got = await self.md5.hexdigest()
            if got != self.md5.expected:
                raise ChecksumMismatch(f"MD5 {got} does not match ETag {self.md5.expected}")
            verified.append("MD5")
        return verified

    async def stop(self) -> None:
        """Before the descriptor closes: no thread reads it any more."""
        if self.md5 is not None:
            await self.md5.stop()


class _TrailingMd5:
    """The MD5 of an entry's bytes from the first (`Hashed.md5`), kept up with
    the bytes present as they land: a worker thread preads them (from the
    page cache, just written) and hashes them, HASH_STEP at a time, off the
    event loop. Its task is never cancelled mid-step (a thread cannot be):
    `stop` asks it to end after the step it is in."""

    def __init__(self, entry: OpenEntry, expected: str) -> None:
        self.entry, self.expected = entry, expected
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._stopping = False

    @property
    def pos(self) -> int:
        return self.entry.hashed.md5_pos

    def kick(self) -> None:
        """Hash what has landed after `pos`, if that is not running already."""
        entry = self.entry
        if self._task is not None or self._stopping or self._error is not None:
            return
        if self.pos < entry.meta.size and entry.present(self.pos) >= self.pos:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        entry, hashed = self.entry, self.entry.hashed
        try:
            while not self._stopping and not entry.dropped:
                start = hashed.md5_pos
                end = entry.present(start)
                if end < start:
                    return
                end = min(end, start + HASH_STEP - 1)
                await asyncio.to_thread(self._hash, hashed.md5, start, end)
                hashed.md5_pos = end + 1
        except BaseException as exc:
            # A step cut short (cancelled) may still be hashing in its thread:
            # this MD5 cannot be trusted, and the next reader starts over.
            self._error = exc
            hashed.md5, hashed.md5_pos = hashlib.md5(), 0
            if not isinstance(exc, Exception):
                raise
        finally:
            self._task = None

    def _hash(self, md5: hashlib._Hash, start: int, end: int) -> None:
        while start <= end:
            data = os.pread(self.entry.fd, min(CHUNK, end - start + 1), start)
            if not data:
                raise RuntimeError(f"a cache part file ended at {start}, before {end}")
            md5.update(data)
            start += len(data)

    async def hexdigest(self) -> str:
        """The MD5 of the whole entry, once every byte is present."""
        entry = self.entry
        entry.reread += entry.meta.size - self.pos  # not hashed by the time it was whole
        while self.pos < entry.meta.size and self._error is None:
            self.kick()
            if (task := self._task) is None:
                raise RuntimeError(f"the MD5 of a whole entry stopped at byte {self.pos}")
            await asyncio.shield(task)  # never cancelled mid-step
        if self._error is not None:
            raise self._error
        return entry.hashed.md5.hexdigest()

    async def stop(self) -> None:
        self._stopping = True
        while (task := self._task) is not None:
            await asyncio.wait([task])


class EntryReader:
    """One read of an open entry, in order: `async for chunk in reader.chunks(first, last)`."""

    def __init__(
        self,
        entry: OpenEntry,
        store: ObjectStore,
        tenant: str,
        *,
        release: Callable[[EntryReader], Awaitable[None]],
    ) -> None:
        self.entry, self.store, self.tenant = entry, store, tenant
        engine = entry.engine
        self._engine = engine
        self._release = release
        self._budget = RetryBudget(engine.config.retries)
        self._owner = object()  # this read, for the limiter's round-robin
        self._granted = engine.stream_memory.take(FIRST_PIECE, MIN_WINDOW)
        self._fetched = RangeSet()  # bytes S3 sent for this read (its pieces, or waited for)
        self.from_cache = 0
        self.from_s3 = 0
        self._closed = False

    @property
    def depth(self) -> int:
        return max(FIRST_PIECE, self._granted)

    async def chunks(self, first: int, last: int) -> AsyncIterator[bytes]:
        entry = self.entry
        pos = first
        waited: Piece | None = None  # the read-ahead grows once per piece waited for
        while pos <= last:
            if entry.failed is not None:
                raise entry.failed
            present = entry.present(pos)
            if present < pos:
                await self._schedule(pos, min(last, pos + self.depth - 1), last)
                piece = entry.piece_at(pos)
                if piece is None:
                    continue  # landed while room was made
                assert piece.task is not None
                want = min(pos + CHUNK, piece.end + 1, last + 1)
                if piece.written < want and piece is not waited:
                    waited = piece
                    self._grow()  # the reader waits for S3: read further ahead
                await piece.written_to(want)
                if piece.task.done():
                    entry.forget(piece)  # ended: never waited for again
                    if piece.task.cancelled():
                        if piece.reader is self:
                            raise Cancelled("the read was stopped")  # the cache is closing
                        continue  # its reader left: fetch what is still missing ourselves
                    if (exc := piece.task.exception()) is not None:
                        raise exc
                    self._fetched.add(piece.start, piece.end)
                    continue
                # The bytes a piece in flight has written so far go out at
                # once, from the page cache they were just written to.
                self._fetched.add(piece.start, piece.end)
                present = piece.written - 1
            else:
                # Keep the read-ahead going while the reader takes present bytes.
                await self._schedule(present + 1, min(last, pos + self.depth - 1), last)
            end = min(present, last, pos + CHUNK - 1)
            data = os.pread(entry.fd, end - pos + 1, pos)
            if len(data) != end - pos + 1:
                raise RuntimeError(f"a cache part file ended at {pos + len(data)}, before {end}")
            if end == last and last == entry.meta.size - 1:
                # The object's last bytes go out after the entry's check (when
                # this read makes it whole), also when they were taken from
                # pieces still in flight or another piece completed the entry.
                flying = [p.task for p in entry.pieces if p.task and p.end >= first]
                if flying:
                    await asyncio.wait(flying)
                if entry.whole and entry.rec.state is EntryState.PARTIAL and not entry.failed:
                    await entry.host.complete(entry, self.store)
            if entry.failed is not None:
                raise entry.failed
            fetched = sum(e - s + 1 for s, e in self._fetched.overlap(pos, end))
            self.from_s3 += fetched
            self.from_cache += len(data) - fetched
            observer = self._engine.observer
            if fetched:
                observer.read_bytes("s3", fetched)
            if len(data) > fetched:
                observer.read_bytes("cache", len(data) - fetched)
            pos = end + 1
            yield data

    def _grow(self) -> None:
        # Up to a piece per GET the link needs in flight (docs/design.md, Transfers: In flight).
        most = max(FIRST_PIECE, self._engine.window_max())
        want = min(most, 2 * self.depth) - self._granted
        if want > 0:
            self._granted += self._engine.stream_memory.grow(want)

    async def _schedule(self, start: int, end: int, last: int) -> None:
        """Start pieces for the bytes of [start, end] that are neither present
        nor in flight. A piece is half the depth (within a part), and may
        reach beyond `end` up to `last` for that: a reader taking 1 MiB at a
        time must not cut the read-ahead into 1 MiB GETs."""
        entry = self.entry
        size = min(self._engine.config.part_size, max(FIRST_PIECE, self.depth // 2))
        pos = start
        while pos <= end and not entry.dropped:
            present = entry.present(pos)
            if present >= pos:
                pos = present + 1
                continue
            piece = entry.piece_at(pos)
            if piece is not None:
                pos = piece.end + 1
                continue
            stop = min(last, pos + size - 1, entry.part_end(pos))
            for s, _e in entry.rec.ranges:
                if s > pos:
                    stop = min(stop, s - 1)
                    break
            for p in entry.pieces:
                if p.start > pos:
                    stop = min(stop, p.start - 1)
            await entry.host.room_for(entry, stop - pos + 1)
            if entry.present(pos) >= pos or entry.piece_at(pos) is not None:
                continue  # another reader got there while room was made
            self._start(pos, stop)
            pos = stop + 1

    def _start(self, start: int, end: int) -> None:
        entry = self.entry
        piece = Piece(start, end, self)
        entry.pieces.append(piece)
        self._fetched.add(start, end)  # S3 sends these for this read
        piece.task = asyncio.create_task(self._fetch(piece))
        # Not in the task's `finally`: a task cancelled before it first runs never gets there.
        piece.task.add_done_callback(lambda task: _ended(entry, piece, task))

    async def _fetch(self, piece: Piece) -> None:
        entry, engine = self.entry, self._engine
        digest = RangeDigest(entry.alg, piece.start, piece.end) if entry.alg is not None else None
        sink = _PieceSink(piece, entry.fd, digest, engine, self.tenant)
        try:
            await engine.fetch_range(
                self.store,
                entry.meta.key,
                piece.start,
                piece.end,
                sink,
                etag=entry.meta.etag,
                budget=self._budget,
                owner=self._owner,
            )
        except BaseException:
            entry.land(piece.start, sink.pos - 1, sink.landed())  # what landed stays
            raise
        entry.land(piece.start, piece.end, sink.landed())
        if entry.whole and entry.rec.state is EntryState.PARTIAL:
            await entry.host.complete(entry, self.store)

    async def close(self) -> None:
        """Cancel this read's pieces (what landed stays) and give back its grant."""
        if self._closed:
            return
        self._closed = True
        mine = [p.task for p in self.entry.pieces if p.reader is self and p.task is not None]
        for task in mine:
            task.cancel()
        if mine:
            await asyncio.wait(mine)
        self._engine.stream_memory.give(self._granted)
        self._granted = 0
        await self._release(self)


def _ended(entry: OpenEntry, piece: Piece, task: asyncio.Task[None]) -> None:
    """A piece's task ended: it is no longer waited for. Its failure is its
    waiting reader's to raise; read-ahead nobody reached fails quietly."""
    entry.forget(piece)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved
