"""What every transfer shares to survive failures: its retry budget and its workers.

`RetryBudget` counts the retries one transfer (a download or a stream) may
still spend; `run_workers` runs ranges through a TaskGroup and raises the
first real failure (`first_error`), not the group. transfer/engine.py and
transfer/stream.py both use them; neither imports the other for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from s3feed.transfer.errors import S3Unavailable, TransientError


@dataclass
class RetryBudget:
    remaining: int
    last_cause: str = ""

    def spend(self, exc: TransientError) -> None:
        self.last_cause = f"{exc.reason}: {exc.message}"
        if self.remaining <= 0:
            raise S3Unavailable(
                f"S3 kept failing, retries exhausted; last cause: {self.last_cause}"
            )
        self.remaining -= 1


async def run_workers(
    n: int, ranges: list[tuple[int, int]], fn: Callable[[int, int], Awaitable[None]]
) -> None:
    """Run fn over ranges, in order, by up to n workers in a TaskGroup; the
    first failure cancels the rest and is raised as itself."""
    todo = iter(ranges)

    async def worker() -> None:
        for s, e in todo:
            await fn(s, e)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(n, len(ranges))):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a TaskGroup failed with (its siblings' CancelledErrors aside)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
