"""Sharing `global_concurrency` fairly between transfers: `FairLimiter`, and
`Membership`, one `join` of an owner (docs/design.md, Transfers: In flight).

Everything runs on the event loop; a slot is handed over in one step. The
engine (transfer/engine.py) owns the one limiter; a fetch joins it before its
HEAD (daemon/api/routes.py) and its download competes as that owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Iterator


class Membership:
    """One `FairLimiter.join` of `owner`; `leave` ends it (once, however often called)."""

    __slots__ = ("_limiter", "owner")

    def __init__(self, limiter: FairLimiter, owner: object) -> None:
        self._limiter: FairLimiter | None = limiter
        self.owner = owner

    def leave(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._leave(self.owner)


class FairLimiter:
    """A counting semaphore shared fairly between owners (transfers).

    Each competing owner is entitled to a share, ceil(capacity / owners
    competing): owners that hold or wait for a slot, and those `join`ed that
    have not asked yet (a transfer still in its HEAD). Freed slots go to
    waiting owners in turn, first to those under their share; an owner at
    its share gets a slot only while no one under theirs waits and the free
    slots beyond it still leave each joined owner that has not asked yet its
    share. So one owner alone takes all it asks for, and transfers started
    together hold a share each from their first GET, rather than the first to
    ask holding many long GETs while the last wait (docs/design.md,
    Transfers: In flight).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._free = capacity
        self._queues: OrderedDict[object, deque[asyncio.Future[None]]] = OrderedDict()
        self._held: dict[object, int] = {}
        self._joined: dict[object, int] = {}  # owner -> nested joins
        self._asked: set[object] = set()  # joined owners that have asked for a slot

    def join(self, owner: object) -> Membership:
        """Count `owner` as competing from now (before its first request) until
        the membership's `leave`; nested joins of one owner count it once,
        until the last leaves."""
        self._joined[owner] = self._joined.get(owner, 0) + 1
        return Membership(self, owner)

    @contextlib.contextmanager
    def joined(self, owner: object) -> Iterator[None]:
        """`join` for the duration of a `with`."""
        membership = self.join(owner)
        try:
            yield
        finally:
            membership.leave()

    def _leave(self, owner: object) -> None:
        if self._joined[owner] > 1:
            self._joined[owner] -= 1
        else:
            del self._joined[owner]
            self._asked.discard(owner)
            self._dispatch()  # a larger share for the rest

    def share(self) -> int:
        """Slots each competing owner is entitled to."""
        owners = len(self._joined.keys() | self._held.keys() | self._queues.keys())
        return -(-self._capacity // max(1, owners))

    async def acquire(self, owner: object) -> None:
        if owner in self._joined:
            self._asked.add(owner)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(owner, deque()).append(fut)
        self._dispatch()
        if fut.done():
            return
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(owner)  # the slot was handed to us as we were cancelled
            else:
                queue = self._queues.get(owner)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._queues[owner]
                    self._dispatch()
            raise

    def release(self, owner: object) -> None:
        held = self._held[owner] - 1
        if held:
            self._held[owner] = held
        else:
            del self._held[owner]
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters: in turn to those under their share, then
        (round-robin again) to the rest while joined owners that have not asked
        keep their shares free."""
        while self._free > 0 and self._queues:
            share = self.share()
            owner = next((o for o in self._queues if self._held.get(o, 0) < share), None)
            if owner is None:
                fresh = len(self._joined.keys() - self._asked)
                if self._free <= fresh * share:
                    return
                owner = next(iter(self._queues))
            queue = self._queues.pop(owner)
            fut = queue.popleft()
            if queue:
                self._queues[owner] = queue  # to the back of the round
            if fut.done():  # cancelled while queued
                continue
            fut.set_result(None)
            self._free -= 1
            self._held[owner] = self._held.get(owner, 0) + 1
