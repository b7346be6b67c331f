"""daemon/looplag.py on a fake clock: a timer on time is no lag; a block of the
loop is observed as the time the timer fell due before the loop could run it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest

from s3feed.auth.clock import FakeClock
from s3feed.daemon.looplag import LoopLag


class BusyLoopClock(FakeClock):
    def block(self, seconds: float) -> None:
        """Time passes while the loop runs something else: no sleeper wakes."""
        self._now += timedelta(seconds=seconds)


async def test_a_block_of_the_loop_is_observed() -> None:
    clock = BusyLoopClock()
    seen: asyncio.Queue[float] = asyncio.Queue()
    task = asyncio.create_task(LoopLag(seen.put_nowait, clock=clock, interval=0.5).run())
    try:
        await clock.advance(0.5)  # the timer runs when due
        async with asyncio.timeout(5):  # hang guard
            assert await seen.get() == 0.0
        assert clock.sleepers == 1  # sleeping again, due 0.5 s on
        clock.block(2.0)  # a call holds the loop 2 s: the timer falls due inside it
        await clock.advance(0)  # the loop is free: the overdue timer runs now
        async with asyncio.timeout(5):
            assert await seen.get() == pytest.approx(1.5)
        assert seen.empty()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        LoopLag(lambda s: None, interval=0)
