"""GETs in flight sized to the link (transfer/linkrate.py, Engine.inflight).

The estimate's decisions are checked on given samples; the engine's on a fake
store paced by a fake clock (tests/fakes/store.py: `Pace`), never wall time:
each GET of a paced store runs at the per-connection rate however many run,
and a `shared` one splits one rate between them, as loopback does.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import tempfile
from pathlib import Path

import pytest

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine, run_inflight, tail_cut
from s3feed.transfer.linkrate import (
    INITIAL,
    MIN_COUNT,
    MIN_DOWNLOAD,
    MIN_SAMPLE_BYTES,
    SAMPLES,
    InflightSlots,
    LinkRate,
)
from s3feed.transfer.objectserver import ObjectServer
from s3feed.transfer.progress import Progress
from s3feed.transfer.stream import ObjectStream
from tests.fakes.store import FakeObjectStore, Pace

TARGET = 10 * 10**9 / 8  # the default target_throughput, in bytes per second
MB = 10**6


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


def link(*samples: tuple[float, float]) -> LinkRate:
    """An estimate that saw one second of each (bytes/s, GETs flowing)."""
    rate = LinkRate()
    for bps, flowing in samples:
        rate.sample(int(bps), 1.0, flowing)
    return rate


def test_before_any_rate_a_transfer_starts_with_the_initial_count() -> None:
    assert LinkRate().count(TARGET) == INITIAL
    assert LinkRate().per_connection is None


def test_the_count_is_what_reaches_the_target_at_the_per_connection_rate() -> None:
    # S3 in-region: about 90 MB/s per GET, whatever the number of GETs.
    in_region = link(*[(90 * MB, n) for n in (1, 4, 8, 14)])
    assert in_region.count(TARGET) == math.ceil(TARGET / (90 * MB)) == 14
    slow = link(*[(20 * MB, n) for n in range(1, 33)])
    assert slow.count(TARGET) == 63
    assert slow.count(100 * MB) == 5  # a lower target needs fewer
    fast = link((2000 * MB, 1))
    # One connection would carry it, but with one GET in flight every GET's
    # round trip waits with nothing arriving: two.
    assert fast.count(TARGET) == MIN_COUNT == 2


def test_a_shared_bottleneck_is_filled_not_crowded() -> None:
    # Loopback: one GET alone runs at the host's pace (1 GB/s); eight at once
    # share it, each at an eighth. More GETs would only share it thinner.
    loopback = link((1000 * MB, 1), (130 * MB, 8), (260 * MB, 4))
    assert loopback.count(TARGET) == 2
    assert loopback.count(100 * TARGET) == 3  # the bottleneck, plus one to keep probing
    # A host NIC of 500 MB/s under a 90 MB/s per-connection cap: about 7.
    nic = link((90 * MB, 1), (90 * MB, 4), (36 * MB, 14))
    assert nic.count(TARGET) == math.ceil(36 * 14 / 90) + 1 == 7


def test_short_gets_and_instant_ones_are_no_sample() -> None:
    rate = LinkRate()
    rate.sample(MIN_SAMPLE_BYTES - 1, 0.001, 1)  # says more about the round trip
    rate.sample(16 * MiB, 0.0, 1)
    assert rate.per_connection is None and rate.count(TARGET) == INITIAL


def test_old_samples_age_out() -> None:
    rate = link((1000 * MB, 1))
    assert rate.count(TARGET) == 2
    for _ in range(SAMPLES):
        rate.sample(20 * MB, 1.0, 32)  # the link changed: now slow per connection
    assert rate.per_connection == 20 * MB and rate.count(TARGET) == 63


def test_the_engine_stays_within_global_concurrency_and_a_fixed_concurrency() -> None:
    slow = [(20 * MB, n) for n in range(1, 33)]
    learned = Engine(TransferConfig(part_size=MiB, global_concurrency=12))
    assert learned.inflight() == min(INITIAL, 12)
    learned.link = link(*slow)
    assert learned.inflight() == 12
    fixed = Engine(TransferConfig(part_size=MiB, concurrency=3))
    fixed.link = link(*slow)
    assert fixed.inflight() == 3
    assert fixed.window_max() == fixed.config.stream_window  # as before target_throughput


def test_a_window_may_hold_a_part_per_get_the_link_needs_within_stream_memory() -> None:
    config = TransferConfig(part_size=MiB, stream_window=3 * MiB, global_concurrency=16)
    engine = Engine(config)
    assert engine.window_max() == 3 * MiB  # no rate seen: no memory for a need not measured
    engine.link = link((20 * MB, 8))
    assert engine.window_max() == 16 * MiB
    engine.link = link((1000 * MB, 1), (130 * MB, 8))
    assert engine.window_max() == 3 * MiB  # the link needs 2: stream_window still holds
    small = Engine(TransferConfig(part_size=MiB, stream_window=2 * MiB, stream_memory=6 * MiB))
    small.link = link((20 * MB, 8))
    assert small.window_max() == 6 * MiB


async def test_slots_follow_the_limit_as_it_moves() -> None:
    limit = 2
    slots = InflightSlots(lambda: limit)
    await slots.acquire()
    await slots.acquire()
    third = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    limit = 3
    slots.release()  # any release makes a waiter look at the limit again
    await third
    assert slots.active == 2
    limit = 1
    slots.release()
    fourth = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not fourth.done()  # one still runs, and the limit is now one
    slots.release()
    await fourth
    assert slots.peak == 2


async def test_a_sample_that_raises_the_count_starts_a_waiting_get_at_once() -> None:
    link = LinkRate()
    slots = InflightSlots(lambda: link.count(TARGET), link)
    for _ in range(INITIAL):
        await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    link.sample(20 * MB, 1.0, INITIAL)  # half a part into a slow GET: 63 wanted
    for _ in range(3):
        await asyncio.sleep(0)
    assert waiting.done() and slots.active == INITIAL + 1  # no GET had to end first


def paced(pace: Pace, size: int = 64 * MiB) -> tuple[FakeObjectStore, bytes]:
    store = FakeObjectStore(chunk_size=64 * 1024, rng=random.Random(1), pace=pace)
    data = random.Random(2).randbytes(size)
    store.put("k", data)
    return store, data


def engine_on(pace: Pace, **kw: int) -> Engine:
    return Engine(TransferConfig(part_size=MiB, **kw), sleep=no_sleep, monotonic=pace.monotonic)


async def download(engine: Engine, store: FakeObjectStore, data: bytes) -> None:
    with tempfile.TemporaryFile() as f:
        await engine.download(store, "k", f.fileno(), tenant="t", progress=Progress())
        f.seek(0)
        assert f.read() == data


async def test_a_fetch_over_a_slow_link_keeps_more_gets_in_flight_than_it_started_with() -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=32)
    await download(engine, store, data)
    # Every GET ran at about 20 MB/s, so 10 Gbit/s wants more than the cap allows.
    assert engine.link.per_connection is not None and engine.link.per_connection < 2 * 20 * MB
    assert engine.inflight() == 32
    pace.peak = 0
    await download(engine, store, data)
    assert INITIAL < pace.peak <= 32


async def test_global_concurrency_bounds_a_slow_links_fetch() -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=12)
    for _ in range(2):
        await download(engine, store, data)
    assert engine.inflight() == 12 and pace.peak == 12


async def test_where_one_get_runs_at_the_hosts_pace_the_count_falls() -> None:
    pace = Pace(1000 * MB, shared=True)  # loopback: all GETs share the host
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=32)
    for _ in range(3):
        pace.peak = 0
        await download(engine, store, data)
    assert engine.inflight() < INITIAL
    # The last fetch ran with fewer GETs than the first, but never under its floor.
    assert MIN_DOWNLOAD <= pace.peak == engine.download_inflight() < INITIAL


async def test_a_fetch_keeps_its_floor_where_the_estimate_says_two() -> None:
    """Where one GET alone runs at the host's pace and more only share it, the
    estimate asks for MIN_COUNT; a cache fetch still runs MIN_DOWNLOAD (a
    fixed `concurrency` is kept as it is)."""
    pace = Pace(1000 * MB, shared=True)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=32)
    engine.link = link(*[(1000 * MB, 1)] * 4, (500 * MB, 2))
    assert engine.inflight() == MIN_COUNT
    await download(engine, store, data)
    assert pace.peak == MIN_DOWNLOAD
    fixed = engine_on(pace, global_concurrency=32, concurrency=2)
    pace.peak = 0
    await download(fixed, store, data)
    assert pace.peak == 2


async def read_all(engine: Engine, store: FakeObjectStore) -> tuple[bytes, int]:
    """Read the object as fast as it comes (a reader that keeps up); the bytes
    and the window's largest capacity."""
    out = bytearray()
    largest = 0
    async with ObjectStream(engine, store, "k", tenant="t") as s:
        assert s.window is not None
        async for chunk in s:
            out += chunk
            largest = max(largest, s.window.capacity)
    return bytes(out), largest


async def test_a_stream_that_keeps_up_over_a_slow_link_is_not_held_to_three_gets() -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=16, stream_window=3 * MiB)
    got, largest = await read_all(engine, store)
    assert got == data
    assert 3 < pace.peak <= 16
    assert 3 * MiB < largest <= 16 * MiB  # a part per GET in flight, at most
    assert engine.stream_memory.used == 0  # all given back


async def test_stream_memory_bounds_a_slow_links_window() -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=16, stream_window=2 * MiB, stream_memory=6 * MiB)
    got, largest = await read_all(engine, store)
    assert got == data
    assert 2 * MiB < largest <= 6 * MiB
    assert engine.stream_memory.peak <= 6 * MiB


async def test_a_stream_on_loopback_keeps_its_window() -> None:
    pace = Pace(1000 * MB, shared=True)
    store, data = paced(pace)
    engine = engine_on(pace, global_concurrency=16, stream_window=3 * MiB)
    got, largest = await read_all(engine, store)
    assert got == data
    # The count fell (one GET runs at the host's pace), but a stream keeps what
    # its window holds: fewer GETs would bring smaller slices, each a wakeup.
    assert engine.inflight() < 3
    assert largest <= 3 * MiB and pace.peak == 3


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_fixed_concurrency_is_kept_on_a_slow_link(concurrency: int) -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace, 16 * MiB)
    engine = engine_on(pace, concurrency=concurrency, stream_window=3 * MiB)
    await download(engine, store, data)
    got, largest = await read_all(engine, store)
    assert got == data
    assert pace.peak == concurrency and largest <= 3 * MiB


async def test_a_url_reads_read_ahead_over_a_slow_link_is_not_held_to_three_gets(
    tmp_path: Path,
) -> None:
    pace = Pace(20 * MB)
    store, data = paced(pace, 32 * MiB)
    engine = engine_on(pace, global_concurrency=16, stream_window=3 * MiB)
    cache = Cache(CacheConfig(dir=tmp_path / "cache", min_free=0), engine, engine.observer)
    server = ObjectServer(engine, cache, engine.observer)
    await cache.start()
    try:
        delivery = await server.open(
            store,
            "k",
            tenant="t",
            choose_range=lambda meta: (0, meta.size - 1),
            through_cache=True,
        )
        out = bytearray()
        async with delivery:
            async for chunk in delivery:
                out += chunk
    finally:
        await cache.close()
    assert bytes(out) == data
    assert 3 < pace.peak <= 16
    assert 3 * MiB < engine.stream_memory.peak <= 16 * MiB  # the depth: a piece per GET
    assert engine.stream_memory.used == 0


@pytest.mark.parametrize(
    ("s", "e", "unstarted", "free", "least", "end"),
    [
        (0, 16 * MiB - 1, 256 * MiB, 8, 8 * MiB, 16 * MiB - 1),  # a share of 32 MiB: whole
        (0, 16 * MiB - 1, 128 * MiB, 32, 8 * MiB, 8 * MiB - 1),  # 4 MiB each, but not under 8
        (0, 16 * MiB - 1, 110 * MiB + 5, 10, MiB, 12 * MiB - 1),  # 11 MiB + 1: a whole MiB more
        (5, 5 + 3 * MiB, 40 * MiB, 32, 2 * MiB, 5 + 2 * MiB - 1),  # from where it starts
        (0, MiB - 1, MiB, 64, 8 * MiB, MiB - 1),  # smaller than `least`: whole
    ],
)
def test_tail_cut_gives_each_free_slot_its_share(
    s: int, e: int, unstarted: int, free: int, least: int, end: int
) -> None:
    assert tail_cut(s, e, unstarted, free, least) == end


async def test_a_fetchs_last_ranges_are_cut_so_its_gets_end_together() -> None:
    """The count rises from 8 to 32 once 64 MiB of 16 MiB ranges have started
    (a fresh daemon learning a slow link): the 64 MiB left go out as 8 MiB
    ranges, half a part each, not as four more whole ones. While the count
    stays, whole ranges fill it (the GETs run until the end: none released)."""
    started: list[tuple[int, int]] = []
    # No GET ends before the last one starts; the count rises after the fourth.
    slots = InflightSlots(lambda: 8 if slots.active <= 4 else 32)

    async def fetch(s: int, e: int) -> None:
        started.append((s, e))

    ranges = [(s, s + 16 * MiB - 1) for s in range(0, 128 * MiB, 16 * MiB)]
    await run_inflight(slots, ranges, fetch, tail=8 * MiB)
    assert [e - s + 1 for s, e in started] == [16 * MiB] * 4 + [8 * MiB] * 8
    assert started == sorted(started) and started[0][0] == 0 and started[-1][1] == 128 * MiB - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(started))
    for tail in (8 * MiB, None):  # the count stays: whole ranges, as planned
        started.clear()
        await run_inflight(InflightSlots(lambda: 8), ranges, fetch, tail=tail)
        assert started == ranges
