"""What every transfer shares to survive failures: its retry budgets, its backoff, its workers.

Design note. A transfer (a download or a stream) gives each of its requests
its own `RetryBudget` of `[transfer] retries`: the HEAD and the part-layout
probe spend the transfer's budget, each ranged GET a budget of its own
(`RetryBudget.for_range`), so ranges that fail together do not spend each
other's retries. A throttling answer (SlowDown) spends a retry only after
`THROTTLE_ALLOWANCE` of them (the answers it takes the pause to double up to
its cap), so a range alone in flight, a stream's first, rides out a burst too.
What the requests share is the `Backoff`: one "not before" instant for the
whole transfer (docs/design.md, Transfers: Retries). When S3 tells one
request to slow down (or fails it in any transient way), no request of the
transfer starts before that instant, so a burst of SlowDowns across parallel
ranges pauses the transfer instead of failing it.

Who waits on whom: every attempt first waits in `Backoff.wait` (at once when
no pause is set: no scheduling point, so the first GET leaves as soon as
before), then runs. The pause grows with the transfer's consecutive rounds of
failure (full jitter, capped). A request takes a ticket, the pause round it
started in; only a failure of the current round starts a new, longer pause:
the other requests that were already in flight when S3 said slow down fail
for the same reason and wait for the same pause instead of lengthening it.
A success of the current round ends the streak.

Time is injected (the engine's `sleep` and `monotonic`), so unit tests run
bursts on a fake clock. `first_error` picks the real failure out of a
TaskGroup's exception group.
transfer/engine.py and transfer/stream.py both use these; neither imports the
other for them.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from s3feed.transfer.errors import S3Unavailable, TransientError

BACKOFF_BASE = 0.1  # seconds; the n-th consecutive pause lasts U(0, base * 2^n)
BACKOFF_CAP = 20.0
# Throttling answers a budget takes before they spend its retries: the pauses
# double this many times before they reach the cap (0.1 s x 2^8 > 20 s).
THROTTLE_ALLOWANCE = math.ceil(math.log2(BACKOFF_CAP / BACKOFF_BASE))


class Backoff:
    """One transfer's pause: no request of it starts before `not_before`."""

    def __init__(
        self,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
        monotonic: Callable[[], float],
        *,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
    ) -> None:
        self._rng, self._sleep, self._monotonic = rng, sleep, monotonic
        self._base, self._cap = base, cap
        self.not_before = -math.inf
        self.round = 0  # pauses so far; a request's ticket is the round it started in
        self.streak = 0  # pauses since a request of the current round last succeeded

    def ticket(self) -> int:
        return self.round

    def failed(self, ticket: int) -> float:
        """A request that started in round `ticket` failed transiently; the
        pause it starts, in seconds (0 if it belongs to a pause already set)."""
        if ticket != self.round:
            return 0.0
        delay = self._rng.uniform(0, min(self._cap, self._base * 2 ** min(self.streak, 32)))
        self.streak += 1
        self.round += 1
        self.not_before = max(self.not_before, self._monotonic() + delay)
        return delay

    def succeeded(self, ticket: int) -> None:
        if ticket == self.round:
            self.streak = 0

    async def wait(self) -> None:
        """Return once the pause is over; again if it was lengthened meanwhile."""
        while (delay := self.not_before - self._monotonic()) > 0:
            until = self.not_before
            await self._sleep(delay)
            if self.not_before == until:
                return  # a sleep may end a hair early (timer rounding): that is no new pause


@dataclass
class RetryBudget:
    """The retries one request may still spend, and the transfer's `Backoff`
    (None until the engine gives it one). Throttling answers (S3 asking for
    time, not failing) first spend `throttles`, then retries."""

    remaining: int
    last_cause: str = ""
    backoff: Backoff | None = None
    throttles: int = THROTTLE_ALLOWANCE
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.remaining

    def for_range(self) -> RetryBudget:
        """A fresh budget of the same size for one range, sharing the backoff."""
        return RetryBudget(self.size, backoff=self.backoff)

    def spend(self, exc: TransientError) -> None:
        self.last_cause = f"{exc.reason}: {exc.message}"
        if exc.reason == "throttled" and self.throttles > 0:
            self.throttles -= 1
            return
        if self.remaining <= 0:
            raise S3Unavailable(
                f"S3 kept failing, retries exhausted; last cause: {self.last_cause}"
            )
        self.remaining -= 1


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a TaskGroup failed with (its siblings' CancelledErrors aside)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
