"""How many ranged GETs a transfer keeps in flight: `LinkRate` and `InflightSlots`.

Design note (docs/design.md, Transfers: In flight). S3 caps what one
connection carries (about 85-95 MB/s per GET in-region, less across regions)
and answers every request after a round trip, so a transfer needs as many GETs
in flight as it takes to reach `[transfer] target_throughput`. The engine
learns the rate one GET connection carries from the GETs it runs: each GET
that ends well is one sample, its bytes over the time from its request to its
last byte, together with the GETs the engine had flowing meanwhile. The round
trip is in it on purpose: a GET of S bytes holds its place in flight for
RTT + S / (the link's rate), so S over that is what each GET in flight adds;
and a GET whose bytes waited in the socket buffer while the loop was busy is
not taken for a faster link (timing from its first slice would be).

What the samples decide, over the last `SAMPLES` of them:
- `per_connection`: the fastest sample, what one connection carries when it
  shares nothing (a max, not a mean: the GETs of a busy engine share the host's
  CPU and the samples of a crowded moment are slower than the link).
- the count: ceil(target / per_connection), at least 1.
- a shared bottleneck: if the most the engine moved at once (a sample's rate x
  the GETs flowing with it) came with connections well below `per_connection`
  (under `SHARED`), something all connections share (the CPU on loopback, a
  host's NIC) is the limit, not each connection's cap: more GETs would only
  share it thinner. The count is then what fills that bottleneck at the
  per-connection rate, plus one to keep probing: on loopback, where one GET
  runs at the machine's pace, two or three.
- never fewer than `MIN_COUNT` (two): with one GET in flight, each GET's
  request and first byte wait with nothing else arriving; with two, one's
  round trip overlaps the other's bytes. A cache fetch keeps at least
  `MIN_DOWNLOAD` (four) in flight: it holds no window, and on a host-bound
  loopback four ran faster and cheaper than the two or three estimated.

Before any sample the count is `INITIAL` (the fixed count of earlier versions).
Samples come from an injected clock (the engine's `monotonic`), so tests feed
them directly or through a fake store on a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Callable

SAMPLES = 64  # GETs the estimate looks back over
MIN_SAMPLE_BYTES = 256 * 1024  # a shorter GET says more about its round trip than the link
SHARED = 0.8  # below this share of `per_connection`, connections share a bottleneck
INITIAL = 8  # GETs in flight per transfer before any rate is known
MIN_COUNT = 2  # so one GET's round trip overlaps another's bytes
# A cache fetch's floor (Engine.download_inflight): where the host, not the
# link, is the limit (loopback) the estimate says 2-3, and 4 ran faster and
# cheaper (docs/design.md, Performance notes: GETs in flight).
MIN_DOWNLOAD = 4


class LinkRate:
    """The engine-wide estimate of the per-connection rate, and the GET count it asks for."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=SAMPLES)  # (bytes/s, flowing)
        self._count: dict[int, int] = {}  # target -> count, for the current samples
        self._slots: weakref.WeakSet[InflightSlots] = weakref.WeakSet()  # transfers to wake

    def sample(self, nbytes: int, seconds: float, flowing: float) -> None:
        """One GET moved `nbytes` in `seconds` while `flowing` GETs (itself
        included) ran in the engine."""
        if nbytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return
        self._samples.append((nbytes / seconds, max(1.0, flowing)))
        self._count.clear()
        for slots in self._slots:
            slots.wake()  # a count that rose lets a waiting transfer start a GET now

    def watch(self, slots: InflightSlots) -> None:
        """Wake `slots` at every sample (held weakly: a finished transfer drops out)."""
        self._slots.add(slots)

    @property
    def per_connection(self) -> float | None:
        """Bytes per second one GET connection carries, None before any sample."""
        return max(r for r, _ in self._samples) if self._samples else None

    def count(self, target: float) -> int:
        """GETs in flight to reach `target` bytes per second (INITIAL before any sample)."""
        if not self._samples:
            return INITIAL
        cached = self._count.get(int(target))
        if cached is not None:
            return cached
        per_conn = max(r for r, _ in self._samples)
        rate, flowing = max(self._samples, key=lambda s: s[0] * s[1])
        n = math.ceil(target / per_conn)
        if rate < SHARED * per_conn:  # a shared bottleneck: fill it, do not crowd it
            n = min(n, math.ceil(rate * flowing / per_conn) + 1)
        n = max(MIN_COUNT, n)
        self._count[int(target)] = n
        return n


class InflightSlots:
    """One transfer's GETs in flight: a new one starts only while fewer than
    `limit()` run (read each time a GET ends or, with `link`, a sample comes,
    so a transfer follows the estimate as it moves)."""

    def __init__(self, limit: Callable[[], int], link: LinkRate | None = None) -> None:
        self._limit = limit
        self.active = 0
        self.peak = 0
        self._freed = asyncio.Event()
        if link is not None:
            link.watch(self)

    def limit(self) -> int:
        """GETs in flight this transfer may have now."""
        return self._limit()

    async def acquire(self) -> None:
        while self.active >= self._limit():
            await self._freed.wait()
        self.active += 1
        self.peak = max(self.peak, self.active)

    def release(self) -> None:
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """A waiting `acquire` looks at the limit again."""
        self._freed.set()
        self._freed = asyncio.Event()
