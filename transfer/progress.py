"""How much of a transfer is done: `Progress` for the API, `RangeSet` for resuming.

`Progress` is written by the engine (one event loop, no locks) and read by the
API's fetch documents; `followers` lets a shared download (the cache's single
flight) keep every waiting job's own Progress current.

`RangeSet` holds the byte ranges already on disk (inclusive ends, as HTTP
ranges are), merged and sorted; the cache's sidecar persists it so a restart
fetches only what is missing.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class Progress:
    size: int | None = None
    bytes_done: int = 0
    started: float | None = None  # monotonic
    finished: float | None = None  # monotonic
    verified: list[str] = field(default_factory=list)  # checksum kinds verified
    # Bytes that were already done when this run started (resumed from disk):
    # they count in bytes_done but not in the rate.
    resumed: int = 0
    followers: list[Progress] = field(default_factory=list, repr=False)
    # Set when the transfer starts moving bytes: everything that can fail
    # before that (missing key, access, room in the cache) has been checked.
    moving: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def start(self, now: float, size: int, resumed: int = 0) -> None:
        for p in self._all():
            p.moving.set()
            p.started = now if p.started is None else p.started
            p.finished = None
            p.size = size
            p.bytes_done = resumed
            p.resumed = resumed

    def add(self, n: int) -> None:
        for p in self._all():
            p.bytes_done += n

    def finish(self, now: float, verified: Iterable[str] = ()) -> None:
        kinds = list(verified)
        for p in self._all():
            p.finished = now
            p.verified = list(kinds)

    def rate(self, now: float) -> float:
        """Bytes per second moved by this run (resumed bytes excluded)."""
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else now
        elapsed = end - self.started
        if elapsed <= 0:
            return 0.0
        return max(0, self.bytes_done - self.resumed) / elapsed

    def _all(self) -> Iterator[Progress]:
        yield self
        yield from self.followers


class RangeSet:
    """Disjoint, merged, sorted inclusive byte ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end < start:
            raise ValueError(f"empty range {start}-{end}")
        # Merge with every range that overlaps or touches [start, end].
        i = bisect.bisect_left(self._ends, start - 1)
        j = bisect.bisect_right(self._starts, end + 1)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end] not in the set, in order."""
        out: list[tuple[int, int]] = []
        pos = start
        for s, e in self:
            if e < pos:
                continue
            if s > end:
                break
            if s > pos:
                out.append((pos, s - 1))
            pos = max(pos, e + 1)
        if pos <= end:
            out.append((pos, end))
        return out

    def overlap(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end] in the set, in order."""
        return [(max(s, start), min(e, end)) for s, e in self if s <= end and e >= start]

    @property
    def total(self) -> int:
        return sum(e - s + 1 for s, e in self)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def to_json(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    @classmethod
    def from_json(cls, data: object) -> RangeSet:
        if not isinstance(data, list):
            raise ValueError("ranges must be a list")
        out = cls()
        for item in data:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, int) and x >= 0 for x in item)
            ):
                raise ValueError(f"bad range {item!r}")
            out.add(item[0], item[1])
        return out
