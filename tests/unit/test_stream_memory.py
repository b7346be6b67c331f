"""transfer/streammemory.py and the window's grant: one budget for all streams,
windows that start small, grow only for a waiting reader, shrink as they drain."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import pytest

from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.stream import ObjectStream
from s3feed.transfer.streammemory import MIN_WINDOW, StreamMemory
from s3feed.transfer.window import StreamWindow
from tests.fakes.store import FakeObjectStore


class Reported(NullTransferObserver):
    def __init__(self) -> None:
        self.memory: list[tuple[int, int]] = []

    def stream_memory(self, used: int, budget: int) -> None:
        self.memory.append((used, budget))


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


async def settle(n: int = 3000) -> None:
    """Let every runnable task run until it blocks (yields only, no sleeping)."""
    for _ in range(n):
        await asyncio.sleep(0)


def engine(budget: int, window: int = 8 * MiB, concurrency: int = 4) -> tuple[Engine, Reported]:
    obs = Reported()
    cfg = TransferConfig(
        part_size=MiB, concurrency=concurrency, stream_window=window, stream_memory=budget
    )
    return Engine(cfg, obs, rng=random.Random(3), sleep=no_sleep), obs


def store_with(size: int, key: str = "k", chunk: int = 64 * 1024) -> tuple[FakeObjectStore, bytes]:
    store = FakeObjectStore(chunk_size=chunk, rng=random.Random(7))
    data = random.Random(size).randbytes(size)
    store.put(key, data)
    return store, data


def test_grants_take_what_is_free_and_floors_overdraw() -> None:
    obs = Reported()
    memory = StreamMemory(3 * MiB, obs)
    assert memory.take(2 * MiB, MIN_WINDOW) == 2 * MiB
    assert memory.take(2 * MiB, MIN_WINDOW) == MiB  # what was left
    assert memory.take(2 * MiB, MIN_WINDOW) == MIN_WINDOW  # spent: the floor still
    assert (memory.used, memory.over, memory.free) == (3 * MiB + MIN_WINDOW, MIN_WINDOW, 0)
    assert memory.grow(MiB) == 0  # growth never overdraws
    memory.give(MiB)
    assert memory.grow(4 * MiB) == MiB - MIN_WINDOW
    assert obs.memory[0] == (0, 3 * MiB) and obs.memory[-1] == (3 * MiB, 3 * MiB)


async def test_a_fast_reader_grows_its_window_up_to_stream_window() -> None:
    store, data = store_with(40 * MiB)
    eng, _ = engine(budget=64 * MiB, window=8 * MiB)
    out = bytearray()
    capacities = set()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        assert s.window is not None and s.window.capacity == MiB  # a part, at first
        async for chunk in s:
            out += chunk
            capacities.add(s.window.capacity)
    assert out == data
    assert max(capacities) == 8 * MiB
    assert eng.stream_memory.used == 0  # all given back


async def test_a_reader_slower_than_s3_keeps_a_small_window() -> None:
    store, data = store_with(12 * MiB)
    eng, _ = engine(budget=64 * MiB, window=8 * MiB)
    out = bytearray()
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        assert s.window is not None
        async for chunk in s:
            out += chunk
            await settle(200)  # S3 (the fake) gets ahead of the reader every time
            assert s.window.capacity <= 2 * MiB
    assert out == data


async def hold(
    stack: AsyncExitStack, eng: Engine, store: FakeObjectStore, n: int
) -> list[ObjectStream]:
    """n streams whose readers took their first chunk and then stopped reading."""
    streams = []
    for _ in range(n):
        s = await stack.enter_async_context(ObjectStream(eng, store, "k", tenant="t"))
        await anext(aiter(s))
        streams.append(s)
    await settle()
    return streams


async def test_all_windows_together_stay_within_the_budget() -> None:
    store, _ = store_with(16 * MiB)
    eng, _ = engine(budget=8 * MiB)
    async with AsyncExitStack() as stack:
        streams = await hold(stack, eng, store, 8)  # 8 x a part: the budget
        assert eng.stream_memory.used == 8 * MiB
        assert sum(s.window.buffered for s in streams if s.window) <= 8 * MiB
        more = await hold(stack, eng, store, 10)  # beyond: each starts at the floor
        for s in more:
            assert s.window is not None and s.window.capacity == MIN_WINDOW
        assert eng.stream_memory.used <= 8 * MiB + 10 * MIN_WINDOW
    assert eng.stream_memory.used == 0


async def test_at_the_budget_a_new_stream_starts_and_the_others_shrink_as_they_drain() -> None:
    store, data = store_with(24 * MiB)
    eng, _ = engine(budget=4 * MiB, window=4 * MiB)
    memory = eng.stream_memory
    async with ObjectStream(eng, store, "k", tenant="t") as fast:
        got = bytearray()
        it = aiter(fast)
        while fast.window is not None and fast.window.capacity < 4 * MiB:
            got += await anext(it)  # a reader that waits: the window grows to the budget
        assert memory.free == 0
        async with ObjectStream(eng, store, "k", tenant="t") as late:
            assert late.window is not None and late.window.capacity == MIN_WINDOW
            assert memory.over == MIN_WINDOW
            late_out = b"".join([c async for c in late])  # the late stream completes
            assert late_out == data
        got += await anext(it)
        async for chunk in it:
            got += chunk
        assert got == data
    assert memory.used == 0


async def test_a_draining_window_gives_back_while_the_budget_is_overdrawn() -> None:
    store, data = store_with(24 * MiB)
    eng, _ = engine(budget=4 * MiB, window=4 * MiB)
    memory = eng.stream_memory
    async with ObjectStream(eng, store, "k", tenant="t") as fast:
        it = aiter(fast)
        got = bytearray()
        while fast.window is not None and fast.window.capacity < 4 * MiB:
            got += await anext(it)
        async with ObjectStream(eng, store, "k", tenant="t") as late:
            await anext(aiter(late))  # holds its floor, reads no more
            assert memory.over == MIN_WINDOW
            while memory.over:
                got += await anext(it)  # the fast one drains and gives back
            assert fast.window.capacity <= 4 * MiB - MIN_WINDOW
            assert memory.used == memory.budget
            async for chunk in it:
                got += chunk
                assert memory.used <= memory.budget
        assert got == data


@pytest.mark.parametrize("size", [0, 1, 100_000])
async def test_a_small_object_asks_for_no_more_than_its_size(size: int) -> None:
    store, data = store_with(size)
    eng, _ = engine(budget=4 * MiB)
    async with ObjectStream(eng, store, "k", tenant="t") as s:
        assert s.window is not None and s.window.capacity == max(1, size)
        assert b"".join([c async for c in s]) == data
    assert eng.stream_memory.used == 0


async def test_a_reader_waiting_when_a_claim_fills_the_window_grows_it() -> None:
    """The reader asked for bytes before the next range was claimed; the claim
    then fills the window while that range is still being fetched (or retried,
    docs/design.md, Transfers: Retries): the window now holds the reader back,
    so it grows and the range after it starts."""
    memory = StreamMemory(16 * MiB, Reported())
    w = StreamWindow(
        0, 8 * MiB - 1, MiB, NullTransferObserver(), memory=memory, max_capacity=4 * MiB
    )
    assert await w.claim(0, w.end, MiB) == MiB - 1
    w.put(0, memoryview(bytes(MiB)))
    assert await w.get() == bytes(MiB)
    reader = asyncio.ensure_future(w.get())  # the first MiB consumed; waits for more
    await settle(10)
    assert await w.claim(MiB, w.end, MiB) == 2 * MiB - 1  # the window is full now
    after = asyncio.ensure_future(w.claim(2 * MiB, w.end, MiB))
    await settle(10)
    assert after.done() and w.capacity == 2 * MiB
    w.close()
    with pytest.raises(RuntimeError, match="window closed"):
        await reader
