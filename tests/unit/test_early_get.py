"""A stream's first GET goes out with the HEAD (docs/design.md, Streams: first
bytes): one round trip to the first byte, never another version's bytes,
nothing before the HEAD's 200, no early GET for a cached object."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import AccessDenied, NoSuchKey, SourceChanged
from s3feed.transfer.objectserver import ObjectServer
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.store import BodySink, ObjectMeta, RangeMeta
from s3feed.transfer.stream import EarlyGet
from s3feed.transfer.streammemory import MIN_WINDOW
from tests.fakes.store import FakeObjectStore, Pace

RTT = 1.0  # fake seconds: each request's round trip


class Served(NullTransferObserver):
    def __init__(self) -> None:
        self.served = 0

    def bytes_served(self, mode: str, n: int) -> None:
        self.served += n


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ObjectServer]:
    seen = Served()
    engine = Engine(TransferConfig(part_size=MiB, concurrency=4), seen, sleep=no_sleep)
    cache = Cache(CacheConfig(dir=tmp_path / "cache", max_size=1 << 40, min_free=0), engine, seen)
    await cache.start()
    yield ObjectServer(engine, cache, seen)
    await cache.close()


async def first_chunk_at(
    server: ObjectServer, store: FakeObjectStore, early: tuple[int, int | None] | None
) -> tuple[float, bytes]:
    """The fake clock when the first body byte arrived (the GETs overlap
    the reader's turns, so its own time would count later GETs), and every
    byte."""
    pace = store.pace
    assert pace is not None
    delivery = await server.open(
        store, "k", tenant="t", choose_range=lambda meta: None, early_range=early
    )
    out = bytearray()
    async with delivery:
        async for chunk in delivery:
            out += chunk
    assert pace.first_body is not None
    return pace.first_body, bytes(out)


async def read(server: ObjectServer, store: object, rng=None, early=(0, None)) -> bytes:
    delivery = await server.open(
        store,  # type: ignore[arg-type]
        "k",
        tenant="t",
        choose_range=lambda meta: rng,
        early_range=early,
    )
    out = bytearray()
    async with delivery:
        async for chunk in delivery:
            out += chunk
    return bytes(out)


async def test_first_bytes_come_one_round_trip_after_the_request(server: ObjectServer) -> None:
    data = random.Random(1).randbytes(3 * MiB)
    # A link fast enough that only the round trips count.
    before = FakeObjectStore(pace=Pace(1e18, rtt=RTT))
    before.put("k", data, parts=3)
    at, out = await first_chunk_at(server, before, None)
    assert out == data and at == pytest.approx(2 * RTT)  # HEAD, then GET

    after = FakeObjectStore(pace=Pace(1e18, rtt=RTT))
    after.put("k", data, parts=3)
    at, out = await first_chunk_at(server, after, (0, None))
    assert out == data and at == pytest.approx(RTT)  # HEAD and GET together
    assert after.get_calls == before.get_calls  # the early GET was the first range's


async def test_a_range_from_n_starts_its_early_get_at_n(server: ObjectServer) -> None:
    data = random.Random(2).randbytes(3 * MiB)
    store = FakeObjectStore(pace=Pace(1e18, rtt=RTT))
    store.put("k", data)
    n = MiB + 17
    out = await read(server, store, (n, len(data) - 1), early=(n, None))
    assert out == data[n:] and store.get_calls == 2  # 1 MiB early, then the rest


class Collect:
    def __init__(self) -> None:
        self.got = bytearray()
        self.next = -1

    def write(self, offset: int, data: memoryview) -> None:
        assert self.next in (-1, offset)
        self.got += data
        self.next = offset + len(data)


@pytest.mark.parametrize("adopt_first", [True, False])
async def test_an_early_get_gives_only_up_to_the_last_byte_wanted(
    server: ObjectServer, adopt_first: bool
) -> None:
    """Adopted before or after its bytes came, it hands start..last over and
    stops there (the stream's first range may be shorter than it asked)."""
    data = random.Random(3).randbytes(MiB)
    store = FakeObjectStore(chunk_size=4096)
    etag = store.put("k", data)
    early = EarlyGet(server.engine, store, "k", 100, MiB - 1, object())
    sink = Collect()
    if adopt_first:
        assert early.adopt(etag, sink, 10_000)
    else:
        await early.finish()
        assert early.adopt(etag, sink, 10_000)
    await early.finish()
    assert bytes(sink.got) == data[100:10_001] and early.pos == 10_001


async def test_an_early_get_with_stream_memory_spent_asks_for_the_floor_and_gives_it_back(
    server: ObjectServer,
) -> None:
    """Its bytes come out of `stream_memory` like a window's: with the budget
    spent it asks for MIN_WINDOW, not FIRST_RANGE (100 such streams held 20
    MiB more RSS than the budget says), and the grant is back once it is
    dropped or handed over to the stream's window."""
    memory = server.engine.stream_memory
    memory.take(memory.budget, 0)  # spent by other streams
    spent = memory.used
    store = FakeObjectStore()
    etag = store.put("k", random.Random(4).randbytes(2 * MiB))
    early = EarlyGet(server.engine, store, "k", 0, MiB - 1, object())
    assert early.end == MIN_WINDOW - 1
    assert memory.used == spent + MIN_WINDOW
    await early.finish()
    sink = Collect()
    assert early.adopt(etag, sink, MiB - 1)
    assert len(sink.got) == MIN_WINDOW
    early.cancel()
    assert memory.used == spent
    handed = EarlyGet(server.engine, store, "k", 0, MiB - 1, object())
    handed.hand_over()
    handed.cancel()  # the window took over: nothing is given back twice
    assert memory.used == spent


async def test_an_early_get_of_another_etag_is_not_adopted(server: ObjectServer) -> None:
    store = FakeObjectStore()
    store.put("k", b"x" * 1000)
    early = EarlyGet(server.engine, store, "k", 0, 999, object())
    await early.finish()
    sink = Collect()
    assert not early.adopt('"another"', sink, 999)
    assert sink.got == b"" and early.pos == 0


class GetSeen(FakeObjectStore):
    """`got` is set once a GET has had its whole answer."""

    def __init__(self) -> None:
        super().__init__()
        self.got = asyncio.Event()

    async def get_range(
        self, key: str, start: int, end: int | None, sink: BodySink, **kw: object
    ) -> RangeMeta:
        answer = await super().get_range(key, start, end, sink, **kw)  # type: ignore[arg-type]
        self.got.set()
        return answer


class HeadSees(GetSeen):
    """The object is overwritten around the HEAD: `after_head` replaces it
    once the HEAD has looked (the GET then sees the new one); `before_head`
    holds the HEAD until the early GET has answered, then replaces it (the
    GET saw the old one)."""

    def __init__(self, new: bytes, *, before_head: bool) -> None:
        super().__init__()
        self.new, self.before_head = new, before_head

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        if self.before_head and self.head_calls == 0:
            await self.got.wait()
            self.overwrite(key, self.new)
        meta = await super().head(key, if_match=if_match)
        if not self.before_head and self.head_calls == 1:
            self.overwrite(key, self.new)
        return meta


async def test_a_newer_version_seen_by_the_early_get_is_never_served(
    server: ObjectServer,
) -> None:
    old, new = b"o" * (2 * MiB), b"n" * (2 * MiB)
    store = HeadSees(new, before_head=False)
    store.put("k", old)
    served_before = server.observer.served  # type: ignore[attr-defined]
    with pytest.raises(SourceChanged):  # HEAD said old; the If-Match GET meets new
        await read(server, store)
    assert server.observer.served == served_before  # type: ignore[attr-defined]


async def test_an_older_version_seen_by_the_early_get_is_fetched_again(
    server: ObjectServer,
) -> None:
    old, new = b"o" * (2 * MiB), b"n" * (2 * MiB)
    store = HeadSees(new, before_head=True)
    store.put("k", old)
    assert await read(server, store) == new  # the early GET's old bytes dropped
    assert store.get_calls == 3  # early (dropped), first range again, the rest


class GetWaits(FakeObjectStore):
    """The early GET's answer waits for `go`: the HEAD answers first."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()

    async def get_range(
        self, key: str, start: int, end: int | None, sink: BodySink, **kw: object
    ) -> RangeMeta:
        if self.get_calls == 0:
            self.waiting.set()
            await self.go.wait()
        return await super().get_range(key, start, end, sink, **kw)  # type: ignore[arg-type]


async def test_an_early_answer_of_another_etag_after_adoption_is_refused(
    server: ObjectServer,
) -> None:
    """The stream has taken the early GET before its answer came: the answer's
    ETag is checked before its first byte."""
    store = GetWaits()
    store.put("k", b"o" * MiB * 2)
    delivery = await server.open(
        store, "k", tenant="t", choose_range=lambda meta: None, early_range=(0, None)
    )
    with pytest.raises(SourceChanged):
        async with delivery:
            await store.waiting.wait()
            store.overwrite("k", b"n" * MiB * 2)
            store.go.set()
            async for _ in delivery:
                pytest.fail("a byte of another version was served")


async def test_a_cached_object_gets_no_early_get(server: ObjectServer) -> None:
    data = random.Random(4).randbytes(2 * MiB)
    store = FakeObjectStore()
    store.put("k", data)
    auth = await server.authorise(store, "k")
    await server.fetch(auth, tenant="t", owner="j", readers=frozenset(), progress=Progress())
    gets = store.get_calls
    assert await read(server, store) == data
    assert await read(server, store, (5, 9), early=(5, 9)) == data[5:10]
    assert store.get_calls == gets  # both from the cache, no GET at all


async def test_an_object_not_in_the_cache_gets_one(server: ObjectServer) -> None:
    data = random.Random(5).randbytes(MiB // 2)
    store = FakeObjectStore()
    store.put("k", data)
    assert await read(server, store) == data
    assert store.get_calls == 1  # the early GET was the stream's only GET
    assert store.bytes_sent == len(data)  # and it ran to its end (its connection kept)
    store.put("k", data[::-1])  # a new version: not in the cache either
    assert await read(server, store) == data[::-1]
    assert store.get_calls == 2


class HeadFails(GetSeen):
    """Its HEAD answers `error` once the early GET has had its whole answer."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        await self.got.wait()
        raise self.error


@pytest.mark.parametrize("error", [AccessDenied("Access Denied"), NoSuchKey("no such key")])
async def test_a_failed_head_serves_nothing_though_the_get_worked(
    server: ObjectServer, error: Exception
) -> None:
    store = HeadFails(error)
    store.put("k", b"x" * MiB)
    with pytest.raises(type(error)):
        await read(server, store)
    assert store.get_calls == 1 and store.bytes_sent == MiB  # the GET had it all...
    assert server.observer.served == 0  # type: ignore[attr-defined]  # ...none of it served


async def test_a_suffix_range_sends_no_early_get(server: ObjectServer) -> None:
    store = FakeObjectStore(pace=Pace(1e18, rtt=RTT))
    store.put("k", b"abcdef")
    delivery = await server.open(
        store, "k", tenant="t", choose_range=lambda meta: (4, 5), early_range=None
    )
    assert store.get_calls == 0
    async with delivery:
        assert b"".join([c async for c in delivery]) == b"ef"
