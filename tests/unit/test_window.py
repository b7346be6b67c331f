"""Engine.stream and StreamWindow: order, bounded memory, retries, errors, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import InvalidRange, SourceChanged
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.stream import ObjectStream
from s3feed.transfer.window import StreamWindow, WindowState
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault


class Buffered(NullTransferObserver):
    def __init__(self) -> None:
        self.level = 0
        self.peak = 0
        self.retries: list[str] = []

    def stream_buffered(self, delta: int) -> None:
        self.level += delta
        self.peak = max(self.peak, self.level)

    def range_retry(self, reason: str) -> None:
        self.retries.append(reason)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


def engine(window: int = 2 * MiB, concurrency: int = 4) -> tuple[Engine, Buffered]:
    obs = Buffered()
    cfg = TransferConfig(part_size=MiB, concurrency=concurrency, stream_window=window)
    return Engine(cfg, obs, rng=random.Random(3), sleep=no_sleep), obs


async def settle(n: int = 2000) -> None:
    """Let every runnable task run until it blocks (yields only, no sleeping)."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_in_order_under_random_completion(seed: int) -> None:
    store = FakeObjectStore(chunk_size=50_000, rng=random.Random(seed))
    data = blob(6 * MiB + 17, seed)
    store.put("k", data, checksum="CRC32")
    eng, obs = engine()
    out = bytearray()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        assert s.meta.size == len(data) and (s.start, s.end) == (0, len(data) - 1)
        async for chunk in s:
            out += chunk
    assert sha(bytes(out)) == sha(data)
    assert s.verified == ["CRC32"]
    assert obs.level == 0 and obs.peak <= 2 * MiB


async def test_memory_stays_under_window_while_reader_stalls() -> None:
    store = FakeObjectStore(chunk_size=64 * 1024, rng=random.Random(1))
    data = blob(20 * MiB)
    store.put("k", data)
    eng, obs = engine(window=3 * MiB, concurrency=8)
    out = bytearray()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        it = aiter(s)
        out += await anext(it)
        await settle()  # the reader stalls: every producer runs until it blocks
        stalled_at = store.bytes_sent
        assert store.bytes_sent <= 3 * MiB and obs.level <= 3 * MiB
        await settle()
        assert store.bytes_sent == stalled_at  # fetching stopped, not just slowed
        async for chunk in it:
            out += chunk
            assert s.window is not None and s.window.buffered <= 3 * MiB
    assert sha(bytes(out)) == sha(data)
    assert obs.peak <= 3 * MiB and obs.level == 0


async def test_range_request_and_retries_never_duplicate_bytes() -> None:
    inner = FakeObjectStore(chunk_size=40_000, rng=random.Random(5))
    data = blob(5 * MiB)
    inner.put("k", data)
    faults = {1: Fault("reset", 100_000), 2: Fault("truncated", 5), 4: Fault("stall", 0)}
    store = FailingObjectStore(inner, faults)
    eng, obs = engine()
    out = bytearray()
    async with ObjectStream(eng, store, "k", tenant="t", start=123, end=4 * MiB) as s:
        assert (s.start, s.end) == (123, 4 * MiB)
        async for chunk in s:
            out += chunk
    assert sha(bytes(out)) == sha(data[123 : 4 * MiB + 1])
    assert sorted(obs.retries) == ["reset", "stall", "truncated"]
    assert s.verified == []  # a part of an object cannot be verified


async def test_error_after_first_byte_reaches_the_reader() -> None:
    inner = FakeObjectStore(chunk_size=64 * 1024)
    data = blob(4 * MiB)
    inner.put("k", data)
    store = FailingObjectStore(inner, {2: Fault("source_changed")})
    eng, obs = engine(concurrency=1)
    out = bytearray()
    with pytest.raises(SourceChanged):
        async with ObjectStream(eng, store, "k", tenant="t") as s:
            async for chunk in s:
                out += chunk
    assert bytes(out) == data[: len(out)] and 0 < len(out) < len(data)
    assert obs.level == 0


async def test_leaving_early_cancels_fetches() -> None:
    store = FakeObjectStore(chunk_size=64 * 1024)
    store.put("k", blob(16 * MiB))
    eng, obs = engine()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        await anext(aiter(s))
        task = s._task
    assert task is not None and task.done()
    sent = store.bytes_sent
    await settle()
    assert store.bytes_sent == sent and obs.level == 0
    assert eng.limiter._free == eng.config.global_concurrency


@pytest.mark.parametrize(("start", "end"), [(10, None), (5, 3)])
async def test_invalid_range(start: int, end: int | None) -> None:
    store = FakeObjectStore()
    store.put("k", b"0123456789")
    eng, _ = engine()
    with pytest.raises(InvalidRange) as info:
        async with ObjectStream(eng, store, "k", tenant="t", start=start, end=end):
            pass
    assert info.value.size == 10


async def test_empty_object_streams_nothing() -> None:
    store = FakeObjectStore()
    store.put("k", b"")
    eng, _ = engine()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        assert [c async for c in s] == []


async def test_window_drops_duplicates_and_refuses_unadmitted_bytes() -> None:
    w = StreamWindow(0, 9, 8, NullTransferObserver())
    w.put(4, memoryview(b"4567"))
    w.put(0, memoryview(b"0123"))
    w.put(2, memoryview(b"23456"))  # overlaps what is there
    got = b""
    while len(got) < 8:
        chunk = await w.get()
        assert chunk is not None
        got += chunk
    assert got == b"01234567"
    with pytest.raises(RuntimeError):
        w.put(8, memoryview(b"89" * 8))
    w.close()
    assert w.state is WindowState.CLOSED and w.buffered == 0
    w.fail(ValueError())  # a late producer error after close is dropped
    assert w.state is WindowState.CLOSED
    with pytest.raises(RuntimeError):
        w._transition(WindowState.OPEN)  # closed is final


class SlowProbe(FakeObjectStore):
    """Answers the part-size probe (HEAD ?partNumber=1) only after everything
    else runnable has run, and notes how many bytes S3 had sent by then."""

    def __init__(self) -> None:
        super().__init__(chunk_size=64 * 1024)
        self.sent_before_answer: int | None = None

    async def part_size(self, key: str, *, if_match: str | None = None) -> int:
        await settle()
        self.sent_before_answer = self.bytes_sent
        return await super().part_size(key, if_match=if_match)


async def test_first_bytes_do_not_wait_for_the_part_layout() -> None:
    store = SlowProbe()
    data = blob(8 * MiB, 5)
    store.put("k", data, parts=4, checksum="CRC32")  # 2 MiB parts, COMPOSITE
    eng, _ = engine()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        out = b"".join([c async for c in s])
    assert out == data
    assert store.sent_before_answer, "the first GET runs while the layout is asked for"
    assert s.verified == ["CRC32-COMPOSITE"], "the layout came later, the checksum holds"


async def test_parts_smaller_than_the_first_range_stream_unverified_not_failed() -> None:
    store = FakeObjectStore(chunk_size=64 * 1024)
    data = blob(2 * MiB + 3, 6)
    store.put("k", data, parts=7, checksum="CRC32C")  # ~300 KB parts (not AWS, but allowed)
    eng, _ = engine()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        out = b"".join([c async for c in s])
    assert out == data
    assert s.verified == [], "the first 1 MiB range spans parts: no part CRCs to combine"
