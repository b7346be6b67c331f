"""The ranged-GET engine: parallel, retried, verified downloads of one object.

What runs where: everything runs on the daemon's one event loop. A download
is one task (the caller's) that HEADs the object, plans ranges, then starts
one task per range in an `asyncio.TaskGroup`, each once fewer than
`Engine.inflight()` of the transfer's run (transfer/linkrate.py: as many as
it takes to reach `target_throughput` at the per-connection rate the engine
has seen); each waits for a slot of the engine-wide `FairLimiter`, and GETs the
range with If-Match into a sink that `os.pwrite`s each received slice at its
offset. Nothing holds a part in memory: the store's receive buffer (one per
connection) is the only body memory, so a download costs O(GETs in flight) x
1 MiB whatever the object size. Streams (transfer/window.py) use the same
`fetch_range` with a sink into their bounded window. A GET of half a part or
more that ends well is a sample of the per-connection rate (`LinkRate`), and
one of a part or more gives one half a part in as well.

Who waits on whom: workers wait on the limiter, then on the store. The
limiter shares `global_concurrency` between the transfers competing for it
(`FairLimiter`): each is entitled to ceil(global / transfers), a download
from its start on (it `join`s before its HEAD; a caller that HEADs first may
join it earlier and pass it as `owner`); freed slots go round-robin to
transfers under their share first, and a transfer takes more than its share
only while no one under theirs waits and the transfers still in their HEAD
keep theirs. So a 100-range transfer cannot starve a 1-range one, 32 fetches
started together hold one GET each from the first instead of the first few
holding all 32, and one transfer alone takes its whole count. A range that fails with TransientError is retried from the first
byte not yet received, spending one unit of its own `RetryBudget` (each range
has `retries`, and SlowDowns 8 more); when a range's budget is spent the transfer
fails with S3Unavailable naming the last cause. Before each attempt a range
waits out the transfer's shared `Backoff` (transfer/retry.py), which every
transient failure lengthens, so one range told to slow down pauses them all.
SourceChanged, AccessDenied, NoSuchKey and InvalidRange are final at once. A
checksum mismatch re-downloads the whole object once, then is final.

Cancellation spreads by ownership: cancelling the download task cancels its
TaskGroup, hence every worker and its in-flight GET; a worker that fails
cancels its siblings the same way. Limiter slots are released in `finally`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from s3feed.transfer.checksums import RangeDigest, Verifier, etag_parts
from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.errors import ChecksumMismatch, TransientError
from s3feed.transfer.fairshare import FairLimiter
from s3feed.transfer.linkrate import MIN_DOWNLOAD, InflightSlots, LinkRate
from s3feed.transfer.observer import NullTransferObserver, TransferObserver
from s3feed.transfer.progress import Progress, RangeSet
from s3feed.transfer.retry import Backoff, RetryBudget, first_error
from s3feed.transfer.store import BodySink, ObjectMeta, ObjectStore
from s3feed.transfer.streammemory import StreamMemory

T = TypeVar("T")
RANGES_PER_CONNECTION = 4  # a cache fetch's ranges grow only while each connection gets this many


def object_parts(meta: ObjectMeta, part_size: int | None) -> list[tuple[int, int]] | None:
    """The object's own part layout for a `-N` ETag: exact when `part_size` is
    S3's size of part 1, else guessed (ceil(size/N), rounded up to a MiB when
    that still gives N parts, as uploaders use MiB multiples). None if the
    guess cannot be right."""
    n = etag_parts(meta.etag)
    if n is None or meta.size == 0:
        return None
    if part_size is None:
        part_size = -(-meta.size // n)
        rounded = -(-part_size // (1 << 20)) << 20
        if (n - 1) * rounded < meta.size <= n * rounded:
            part_size = rounded
    layout = [(s, min(s + part_size, meta.size) - 1) for s in range(0, meta.size, part_size)]
    return layout if len(layout) == n else None


def plan_ranges(
    start: int,
    end: int,
    unit: int,
    parts: list[tuple[int, int]] | None,
    *,
    join_parts: bool = False,
) -> list[tuple[int, int]]:
    """Ranges of at most `unit` bytes covering [start, end], cut at part
    boundaries; with `join_parts`, consecutive parts share a range while it
    stays within `unit` (a range then starts on a part boundary, ends on one
    or at a cut inside an oversized part)."""
    spans = parts if parts is not None else [(start, end)]
    out: list[tuple[int, int]] = []
    for ps, pe in spans:
        s, e = max(ps, start), min(pe, end)
        if join_parts and out and s <= e and out[-1][1] + 1 == s and e - out[-1][0] < unit:
            out[-1] = (out[-1][0], e)
            continue
        while s <= e:
            out.append((s, min(s + unit - 1, e)))
            s += unit
    return out


def range_size(config: TransferConfig, size: int, inflight: int) -> int:
    """A cache fetch's GET size for an object of `size` bytes: part_size, grown
    in whole parts up to max_range while each of the transfer's `inflight`
    connections still gets RANGES_PER_CONNECTION ranges (docs/design.md,
    Transfers: Ranges)."""
    parts = size // (inflight * RANGES_PER_CONNECTION * config.part_size)
    return config.part_size * max(1, min(parts, config.max_range // config.part_size))


def tail_cut(s: int, e: int, unstarted: int, free: int, least: int) -> int:
    """Where a range about to start ends: [s, e] whole, unless the bytes not
    yet started (`unstarted`, this range's included) spread over the `free`
    GET slots (this one and those not busy) give each less. Then a whole
    number of MiB of that share, never under `least` (docs/design.md,
    Transfers: Ranges, the tail)."""
    share = max(least, -(-unstarted // max(1, free)))
    share = -(-share // MiB) * MiB
    return e if e - s + 1 <= share else s + share - 1


async def run_inflight(
    slots: InflightSlots,
    ranges: list[tuple[int, int]],
    fn: Callable[[int, int], Awaitable[None]],
    *,
    tail: int | None = None,
) -> None:
    """Run fn over ranges, in order, each in a task of a TaskGroup started once
    `slots` has room; the first failure cancels the rest and is raised as itself.
    With `tail`, a range is cut as it starts where the bytes left would give
    each GET in flight less (`tail_cut`, at least `tail` bytes), so the last
    GETs end together rather than in a wave of whole ranges."""

    async def run(s: int, e: int) -> None:
        try:
            await fn(s, e)
        finally:
            slots.release()

    pending = collections.deque(ranges)
    unstarted = sum(e - s + 1 for s, e in ranges)
    try:
        async with asyncio.TaskGroup() as tg:
            while pending:
                await slots.acquire()
                s, e = pending.popleft()
                if tail is not None:
                    free = slots.limit() - slots.active + 1  # this GET's slot and the idle ones
                    cut = tail_cut(s, e, unstarted, free, tail)
                    if cut < e:
                        pending.appendleft((cut + 1, e))
                        e = cut
                unstarted -= e - s + 1
                tg.create_task(run(s, e))
    except BaseExceptionGroup as group:
        raise first_error(group) from None


class _FileSink:
    """pwrite()s each slice at its offset; says which bytes have landed every
    `unit` bytes, so progress is recorded per part, not per range."""

    __slots__ = (
        "digest",
        "fd",
        "landed",
        "observer",
        "pos",
        "progress",
        "reported",
        "tenant",
        "unit",
    )

    def __init__(
        self,
        fd: int,
        start: int,
        digest: RangeDigest | None,
        progress: Progress,
        observer: TransferObserver,
        tenant: str,
        landed: Callable[[int, int], None] | None = None,
        unit: int = 0,
    ) -> None:
        self.fd, self.pos, self.digest = fd, start, digest
        self.progress, self.observer, self.tenant = progress, observer, tenant
        self.landed, self.unit, self.reported = landed, unit, start

    def write(self, offset: int, data: memoryview) -> None:
        n = len(data)
        done = 0
        while done < n:
            done += os.pwrite(self.fd, data[done:], offset + done)
        if self.digest is not None:
            self.digest.update(offset, data)
        self.pos = offset + n
        self.progress.add(n)
        self.observer.bytes_received(self.tenant, n)
        if self.landed is not None and self.pos - self.reported >= self.unit:
            self.landed(self.reported, self.pos - 1)
            self.reported = self.pos


class Engine:
    def __init__(
        self,
        config: TransferConfig,
        observer: TransferObserver | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.observer: TransferObserver = observer or NullTransferObserver()
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.monotonic = monotonic
        self.limiter = FairLimiter(config.global_concurrency)
        self.stream_memory = StreamMemory(config.stream_memory, self.observer)
        self.link = LinkRate()
        self.flowing = 0  # GETs holding a limiter slot

    def inflight(self) -> int:
        """GETs one transfer keeps in flight now: `concurrency` if set, else what
        reaches `target_throughput` at the per-connection rate seen
        (transfer/linkrate.py); within `global_concurrency` (docs/design.md,
        Transfers: In flight)."""
        config = self.config
        n = config.concurrency or self.link.count(config.target_throughput / 8)
        return max(1, min(n, config.global_concurrency))

    def download_inflight(self) -> int:
        """A cache fetch's GETs in flight: `inflight()`, but never fewer than
        MIN_DOWNLOAD (within `global_concurrency`) unless `concurrency` is set:
        it holds no window, and where the host is the limit 4 GETs ran faster
        and cheaper than the 2-3 the estimate gives (docs/design.md,
        Performance notes: GETs in flight)."""
        config = self.config
        if config.concurrency:
            return self.inflight()
        return max(self.inflight(), min(MIN_DOWNLOAD, config.global_concurrency))

    def stream_inflight(self) -> int:
        """A stream's GETs in flight: `inflight()`, but never fewer than its
        `stream_window` holds parts (the window bounds them anyway): where one
        GET runs at the host's pace, fewer connections bring smaller slices,
        each a wakeup and a chunk for the reader (docs/design.md, Performance
        notes: GETs in flight)."""
        config = self.config
        if config.concurrency:
            return self.inflight()
        return max(self.inflight(), config.stream_window // config.part_size)

    def window_max(self) -> int:
        """The most a stream's window (or a URL read's read-ahead) may grow to:
        `stream_window`, or once a rate has been seen, room for a part per GET
        the link needs in flight, never more than all of `stream_memory` (it
        grows from free budget only). A fixed `concurrency` keeps `stream_window`."""
        config = self.config
        if config.concurrency or self.link.per_connection is None:
            return config.stream_window
        return max(
            config.stream_window, min(self.inflight() * config.part_size, config.stream_memory)
        )

    def _backoff(self, budget: RetryBudget) -> Backoff:
        """The transfer's backoff; a budget that has none yet gets one here."""
        if budget.backoff is None:
            budget.backoff = Backoff(self.rng, self.sleep, self.monotonic)
        return budget.backoff

    async def retrying(self, budget: RetryBudget, fn: Callable[[], Awaitable[T]]) -> T:
        """Run fn once the transfer's backoff allows, retrying TransientError
        on `budget` (docs/design.md, Transfers: Retries)."""
        backoff = self._backoff(budget)
        while True:
            await backoff.wait()
            ticket = backoff.ticket()
            try:
                result = await fn()
            except TransientError as exc:
                budget.spend(exc)
                self.observer.range_retry(exc.reason)
                backoff.failed(ticket)
                continue
            backoff.succeeded(ticket)
            return result

    async def fetch_range(
        self,
        store: ObjectStore,
        key: str,
        start: int,
        end: int,
        sink: BodySink,
        *,
        etag: str,
        budget: RetryBudget,
        owner: object,
    ) -> None:
        """GET [start, end] into sink exactly once per byte, retrying from the
        first byte not yet delivered on a budget of its own (`budget.for_range`,
        sharing the transfer's backoff); holds a limiter slot only while a GET
        runs. The GET is a sample of the per-connection rate half a part in (if
        it has a part or more) and when it ends well (if it had half a part)."""
        self._backoff(budget)
        pos = start
        half = self.config.part_size // 2
        began, sent_from, flowing_then = 0.0, start, 0
        probe_at = end + 1  # where a long GET takes a sample before its end
        engine = self

        def sample(ended: int) -> None:
            # From the request to the latest byte, round trip included: what
            # a GET in flight carries (docs/design.md, Transfers: In flight).
            # `ended` is 1 once the GET no longer counts itself as flowing.
            flowing = (flowing_then + engine.flowing + ended) / 2
            engine.link.sample(pos - sent_from, engine.monotonic() - began, flowing)
            rate = engine.link.per_connection
            if rate is not None:
                engine.observer.link_estimate(rate, engine.inflight())

        class _Tracking:
            def write(self, offset: int, data: memoryview) -> None:
                nonlocal pos, probe_at
                sink.write(offset, data)
                pos = offset + len(data)
                if pos >= probe_at:  # half a part into a long GET: learn before it ends
                    probe_at = end + 1
                    sample(0)

        tracking = _Tracking()

        async def attempt() -> None:
            nonlocal began, sent_from, flowing_then, probe_at
            await self.limiter.acquire(owner)
            self.flowing += 1
            flowing_then, began, sent_from = self.flowing, self.monotonic(), pos
            # A GET of a part or more is sampled half a part in, and at its end.
            probe_at = pos + half if end + 1 - pos >= 2 * half else end + 1
            try:
                await store.get_range(
                    key,
                    pos,
                    end,
                    tracking,
                    if_match=etag,
                    stall_timeout=self.config.stall_timeout,
                )
            finally:
                self.flowing -= 1
                self.limiter.release(owner)
            if pos <= end:
                raise TransientError(f"body ended at {pos}, expected up to {end}", "truncated")
            # A GET under half a part (a stream's first, a read's first pieces)
            # is mostly its round trip: no sample.
            if pos - sent_from >= half:
                sample(1)

        await self.retrying(budget.for_range(), attempt)

    async def layout(
        self, store: ObjectStore, meta: ObjectMeta, budget: RetryBudget
    ) -> tuple[list[tuple[int, int]] | None, bool]:
        """The object's part layout and whether it is exact (see object_parts)."""
        if etag_parts(meta.etag) is None:
            return None, False

        async def ask() -> int | None:
            return await store.part_size(meta.key, if_match=meta.etag)

        part_size = await self.retrying(budget, ask)
        exact = object_parts(meta, part_size) if part_size is not None else None
        return (exact, True) if exact is not None else (object_parts(meta, None), False)

    async def download(
        self,
        store: ObjectStore,
        key: str,
        fd: int,
        *,
        tenant: str,
        progress: Progress,
        meta: ObjectMeta | None = None,
        skip: RangeSet | None = None,
        on_range_done: Callable[[int, int], None] | None = None,
        owner: object | None = None,
    ) -> ObjectMeta:
        """Download `key` into `fd` (pwrite at offsets; the file is not resized
        or synced here). `owner`: the transfer for the limiter, if its caller
        joined it earlier (`self.limiter.joined`, e.g. before its own HEAD); else
        a new one, joined here. Bytes in `skip` are already in the file; it is read
        again before each range is fetched, so bytes another writer (a URL
        read: transfer/cache/reads.py) adds to it meanwhile are not fetched
        twice. `on_range_done(start, end)` says which bytes have landed, at
        least once per `part_size` (docs/design.md, Cache: Atomic completion)."""
        started = self.monotonic()
        self.observer.transfer_started("cache")
        outcome = "failed"
        owner = object() if owner is None else owner  # competing from its HEAD on
        try:
            with self.limiter.joined(owner):
                meta = await self._download(
                    store, key, fd, tenant, progress, meta, skip, on_range_done, owner
                )
            outcome = "success"
            return meta
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.observer.transfer_finished("cache", outcome, self.monotonic() - started)

    async def _download(
        self,
        store: ObjectStore,
        key: str,
        fd: int,
        tenant: str,
        progress: Progress,
        meta: ObjectMeta | None,
        skip: RangeSet | None,
        on_range_done: Callable[[int, int], None] | None,
        owner: object,
    ) -> ObjectMeta:
        budget = RetryBudget(self.config.retries)
        if meta is None:
            meta = await self.retrying(budget, lambda: store.head(key))
        parts, exact = await self.layout(store, meta, budget)
        # Each attempt starts its digests afresh.
        new_verifier = functools.partial(
            Verifier, meta.size, meta.etag, meta.checksums, meta.checksum_type, parts, exact
        )
        verifier = new_verifier()
        ranges = plan_ranges(
            0,
            meta.size - 1,
            range_size(self.config, meta.size, self.download_inflight()),
            parts,
            join_parts=not verifier.composite,  # a composite checksum needs each part's own CRC
        )
        done = RangeSet(skip or ())
        part = self.config.part_size
        first_md5: str | None = None
        for attempt in range(2):
            if attempt:
                verifier = new_verifier()
            todo = [m for r in ranges for m in done.missing(*r)]
            progress.start(self.monotonic(), meta.size, meta.size - sum(e - s + 1 for s, e in todo))

            async def fetch(
                s: int, e: int, verifier: Verifier = verifier, live: RangeSet | None = skip
            ) -> None:
                for ms, me in live.missing(s, e) if live is not None else [(s, e)]:
                    digest = verifier.range_digest(ms, me)
                    sink = _FileSink(
                        fd, ms, digest, progress, self.observer, tenant, on_range_done, part
                    )
                    await self.fetch_range(
                        store, key, ms, me, sink, etag=meta.etag, budget=budget, owner=owner
                    )
                    if on_range_done is not None and sink.reported <= me:
                        on_range_done(sink.reported, me)

            await run_inflight(
                InflightSlots(self.download_inflight, self.link), todo, fetch, tail=part // 2
            )
            try:
                verified = await self.verify_file(fd, verifier)
            except ChecksumMismatch as exc:
                if attempt == 1 and verifier.md5_got is not None and verifier.md5_got == first_md5:
                    # The same bytes twice: the ETag is not an MD5 (SSE-KMS, SSE-C).
                    progress.finish(self.monotonic(), [])
                    return meta
                if attempt == 1:
                    raise
                first_md5 = verifier.md5_got
                budget.spend(TransientError(exc.message, "checksum"))
                self.observer.range_retry("checksum")
                done, skip = RangeSet(), None  # every byte again, whoever wrote it
                continue
            progress.finish(self.monotonic(), verified)
            return meta
        raise AssertionError("unreachable")

    async def verify_file(self, fd: int, verifier: Verifier) -> list[str]:
        """Verify what can be: CRCs by combining range CRCs (re-reading only
        ranges that were on disk before this run), MD5 by re-reading the file."""
        missing = verifier.missing_digests()
        if missing:

            def reread() -> None:
                parts = verifier.parts if verifier.composite else None
                for s, e in missing:
                    for cs, ce in plan_ranges(s, e, 1 << 20, parts):  # never across a part
                        digest = verifier.range_digest(cs, ce)
                        assert digest is not None
                        digest.update(cs, memoryview(os.pread(fd, ce - cs + 1, cs)))

            await asyncio.to_thread(reread)
        kinds = verifier.verify_crc()
        if verifier.md5_expected is not None:

            def md5() -> str:
                h = hashlib.md5()
                for off in range(0, verifier.size, 1 << 20):
                    h.update(os.pread(fd, 1 << 20, off))
                return h.hexdigest()

            got = verifier.md5_got = await asyncio.to_thread(md5)
            if got != verifier.md5_expected:
                raise ChecksumMismatch(f"MD5 {got} does not match ETag {verifier.md5_expected}")
            kinds.append("MD5")
        return kinds
