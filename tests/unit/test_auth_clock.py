"""FakeClock wakes sleepers in deadline order without real sleeping; SystemClock re-reads
the wall clock; MonotonicClock never follows it once made."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from s3feed.auth import clock as clock_module
from s3feed.auth.clock import FakeClock, MonotonicClock, SystemClock


async def test_sleepers_wake_in_deadline_order_at_their_deadline() -> None:
    clock = FakeClock()
    t0 = clock.now()
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep_until(t0 + timedelta(seconds=seconds))
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 30), ("a", 10), ("b", 20)]]
    await clock.advance(15)
    assert woke == [("a", t0 + timedelta(seconds=10))]
    assert clock.now() == t0 + timedelta(seconds=15)
    await clock.advance(100)
    assert [n for n, _ in woke] == ["a", "b", "c"]
    assert woke[2][1] == t0 + timedelta(seconds=30)
    await asyncio.gather(*tasks)


async def test_woken_task_that_sleeps_again_is_woken_within_the_same_advance() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        start = clock.now()
        for _ in range(5):
            await clock.sleep_until(clock.now() + timedelta(seconds=7))
            ticks.append((clock.now() - start).total_seconds())

    task = asyncio.create_task(ticker())
    await clock.advance(3600)
    assert ticks == [7, 14, 21, 28, 35]
    await task


async def test_past_deadline_returns_at_once_and_cancelled_sleepers_are_dropped() -> None:
    clock = FakeClock()
    await clock.sleep_until(clock.now() - timedelta(seconds=1))
    task = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(seconds=5)))
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    assert clock.next_deadline() is None
    assert await clock.run_to_next() is None


def test_fake_clock_needs_an_aware_start() -> None:
    with pytest.raises(ValueError):
        FakeClock(datetime(2026, 1, 1))


async def test_system_clock_is_utc_and_sleeps_in_slices() -> None:
    clock = SystemClock(max_slice=0.001)
    now = clock.now()
    assert now.tzinfo is UTC
    await clock.sleep_until(now + timedelta(milliseconds=3))
    assert clock.now() >= now + timedelta(milliseconds=3)


async def test_monotonic_clock_is_utc_and_sleeps_until_its_deadline() -> None:
    clock = MonotonicClock()
    now = clock.now()
    assert now.tzinfo is UTC
    await clock.sleep_until(now + timedelta(milliseconds=3))
    assert clock.now() >= now + timedelta(milliseconds=3)
    await clock.sleep_until(now)  # past: at once


def test_monotonic_clock_ignores_a_wall_clock_step(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = MonotonicClock()
    before = clock.now()

    class Stepped(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Stepped:  # type: ignore[override]
            return cls(2030, 1, 1, tzinfo=UTC)  # NTP stepped the wall clock years ahead

    monkeypatch.setattr(clock_module, "datetime", Stepped)
    assert SystemClock().now().year == 2030
    assert before <= clock.now() < before + timedelta(hours=1)
