"""One memory budget for all uploads' part buffers: `[transfer] upload_memory_total`.

Design note (docs/design.md, Outputs). The daemon owns one `UploadMemory`;
each upload (transfer/upload/multipart.py) holds its buffers through a `PartBuffers`.
All bookkeeping runs on the event loop without awaits between a check and
its take, so a buffer is taken or given back in one step.

- An upload's first buffer is its floor: taken at once, even with the
  budget spent, so an upload always starts and never waits for another one
  to finish. Only floors overdraw the budget; a floor is held until the
  upload ends.
- Every further buffer (up to the upload's own `[transfer] upload_memory`)
  comes from the free part of the budget only, and goes back as soon as S3
  acknowledged its part. With no buffer free the upload waits (it stops
  reading its socket, so the encoder's writes block): backpressure, never an
  error.

So `used <= budget + part_size x (uploads started while the budget was
spent)`, and once those uploads end, `used <= budget`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class UploadMemory:
    def __init__(
        self, budget: int, observe: Callable[[int, int], None] = lambda used, budget: None
    ) -> None:
        if budget < 1:
            raise ValueError("transfer.upload_memory_total must be > 0")
        self.budget = budget
        self.used = 0
        self.peak = 0
        self._observe = observe  # metrics: (used, budget) at every change
        self._changed = asyncio.Event()
        observe(0, budget)

    @property
    def free(self) -> int:
        return max(0, self.budget - self.used)

    def floor(self, n: int) -> None:
        """An upload's first buffer: always granted."""
        self._add(n)

    def try_take(self, n: int) -> bool:
        """A further buffer, from the free part only."""
        if n > self.free:
            return False
        self._add(n)
        return True

    def give(self, n: int) -> None:
        self._add(-n)
        self.wake()

    def wake(self) -> None:
        """Wake every waiting upload: a buffer (its own or the budget's) came free."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
        self._observe(self.used, self.budget)


class PartBuffers:
    """One upload's part buffers of `size` bytes: its floor plus at most
    `most - 1` more from `memory`'s free budget (docs/design.md, Outputs)."""

    def __init__(self, memory: UploadMemory, size: int, most: int) -> None:
        self._memory = memory
        self._size = size
        self._most = max(1, most)
        self.held = 1  # buffers charged to the budget, the floor included
        self.in_use = 0
        self._closed = False
        memory.floor(size)

    async def acquire(self) -> None:
        """Wait until a buffer may be filled (the floor, or one more from the budget)."""
        while True:
            if self.in_use < self.held:
                self.in_use += 1
                return
            if self.held < self._most and self._memory.try_take(self._size):
                self.held += 1
                self.in_use += 1
                return
            await self._memory.changed()

    def release(self) -> None:
        """A buffer's part was sent (or dropped): a buffer beyond the floor goes
        back to the budget at once, the floor stays this upload's."""
        self.in_use -= 1
        if self.held > 1 and not self._closed:
            self.held -= 1
            self._memory.give(self._size)
        else:
            self._memory.wake()

    def close(self) -> None:
        """The upload ended (done, failed or cancelled): everything goes back."""
        if not self._closed:
            self._closed = True
            self._memory.give(self.held * self._size)
            self.held = 0
