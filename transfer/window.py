"""The bounded reorder window of a stream: `StreamWindow`.

Producers (transfer/stream.py) `claim` room and `put` received slices at
their offsets; the reader `get`s chunks strictly in offset order.

Who waits on whom, and what bounds memory: backpressure is an explicit pair.
The reader reports bytes consumed by asking for the next chunk (the chunk it
held is then released); a producer waits in `claim` until its range lies
within `capacity` bytes of the reader's position. Every buffered byte is
therefore in [consumed, consumed + capacity), so the window (heap plus the one
chunk in the reader's hands) never exceeds `capacity`, however large the
object and however slow the reader; a stalled reader stops all fetching.
Ranges are cut at claim time and never longer than the capacity then, so the
range the reader needs next always fits once the reader has caught up: no
deadlock, whatever the capacity does.

The capacity is a grant of the engine's one `StreamMemory` (all streams
together: transfer/streammemory.py). It starts at a part, grows (doubling, up
to `max_capacity`: `stream_window`, or a part per GET the link needs in
flight) when the reader waits for bytes while a producer waits for room, and
shrinks as the reader drains while the budget is overdrawn; it never drops
below the bytes already admitted, so admitted ranges stay admitted.

Reassembly is a heap keyed by offset; bytes below the delivery point are
dropped, so a retried range never duplicates bytes.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
from collections.abc import Callable

from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.streammemory import MIN_WINDOW, StreamMemory


class WindowState(enum.Enum):
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


class StreamWindow:
    """Bytes [start, end] of an object, reassembled in order, at most `capacity` held.

    With `memory`, `capacity` is what the window asks for at first; it holds a
    grant of `memory` instead, between a floor and `max_capacity` (or, with
    `grow_to`, what that says each time the window would grow)."""

    def __init__(
        self,
        start: int,
        end: int,
        capacity: int,
        observer: TransferObserver,
        *,
        memory: StreamMemory | None = None,
        max_capacity: int | None = None,
        grow_to: Callable[[], int] | None = None,
    ) -> None:
        self.start, self.end = start, end
        self.observer = observer
        self._memory = memory
        self.floor = min(MIN_WINDOW, capacity)
        self.capacity = memory.take(capacity, self.floor) if memory else capacity
        self.max_capacity = max(self.capacity, max_capacity or capacity)
        # Read when the window would grow: the most it may hold then (the
        # GETs the link needs in flight move it: Engine.window_max).
        self._grow_to = grow_to
        self.admitted = start - 1  # the last byte a producer may fetch
        self._unit = self.capacity  # how much a producer claims at a time
        self._grown_at = start  # `consumed` when the window last grew
        self.state = WindowState.OPEN
        self.error: BaseException | None = None
        self.next = start  # first offset not yet handed to the reader
        self.consumed = start  # the reader is done with every byte before this
        self.buffered = 0  # bytes in the heap plus the chunk the reader holds
        self.peak = 0
        self._heap: list[tuple[int, bytes]] = []
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()

    _ALLOWED = {
        WindowState.OPEN: (WindowState.FAILED, WindowState.CLOSED),
        WindowState.FAILED: (WindowState.CLOSED,),
        WindowState.CLOSED: (),
    }

    def _transition(self, new: WindowState) -> None:
        if new not in self._ALLOWED[self.state]:
            raise RuntimeError(f"window is {self.state.value}, cannot become {new.value}")
        self.state = new
        self._notify()

    def _check(self) -> None:
        if self.state is WindowState.FAILED:
            assert self.error is not None
            raise self.error
        if self.state is WindowState.CLOSED:
            raise RuntimeError("window closed")

    async def claim(self, start: int, last: int, unit: int) -> int:
        """Wait for room, then admit bytes [start, returned end]: at most `unit`
        of them, not past `last`, and no more than the window holds. Producers
        claim in offset order, each from the end of the previous claim."""
        self._unit = unit
        while True:
            self._check()
            end = start + min(unit, self.capacity, last - start + 1) - 1
            if end + 1 - self.consumed <= self.capacity:
                self.admitted = max(self.admitted, end)
                # A reader already waiting for bytes looks again: if this claim
                # filled the window, the window now holds it back (it may grow
                # while this range is still being fetched, or retried).
                self._notify()
                return end
            await self._wait()

    def _give_back(self) -> None:
        """The reader drained: while the budget is overdrawn, shrink towards the
        floor, never below the bytes already admitted."""
        memory = self._memory
        if memory is None or not memory.over or self.capacity <= self.floor:
            return
        keep = max(self.floor, self.admitted + 1 - self.consumed)
        give = min(self.capacity - keep, memory.over)
        if give > 0:
            self.capacity -= give
            memory.give(give)

    def _grow_if_held_back(self) -> None:
        """The reader waits for bytes. If the window has no room for the next
        range, the window is what holds the reader back: double it, from free
        memory, at most once per half window (or per quarter range, if less)
        the reader consumed (so the first bytes a reader swallows at once do not
        grow it several times, and a window that a slow link needs many ranges
        of still grows within a few: docs/design.md, Stream memory)."""
        memory = self._memory
        if self._grow_to is not None:
            most = min(self._grow_to(), self.end - self.start + 1)
            self.max_capacity = max(self.capacity, most)
        if memory is None or self.capacity >= self.max_capacity or self.admitted >= self.end:
            return
        room = self.consumed + self.capacity - (self.admitted + 1)
        if room >= min(self._unit, self.end - self.admitted):
            return  # a producer can claim more: S3, not the window, is slow
        if self.consumed - self._grown_at < min(self._unit // 4, self.capacity // 2):
            return
        more = memory.grow(min(self.capacity, self.max_capacity - self.capacity))
        if more:
            self.capacity += more
            self._grown_at = self.consumed
            self._notify()

    def put(self, offset: int, data: memoryview) -> None:
        """A received slice (copied: the caller's buffer is reused)."""
        if self.state is not WindowState.OPEN:
            return
        if offset < self.next:  # already delivered (a retried range)
            data = data[self.next - offset :]
            offset = self.next
        if not data:
            return
        if offset + len(data) > self.consumed + self.capacity:
            raise RuntimeError(f"bytes at {offset} were never admitted to the window")
        heapq.heappush(self._heap, (offset, bytes(data)))
        self._grow(len(data))
        self._notify()

    def _grow(self, n: int) -> None:
        self.buffered += n
        self.peak = max(self.peak, self.buffered)
        self.observer.stream_buffered(n)

    async def get(self) -> bytes | None:
        """The next chunk in order, None at the end. Asking for it reports the
        previous chunk consumed."""
        if self.consumed < self.next:
            self._grow(self.consumed - self.next)
            self.consumed = self.next
            self._give_back()
            self._notify()
        while True:
            self._check()
            if self.next > self.end:
                return None
            while self._heap and self._heap[0][0] <= self.next:
                offset, chunk = heapq.heappop(self._heap)
                skip = self.next - offset
                if skip >= len(chunk):
                    self._grow(-len(chunk))  # duplicate of delivered bytes
                    continue
                if skip:
                    self._grow(-skip)
                    chunk = chunk[skip:]
                self.next += len(chunk)
                return chunk
            self._grow_if_held_back()
            await self._wait()

    def fail(self, exc: BaseException) -> None:
        # A producer failing after the reader left (CLOSED) has no one to tell.
        if self.state is WindowState.OPEN:
            self.error = exc
            self._transition(WindowState.FAILED)

    def close(self) -> None:
        """Release everything held; producers and reader see the window closed."""
        if self.state is not WindowState.CLOSED:
            self._transition(WindowState.CLOSED)
        self._heap.clear()
        if self.buffered:
            self.observer.stream_buffered(-self.buffered)
            self.buffered = 0
        if self._memory is not None:
            self._memory.give(self.capacity)
            self._memory = None
