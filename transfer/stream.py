"""In-order streaming of parallel ranged GETs through a bounded window: `ObjectStream`.

What runs where: `ObjectStream` owns one producer task. It fetches a short
first range at once, while the object's part layout is asked for, then cuts
the rest one range at a time, in offset order: it waits until fewer than
`Engine.stream_inflight()` of the stream's GETs run (as many as the link
needs, transfer/linkrate.py, and at least what `stream_window` holds), then in `claim` until the `StreamWindow` has room,
takes up to a part of it (never across an object part's end), and starts a
task that fetches it with `Engine.fetch_range` (retries, limiter) into a sink
that copies each received slice into the window's heap (the store's buffer is
reused, so one copy per slice is the price of reordering). The window may
grow to a part per GET in flight (`Engine.window_max`). The reader iterates
the stream and gets chunks strictly in offset order.

The window it fills (backpressure, memory bound, reassembly) is
transfer/window.py.

Early first range (docs/design.md, Streams: first bytes): `EarlyGet` sends
the first range's GET without If-Match at the same time as the job's HEAD
(transfer/objectserver.py), so the first bytes come one round trip after the
request, not two. It keeps what arrives until the stream adopts it
(`adopt`, with the ETag the HEAD answered): an answer with another ETag is
dropped before its first byte reaches the window, and the stream GETs the
range again with If-Match, as it would have without it.

Cancellation: leaving the `async with` cancels the producer task, hence its
TaskGroup and every in-flight GET. A producer error fails the window and the
reader gets it as the exception from its next iteration (after the bytes
already delivered, never wrong bytes).
"""

from __future__ import annotations

import asyncio
import bisect
from types import TracebackType

from s3feed.transfer.checksums import RangeDigest, Verifier
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    InvalidUriPath,
    NoSuchKey,
    SourceChanged,
)
from s3feed.transfer.linkrate import InflightSlots
from s3feed.transfer.retry import RetryBudget, first_error
from s3feed.transfer.store import BodySink, ObjectMeta, ObjectStore, RangeMeta
from s3feed.transfer.streammemory import MIN_WINDOW
from s3feed.transfer.window import StreamWindow

FIRST_RANGE = 1024 * 1024  # bytes of a stream's first GET


class _FirstBytes:
    """A sink that says when its first bytes arrive."""

    def __init__(self, inner: BodySink, arrived: asyncio.Event) -> None:
        self._inner, self._arrived = inner, arrived

    def write(self, offset: int, data: memoryview) -> None:
        self._inner.write(offset, data)
        self._arrived.set()


class _Enough(Exception):
    """The early GET has given the stream all the bytes it wants."""


class EarlyGet:
    """A stream's first GET, sent before the HEAD has answered (no If-Match:
    the ETag is not known yet). `start` is the range's first byte, `end` its
    last (FIRST_RANGE on from `start`, or the request's end). Its bytes are
    kept until `adopt` says where they go, or dropped by `cancel`. Holds a
    limiter slot of `owner` (the stream's) while it runs, and a grant of
    `stream_memory` for its bytes until the stream's window takes over
    (`hand_over`): with the budget spent it asks for the floor only, as the
    window would (docs/design.md, Streams: first bytes)."""

    def __init__(
        self, engine: Engine, store: ObjectStore, key: str, start: int, end: int, owner: object
    ) -> None:
        self._memory = engine.stream_memory
        want = end - start + 1
        self._grant = self._memory.take(want, min(MIN_WINDOW, want))
        end = start + self._grant - 1
        self.start, self.end, self.owner = start, end, owner
        self.pos = start  # the first byte not handed to the stream's sink
        self._etag: str | None = None  # what the GET's answer said
        self._want: str | None = None  # what the HEAD said, once adopted
        self._kept = bytearray()  # bytes from `start` before adoption
        self._sink: BodySink | None = None
        self._last = end
        self.task = asyncio.create_task(self._run(engine, store, key))
        self.task.add_done_callback(_retrieve)

    async def _run(self, engine: Engine, store: ObjectStore, key: str) -> None:
        await engine.limiter.acquire(self.owner)
        try:
            await store.get_range(
                key,
                self.start,
                self.end,
                self,
                stall_timeout=engine.config.stall_timeout,
            )
        except _Enough:
            pass
        finally:
            engine.limiter.release(self.owner)

    def answered(self, meta: RangeMeta) -> None:
        self._etag = meta.etag
        self.end = min(self.end, meta.size - 1)  # S3 answers up to the object's end
        if self._want is not None and meta.etag != self._want:
            raise SourceChanged("the early GET answered another version")

    def write(self, offset: int, data: memoryview) -> None:
        if self._etag is None:  # a store that does not say: its bytes are never used
            raise SourceChanged("the early GET's ETag is unknown")
        if self._sink is None:
            self._kept += data
            return
        self._give(offset, data)

    def _give(self, offset: int, data: memoryview) -> None:
        assert self._sink is not None
        take = min(len(data), self._last + 1 - offset)
        if take > 0:
            self._sink.write(offset, data[:take])
            self.pos = offset + take
        if self.pos > self._last and self._last < self.end:
            raise _Enough  # what it asked for goes on past the stream's first range

    def adopt(self, etag: str, sink: BodySink, last: int) -> bool:
        """The HEAD answered `etag`: hand the bytes of start..`last` (at most)
        to `sink`, now and as they arrive. False (and cancelled) when they are
        of no use: another ETag, or the GET already failed."""
        done = self.task.done()
        if (self._etag is not None and self._etag != etag) or (
            done and (self.task.cancelled() or self.task.exception() is not None)
        ):
            self.cancel()
            return False
        self._want, self._sink, self._last = etag, sink, min(last, self.end)
        kept, self._kept = self._kept, bytearray()
        if kept:
            try:
                self._give(self.start, memoryview(kept))
            except _Enough:
                self.cancel()  # the stream wants fewer bytes than were asked for
        return True

    async def finish(self) -> None:
        """Wait until the GET has ended; `pos` says how far it got (a failure
        is not raised: the stream GETs the rest with If-Match)."""
        await asyncio.wait([self.task])

    def raise_final(self) -> None:
        """Raise what the GET failed with if the same request with If-Match
        would get the same answer (a bucket in another region, access denied,
        the key gone, a range past the end): the stream fails with it rather
        than asking S3 again (docs/design.md, Streams: first bytes)."""
        if self.task.done() and not self.task.cancelled():
            exc = self.task.exception()
            if isinstance(exc, InvalidUriPath | AccessDenied | NoSuchKey | InvalidRange):
                raise exc

    def hand_over(self) -> None:
        """Give its memory grant back: the stream's window is about to take
        its own, which its bytes count in from adoption on."""
        self._memory.give(self._grant)
        self._grant = 0

    def cancel(self) -> None:
        """Drop it: the connection is closed at once, few bytes wasted."""
        self.task.cancel()
        self._kept = bytearray()
        self.hand_over()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # an early GET's failure only means a normal GET follows


def _part_end(parts: list[tuple[int, int]] | None, offset: int, end: int) -> int:
    """The last byte of the object part holding `offset` (ranges never cross
    one, so part checksums combine), or `end`."""
    if parts:
        i = bisect.bisect_right(parts, offset, key=lambda p: p[0]) - 1
        if i >= 0 and parts[i][0] <= offset <= parts[i][1]:
            return min(parts[i][1], end)
    return end


class _WindowSink:
    __slots__ = ("digest", "engine", "tenant", "window")

    def __init__(
        self, window: StreamWindow, digest: RangeDigest | None, engine: Engine, tenant: str
    ) -> None:
        self.window, self.digest, self.engine, self.tenant = window, digest, engine, tenant

    def write(self, offset: int, data: memoryview) -> None:
        if self.digest is not None:
            self.digest.update(offset, data)
        self.window.put(offset, data)
        self.engine.observer.bytes_received(self.tenant, len(data))


class ObjectStream:
    """`async with ObjectStream(engine, store, key, tenant=...) as s: async for chunk in s: ...`"""

    meta: ObjectMeta

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        key: str,
        *,
        tenant: str,
        start: int = 0,
        end: int | None = None,
        meta: ObjectMeta | None = None,
        early: EarlyGet | None = None,
    ) -> None:
        self.engine, self.store, self.key, self.tenant = engine, store, key, tenant
        self.start, self._end_req, self._meta = start, end, meta
        self._early = early if early is not None and early.start == start else None
        self.end = -1
        self.verified: list[str] = []
        self.window: StreamWindow | None = None
        self._verifier: Verifier | None = None
        self._task: asyncio.Task[None] | None = None
        self._layout: asyncio.Task[list[tuple[int, int]] | None]
        self._budget = RetryBudget(engine.config.retries)

    async def __aenter__(self) -> ObjectStream:
        engine, budget = self.engine, self._budget
        store, key = self.store, self.key
        meta = self._meta
        if meta is None:
            meta = await engine.retrying(budget, lambda: store.head(key))
        self.meta = meta
        size = meta.size
        end = size - 1 if self._end_req is None else min(self._end_req, size - 1)
        if self.start < 0 or (size > 0 and (self.start >= size or end < self.start)):
            raise InvalidRange(f"range {self.start}-{self._end_req} outside 0-{size - 1}", size)
        if size == 0 and self.start > 0:
            raise InvalidRange(f"range start {self.start} beyond an empty object", size)
        self.end = end
        config = engine.config
        length = end - self.start + 1
        if self._early is not None:
            self._early.hand_over()
        self.window = StreamWindow(
            self.start,
            end,
            max(1, min(config.part_size, config.stream_window, length)),
            engine.observer,
            memory=engine.stream_memory,
            max_capacity=max(1, min(engine.window_max(), length)),
            grow_to=engine.window_max,
        )
        if self.start == 0 and end == size - 1:  # only a whole object can be verified
            self._verifier = Verifier(
                size, meta.etag, meta.checksums, meta.checksum_type, parts_later=True
            )
        self._layout = asyncio.create_task(self._learn_layout())
        self._task = asyncio.create_task(self._produce())
        return self

    async def _learn_layout(self) -> list[tuple[int, int]] | None:
        parts, exact = await self.engine.layout(self.store, self.meta, self._budget)
        if self._verifier is not None:
            self._verifier.learn_parts(parts, exact)
        return parts

    async def _produce(self) -> None:
        window, engine, config = self.window, self.engine, self.engine.config
        assert window is not None
        if self.end < self.start:
            return  # an empty object: nothing to fetch
        early = self._early
        owner = early.owner if early is not None else object()
        slots = InflightSlots(engine.stream_inflight, engine.link)  # this stream's share of S3

        # The reader waits for the first bytes: a short first GET (S3 answers
        # a small range sooner: docs/design.md, Performance notes, First range)
        # starts at once and alone, while the part layout is asked for (it
        # shapes only the later ranges); the others
        # join once the first is flowing (or has ended well), so on a small host
        # they do not compete with it for the server and the CPU.
        first_end = await window.claim(self.start, self.end, FIRST_RANGE)
        flowing = asyncio.Event()

        async def fetch(s: int, e: int) -> None:
            try:
                digest = self._verifier.range_digest(s, e) if self._verifier else None
                sink: BodySink = _WindowSink(window, digest, engine, self.tenant)
                if s == self.start:
                    sink = _FirstBytes(sink, flowing)
                    if early is not None:
                        if early.adopt(self.meta.etag, sink, e):
                            await early.finish()
                            s = early.pos  # the rest, if it stopped short, with If-Match
                        early.raise_final()
                if s > e:
                    flowing.set()
                    return
                await engine.fetch_range(
                    self.store,
                    self.key,
                    s,
                    e,
                    sink,
                    etag=self.meta.etag,
                    budget=self._budget,
                    owner=owner,
                )
                flowing.set()  # a first range that failed starts nothing more
            finally:
                slots.release()

        async def rest(tg: asyncio.TaskGroup) -> None:
            parts = await asyncio.shield(self._layout)  # the reader may await it too
            await flowing.wait()
            cursor = first_end + 1
            # Ranges are cut and claimed in offset order, one GET each, as
            # many at once as the link needs (Engine.stream_inflight) and the
            # window holds; the window may grow to a part for each of them.
            while cursor <= self.end:
                await slots.acquire()
                try:
                    e = await window.claim(
                        cursor, _part_end(parts, cursor, self.end), config.part_size
                    )
                except BaseException:
                    slots.release()
                    raise
                tg.create_task(fetch(cursor, e))
                cursor = e + 1

        await slots.acquire()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fetch(self.start, first_end))
                tg.create_task(rest(tg))
        except BaseExceptionGroup as group:
            window.fail(first_error(group))

    def __aiter__(self) -> ObjectStream:
        return self

    async def __anext__(self) -> bytes:
        window = self.window
        if window is None:
            raise RuntimeError("iterate an ObjectStream inside `async with`")
        chunk = await window.get()
        if chunk is not None and window.next > self.end and self._verifier is not None:
            await self._layout  # a composite checksum needs the part layout
            self.verified = self._verifier.verify_crc()  # before the last byte goes out
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._early is not None:
            self._early.cancel()
        if self._task is not None:
            self._task.cancel()
            self._layout.cancel()
            await asyncio.wait([self._task, self._layout])
            if not self._task.cancelled():
                self._task.exception()  # _produce hands its errors to the window
            if not self._layout.cancelled():
                self._layout.exception()  # and the layout's, through _produce
        if self.window is not None:
            # Transfer counts and durations of streams are the API's to report
            # (daemon/api/objects.py): it also serves streams from the cache.
            self.window.close()
