"""The event loop's lag: how late the daemon's one loop runs a timer (docs/design.md, Metrics).

Design note. Everything of the daemon runs on one event loop, so a call that
blocks it (a slow file system, a long callback, a burst of work) holds up
every request, transfer and watchdog ping at once. `LoopLag.run`, one task
on that loop, sleeps until a deadline `interval` ahead and, woken, reads the
clock again: what passed beyond the deadline is how long the loop was busy
elsewhere when the timer fell due. Each wake is one observation
(`s3feed_event_loop_lag_seconds`, a histogram), so a loop blocked for a
second shows up in the next wake after it ends, at most `interval` later. The
clock is injected (auth/clock.py's protocol: `MonotonicClock` in the daemon,
`FakeClock` in tests); it costs one timer every `interval` seconds. The task
runs until cancelled, which ends its sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from s3feed.auth import Clock, MonotonicClock

INTERVAL = 0.5  # seconds between observations


class LoopLag:
    def __init__(
        self,
        observe: Callable[[float], None],
        *,
        clock: Clock | None = None,
        interval: float = INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._observe = observe
        self._clock = clock or MonotonicClock()
        self._interval = timedelta(seconds=interval)

    async def run(self) -> None:
        while True:
            due = self._clock.now() + self._interval
            await self._clock.sleep_until(due)
            self._observe(max(0.0, (self._clock.now() - due).total_seconds()))
