"""Time and sleeping, injected so 12-hour sessions and 30 s stalls test in milliseconds.

Design note (concurrency):
- Credentials expire at a wall-clock instant (STS `Expiration`), so sleepers
  wait for a wall-clock deadline, not a duration. `SystemClock.sleep_until`
  sleeps in slices of at most `max_slice` seconds and re-reads the wall
  clock after each, so a clock step (NTP, a paused VM) delays a refresh by
  at most one slice instead of sleeping through an expiry.
- Timeouts (transfer/'s stall and idle timers) measure durations, so a clock
  step must move them neither way: `MonotonicClock` is the same protocol on
  a timeline that starts at the wall clock and then follows the monotonic
  clock only.
- `FakeClock` never sleeps for real. Each `sleep_until` parks a future in a
  heap keyed by (deadline, sequence). `advance`/`advance_to` move time
  forward one deadline at a time, resolving the futures that are due in
  deadline order and then yielding to the event loop (`settle`) so that the
  woken tasks run — and possibly park new, earlier sleepers — before time
  moves on. Everything runs on the test's event loop; nothing is threaded.
- Cancellation: a cancelled sleeper's future is cancelled with it; the heap
  drops it lazily when it comes up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The time, timezone-aware UTC (the wall clock's, but for MonotonicClock)."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once now() >= when (at once if already past)."""
        ...


class SystemClock:
    def __init__(self, max_slice: float = 60.0) -> None:
        self._max_slice = max_slice

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        # Slices, not one long sleep: the wall clock may step while we sleep.
        while (remaining := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining, self._max_slice))


class MonotonicClock:
    """A clock for timeouts: now() never steps, whatever the wall clock does.

    It reads the wall clock once, when made, and from then on adds the
    monotonic clock's progress; deadlines taken from one instance compare
    only with that instance's now().
    """

    def __init__(self) -> None:
        self._origin = datetime.now(UTC)
        self._start = time.monotonic()

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=time.monotonic() - self._start)

    async def sleep_until(self, when: datetime) -> None:
        # Again until due: the loop's timers may round a delay down (uvloop's
        # are in milliseconds), and a caller relies on now() >= when after.
        while (remaining := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


async def settle(rounds: int = 50) -> None:
    """Let runnable tasks run until they block (on a fake sleep, an event...).

    Fakes never do I/O, so a chain of wake-ups completes in a few loop
    iterations; 50 is a generous bound that costs microseconds.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """A clock tests move by hand. Starts at a fixed, readable instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            await asyncio.sleep(0)  # still a scheduling point, as a real sleep is
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), future))
        await future

    def next_deadline(self) -> datetime | None:
        """The earliest deadline anyone still waits for."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def sleepers(self) -> int:
        self._drop_cancelled()
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self._now + timedelta(seconds=seconds))

    async def advance_to(self, when: datetime) -> None:
        """Move time to `when`, waking sleepers in deadline order on the way."""
        await settle()
        while (deadline := self.next_deadline()) is not None and deadline <= when:
            self._now = max(self._now, deadline)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await settle()
        self._now = max(self._now, when)
        await settle()

    async def run_to_next(self) -> datetime | None:
        """Jump to the next deadline and wake its sleepers; None if nobody sleeps."""
        await settle()  # tasks created just now may be about to sleep
        deadline = self.next_deadline()
        if deadline is not None:
            await self.advance_to(deadline)
        return deadline

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
