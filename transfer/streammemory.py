"""One memory budget for all stream windows: `[transfer] stream_memory`.

Design note (docs/design.md, Stream memory). Every StreamWindow
(transfer/window.py) holds a grant of this budget as its capacity, and a
stream's early GET (transfer/stream.py) one for its bytes until its window
opens; the engine owns the one `StreamMemory`. All of it runs on the event loop without awaits,
so a grant is taken or given back in one step.

- A new window asks for a part (or its whole range, if smaller) and gets what
  is free, but never less than its floor (`MIN_WINDOW`): a stream always
  starts, even with the budget spent. Only floors overdraw the budget.
- A window grows (doubling, up to `Engine.window_max`: `stream_window`, or a
  part per GET the link needs in flight) only when its reader waits
  for bytes while its producers wait for room: the window, not S3, is what
  holds the reader back. Growth comes from the free part only.
- While grants exceed the budget (`over`), every window whose reader drains
  gives back what it no longer needs, down to its floor and never below the
  bytes already admitted; a closed window gives back everything.

So `used <= budget + (windows started while the budget was spent) x
MIN_WINDOW`, and once those drain, `used <= budget`.
"""

from __future__ import annotations

from s3feed.transfer.observer import TransferObserver

MIN_WINDOW = 512 * 1024  # the floor of a stream's window: one range of this size


class StreamMemory:
    def __init__(self, budget: int, observer: TransferObserver) -> None:
        self.budget = budget
        self.used = 0
        self.peak = 0
        self._observer = observer
        observer.stream_memory(0, budget)

    @property
    def free(self) -> int:
        return max(0, self.budget - self.used)

    @property
    def over(self) -> int:
        """Bytes granted beyond the budget (by floors), to be given back."""
        return max(0, self.used - self.budget)

    def take(self, want: int, floor: int) -> int:
        """A new window's grant: `want` if free, else what is free, at least `floor`."""
        return self._add(max(floor, min(want, self.free)))

    def grow(self, want: int) -> int:
        """Up to `want` more for a window, from the free part only."""
        return self._add(min(want, self.free))

    def give(self, n: int) -> None:
        if n > 0:
            self._add(-n)

    def _add(self, n: int) -> int:
        if n:
            self.used += n
            self.peak = max(self.peak, self.used)
            self._observer.stream_memory(self.used, self.budget)
        return n
