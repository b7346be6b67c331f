"""transfer/retry.py: per-range retry budgets and the backoff a transfer's ranges share.

Every case runs on a FakeClock behind the engine's `sleep` and `monotonic`:
time moves only when every task waits on it, so the tests assert when each
GET started (events), never how long the wall clock took.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from s3feed.auth.clock import FakeClock
from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import S3Unavailable
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.retry import Backoff
from s3feed.transfer.stream import ObjectStream
from tests.fakes.store import Call, FailingObjectStore, FakeObjectStore, Fault

T = TypeVar("T")


class FakeTime:
    """The engine's `sleep` and `monotonic` on one FakeClock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self._origin = self.clock.now()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return (self.clock.now() - self._origin).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.clock.sleep_until(self.clock.now() + timedelta(seconds=seconds))

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro`, moving time to the next sleeper's deadline whenever
        every task is waiting on the clock."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            if await self.clock.run_to_next() is None:
                await asyncio.sleep(0)
        return task.result()


class Retries(NullTransferObserver):
    def __init__(self) -> None:
        self.retries: list[str] = []

    def range_retry(self, reason: str) -> None:
        self.retries.append(reason)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    f = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    yield f
    os.close(f)


def make(time: FakeTime, *, retries: int = 10, concurrency: int = 8) -> tuple[Engine, Retries]:
    obs = Retries()
    cfg = TransferConfig(part_size=MiB, concurrency=concurrency, retries=retries)
    engine = Engine(cfg, obs, rng=random.Random(5), sleep=time.sleep, monotonic=time.monotonic)
    return engine, obs


def burst(time: FakeTime, failures: int, *, after: int = 0) -> tuple[Any, list[float]]:
    """A GET schedule: `failures` SlowDowns in a row after the first `after`
    GETs, as S3 answers while a prefix scales; and each GET's start time."""
    starts: list[float] = []

    def schedule(n: int, call: Call) -> Fault | None:
        starts.append(time.monotonic())
        return Fault("throttled") if after <= n < after + failures else None

    return schedule, starts


async def test_twelve_slowdowns_over_eight_ranges_delay_a_download(fd: int) -> None:
    time = FakeTime()
    inner = FakeObjectStore(chunk_size=MiB)
    data = blob(8 * MiB)
    inner.put("k", data)
    schedule, starts = burst(time, 12)
    store = FailingObjectStore(inner, schedule)
    engine, obs = make(time)
    await time.run(engine.download(store, "k", fd, tenant="t", progress=Progress()))
    assert sha(os.pread(fd, len(data) + 1, 0)) == sha(data)
    assert obs.retries == ["throttled"] * 12
    # All eight ranges were in flight when S3 said slow down: one pause for all
    # of them (no GET starts during it), then all eight retry together; the four
    # told again pause once more, a longer pause, and succeed.
    assert len(starts) == 20
    assert starts[:8] == [0.0] * 8
    first, second = starts[8], starts[16]
    assert starts[8:16] == [first] * 8 and starts[16:] == [second] * 4
    assert 0 < first <= 0.1 and 0 < second - first <= 0.2
    assert time.monotonic() == second  # delayed by the pauses alone, under 0.3 s


async def test_a_burst_over_a_streams_ranges_delays_it() -> None:
    time = FakeTime()
    inner = FakeObjectStore(chunk_size=MiB)
    data = blob(12 * MiB + 5)
    inner.put("k", data, checksum="CRC32")
    schedule, starts = burst(time, 12, after=1)  # the first range flows, then the burst
    store = FailingObjectStore(inner, schedule)
    engine, obs = make(time)

    async def read() -> bytes:
        out = bytearray()
        async with ObjectStream(engine, store, "k", tenant="t") as s:
            async for chunk in s:
                out += chunk
        assert s.verified == ["CRC32"]
        return bytes(out)

    assert sha(await time.run(read())) == sha(data)
    assert obs.retries == ["throttled"] * 12
    assert starts[:2] == [0.0, 0.0] and min(starts[2:]) > 0  # nothing starts during a pause
    # The window holds a part or two ahead of the reader, so few ranges are in
    # flight and the burst falls on them: up to twelve doubling pauses.
    assert 0 < time.monotonic() < sum(min(20.0, 0.1 * 2**n) for n in range(12))


async def test_a_range_alone_takes_the_throttling_allowance_then_its_retries(fd: int) -> None:
    """One range: twelve SlowDowns in a row pass (8 free, 4 retries); with
    retries = 2, the eleventh SlowDown (8 + 2 spent) fails the transfer."""
    time = FakeTime()
    inner = FakeObjectStore(chunk_size=MiB)
    data = blob(MiB)
    inner.put("k", data)
    schedule, starts = burst(time, 12)
    engine, obs = make(time)
    store = FailingObjectStore(inner, schedule)
    await time.run(engine.download(store, "k", fd, tenant="t", progress=Progress()))
    assert sha(os.pread(fd, len(data) + 1, 0)) == sha(data)
    assert len(starts) == 13 and starts == sorted(set(starts))  # each after a pause

    time = FakeTime()
    schedule, starts = burst(time, 12)
    engine, obs = make(time, retries=2)
    with pytest.raises(S3Unavailable, match="last cause: throttled"):
        await time.run(
            engine.download(
                FailingObjectStore(inner, schedule), "k", fd, tenant="t", progress=Progress()
            )
        )
    assert len(starts) == 11 and len(obs.retries) == 10


async def test_each_range_has_its_own_budget(fd: int) -> None:
    """Every range fails twice: sixteen retries, two per range, within
    `retries = 2` each; a range failing a third time fails the transfer."""
    time = FakeTime()
    inner = FakeObjectStore(chunk_size=MiB)
    data = blob(8 * MiB)
    inner.put("k", data)
    failed: dict[int | None, int] = {}

    def twice(n: int, call: Call) -> Fault | None:
        failed[call.start] = failed.get(call.start, 0) + 1
        return Fault("server_error") if failed[call.start] <= 2 else None

    engine, obs = make(time, retries=2)
    await time.run(
        engine.download(FailingObjectStore(inner, twice), "k", fd, tenant="t", progress=Progress())
    )
    assert sha(os.pread(fd, len(data) + 1, 0)) == sha(data)
    assert obs.retries == ["server_error"] * 16

    def thrice_at_3mib(n: int, call: Call) -> Fault | None:
        return Fault("server_error") if call.start == 3 * MiB else None

    store = FailingObjectStore(inner, thrice_at_3mib)
    time = FakeTime()
    engine, obs = make(time, retries=2)
    with pytest.raises(S3Unavailable, match="retries exhausted; last cause: server_error"):
        await time.run(engine.download(store, "k", fd, tenant="t", progress=Progress()))
    assert sum(1 for c in store.gets if c.start == 3 * MiB) == 3
    assert obs.retries == ["server_error"] * 2


async def test_a_pause_is_set_once_per_round_and_a_success_ends_the_streak() -> None:
    time = FakeTime()
    backoff = Backoff(random.Random(1), time.sleep, time.monotonic, base=1.0, cap=5.0)
    in_flight = [backoff.ticket() for _ in range(3)]
    first = backoff.failed(in_flight[0])
    assert 0 < first <= 1.0 and backoff.not_before == first
    assert backoff.failed(in_flight[1]) == 0.0  # the same burst: no longer pause
    assert backoff.not_before == first

    waiter = asyncio.ensure_future(backoff.wait())
    await asyncio.sleep(0)
    assert time.sleeps == [first] and not waiter.done()
    retry = backoff.ticket()
    assert retry == 1
    # Told again before the pause is over: the waiter sleeps on to the new instant.
    second = backoff.failed(retry)
    assert 0 < second <= 2.0 and backoff.not_before == second
    await time.clock.advance(first)
    assert not waiter.done()
    await time.clock.advance(second - first)
    assert waiter.done() and time.monotonic() == pytest.approx(second, abs=1e-5)

    backoff.succeeded(in_flight[2])  # started before the pauses: says nothing of now
    assert backoff.streak == 2
    backoff.succeeded(backoff.ticket())
    assert backoff.streak == 0
    assert backoff.failed(backoff.ticket()) <= 1.0  # the streak starts over at base

    for _ in range(10):
        backoff.failed(backoff.ticket())
    assert backoff.failed(backoff.ticket()) <= 5.0  # capped
