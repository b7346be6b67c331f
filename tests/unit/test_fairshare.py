"""Transfers competing for `global_concurrency` share it (transfer/fairshare.py:
FairLimiter; docs/design.md, Transfers: In flight), on a fake store paced by a
fake clock (tests/fakes/store.py: `Pace`), never wall time: every GET runs at
the per-connection rate, so the link carries the rate x GETs in flight."""

from __future__ import annotations

import asyncio
import random
import tempfile

import pytest

from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.fairshare import FairLimiter
from s3feed.transfer.progress import Progress
from tests.fakes.store import FakeObjectStore, Pace

MB = 10**6
RATE = 20 * MB  # per connection, as the scaled remote bench's relay


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


def paced_store(pace: Pace, keys: int, size: int) -> FakeObjectStore:
    store = FakeObjectStore(chunk_size=32 * 1024, pace=pace)  # GETs in lockstep, each at RATE
    data = random.Random(2).randbytes(size)
    for i in range(keys):
        store.put(f"k{i}", data)
    return store


async def fetch(engine: Engine, store: FakeObjectStore, key: str) -> None:
    with tempfile.TemporaryFile() as f:
        await engine.download(store, key, f.fileno(), tenant="t", progress=Progress())


async def fetch_together(engine: Engine, store: FakeObjectStore, keys: list[str]) -> list[float]:
    """Start a fetch of each key at the same moment; each one's time on the fake clock."""
    pace = store.pace
    assert pace is not None
    start = pace.now

    async def one(key: str) -> float:
        await fetch(engine, store, key)
        return pace.now - start

    return await asyncio.gather(*(one(k) for k in keys))


def warmed(pace: Pace, store: FakeObjectStore, **kw: int) -> Engine:
    return Engine(TransferConfig(part_size=MiB, **kw), sleep=no_sleep, monotonic=pace.monotonic)


@pytest.mark.parametrize("parts", [2, 8])
async def test_32_transfers_started_together_finish_together_and_fill_the_link(
    parts: int,
) -> None:
    pace = Pace(RATE)
    store = paced_store(pace, 33, parts * MiB)
    engine = warmed(pace, store, global_concurrency=32)
    await fetch(engine, store, "k32")  # the rate is learned: each transfer wants 32 GETs
    assert engine.inflight() == 32
    start = pace.now
    times = await fetch_together(engine, store, [f"k{i}" for i in range(32)])
    assert max(times) / min(times) <= 1.5, sorted(times)
    # The link carries RATE per GET in flight: 32 GETs' worth most of the time.
    # (Less than all of it on this fake: a GET that starts a loop turn after
    # the others moves its first slices as if it ran alone.)
    aggregate = 32 * parts * MiB / (pace.now - start)
    assert aggregate >= 0.8 * 32 * RATE
    assert pace.peak <= 32


async def test_a_transfer_alone_still_takes_its_learned_count() -> None:
    pace = Pace(RATE)
    store = paced_store(pace, 1, 64 * MiB)
    engine = warmed(pace, store, global_concurrency=32)
    await fetch(engine, store, "k0")
    pace.peak = 0
    await fetch(engine, store, "k0")
    assert pace.peak == engine.inflight() == 32


async def test_a_fixed_concurrency_is_per_transfer_as_before() -> None:
    pace = Pace(RATE)
    store = paced_store(pace, 4, 8 * MiB)
    engine = warmed(pace, store, global_concurrency=32, concurrency=3)
    await fetch_together(engine, store, [f"k{i}" for i in range(4)])
    assert pace.peak == 12  # 3 each, within global_concurrency


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_owner_over_its_share_gives_way_to_one_under_it() -> None:
    lim = FairLimiter(4)
    for _ in range(4):
        await lim.acquire("a")  # alone: all it asks for
    b = asyncio.create_task(lim.acquire("b"))
    a = asyncio.create_task(lim.acquire("a"))
    await settle()
    lim.release("a")  # a holds 3 of a share of 2: the slot is b's
    await settle()
    assert b.done() and not a.done()
    lim.release("a")
    lim.release("a")  # a is down to 1, under its share
    await settle()
    assert a.done()
    assert lim.share() == 2


async def test_a_joined_owner_that_has_not_asked_keeps_its_share_free() -> None:
    lim = FairLimiter(4)
    with lim.joined("late"):  # in its HEAD
        await lim.acquire("a")
        await lim.acquire("a")
        third = asyncio.create_task(lim.acquire("a"))
        await settle()
        assert not third.done()  # the other two are the late one's share
    await settle()
    assert third.done()  # it is gone: a may take them
    await lim.acquire("a")


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    lim = FairLimiter(1)
    await lim.acquire("a")
    waiting = asyncio.create_task(lim.acquire("b"))
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    lim.release("a")
    await lim.acquire("c")  # the slot came back
    lim.release("c")
    assert lim.share() == 1 and lim._free == 1


async def test_a_transfer_joined_by_its_caller_is_counted_until_the_caller_is_done() -> None:
    pace = Pace(RATE)
    store = paced_store(pace, 1, 4 * MiB)
    engine = warmed(pace, store, global_concurrency=4)
    job = object()
    with engine.limiter.joined(job):  # the job's own HEAD, before the download
        with tempfile.TemporaryFile() as f:
            progress = Progress()
            await engine.download(store, "k0", f.fileno(), tenant="t", progress=progress, owner=job)
        with engine.limiter.joined("other"):
            assert engine.limiter.share() == 2  # the download's end did not drop the job
    assert engine.limiter.share() == 4 and not engine.limiter._joined


async def test_a_membership_counts_its_owner_until_it_leaves_once() -> None:
    """FairLimiter.join: the owner competes (its share kept free) until
    `leave`; leaving twice does not end another join of the same owner."""
    lim = FairLimiter(4)
    job = object()
    membership = lim.join(job)
    with lim.joined(job):  # the download's own join, nested
        membership.leave()
        membership.leave()
        assert lim.share() == 4 and job in lim._joined  # still joined by the download
        await lim.acquire("a")
        await lim.acquire("a")
        third = asyncio.create_task(lim.acquire("a"))
        await settle()
        assert not third.done()  # the job's share is kept free
    await settle()
    assert third.done() and not lim._joined
