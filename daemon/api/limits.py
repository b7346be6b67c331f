"""Per-uid limits of the socket API: what one peer uid may hold at once.

Design note (docs/design.md, Limits). Everything here runs on the event loop
and never awaits between a check and its take, so two requests of one uid
cannot both pass the last free slot. Five limits per peer uid (SO_PEERCRED),
root included, each from `[limits]`:

- connections: taken at accept by daemon/api/connections.py, given back when the
  connection is lost; one over the limit is answered 429 and closed;
- streams: taken around a GET of an object (`stream`), given back when the
  handler returns, whatever way it ends;
- uploads: taken around a PUT of an output (`upload`), before its body is
  read, given back when the handler returns, whatever way it ends;
- jobs: the uid's live jobs (the registry counts them) plus its registrations
  still waiting for STS (counted here, so N concurrent POSTs cannot all pass);
- job creations: a token bucket holding `job_creates_per_minute_per_uid`
  tokens, refilled evenly over a minute on an injected clock.

Over a limit: ApiError LimitExceeded (429) naming the key and its value.
Only the creation rate carries Retry-After (the seconds until the next
token): the other limits free up when the uid itself ends something, which no
number of seconds predicts. A uid's entry is dropped once it holds nothing, so
memory is per active uid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from s3feed.daemon.config import LimitsConfig
from s3feed.daemon.errors import ApiError


@dataclass
class _Usage:
    connections: int = 0
    streams: int = 0
    creating: int = 0  # job registrations in flight
    uploads: int = 0

    def empty(self) -> bool:
        return not (self.connections or self.streams or self.creating or self.uploads)


@dataclass
class _Bucket:
    tokens: float
    at: float  # when `tokens` was computed


def limit_exceeded(
    key: str, value: int, uid: int, what: str, retry_after: float | None = None
) -> ApiError:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    return ApiError(
        "LimitExceeded",
        f"[limits] {key} = {value} reached for uid {uid}: {what}",
        headers=headers,
    )


class UidLimits:
    def __init__(
        self,
        config: LimitsConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        refused: Callable[[str], None] = lambda key: None,
    ) -> None:
        self.config = config
        self._monotonic = monotonic
        self._refused = refused  # metrics: one call per refusal, with the key
        self._usage: dict[int, _Usage] = {}
        self._buckets: dict[int, _Bucket] = {}

    def _get(self, uid: int) -> _Usage:
        return self._usage.setdefault(uid, _Usage())

    def _put(self, uid: int, usage: _Usage) -> None:
        if usage.empty():
            self._usage.pop(uid, None)

    # -- connections ---------------------------------------------------------------------

    def open_connection(self, uid: int) -> None:
        usage = self._get(uid)
        if usage.connections >= self.config.connections_per_uid:
            self._put(uid, usage)
            self._refused("connections_per_uid")
            raise limit_exceeded(
                "connections_per_uid",
                self.config.connections_per_uid,
                uid,
                "close a connection to the socket first",
            )
        usage.connections += 1

    def close_connection(self, uid: int) -> None:
        usage = self._get(uid)
        usage.connections -= 1
        self._put(uid, usage)

    # -- streams -------------------------------------------------------------------------

    def stream(self, uid: int) -> AbstractContextManager[Callable[[], None]]:
        """Yields a function that gives the slot back before the block ends:
        a stream calls it when its last byte is handed over, so a reader
        that opens its next stream at once is not refused for this one."""
        return self._held(
            uid, "streams", "streams_per_uid", "finish or close one of this uid's streams first"
        )

    # -- uploads -------------------------------------------------------------------------

    def upload(self, uid: int) -> AbstractContextManager[Callable[[], None]]:
        return self._held(
            uid, "uploads", "uploads_per_uid", "wait for one of this uid's uploads to finish first"
        )

    @contextmanager
    def _held(self, uid: int, count: str, key: str, fix: str) -> Iterator[Callable[[], None]]:
        """One of `uid`'s `count` (a _Usage field) while the block runs (or
        until the function it yields is called), at most `[limits] key` at once."""
        usage = self._get(uid)
        limit = getattr(self.config, key)
        if getattr(usage, count) >= limit:
            self._put(uid, usage)
            self._refused(key)
            raise limit_exceeded(key, limit, uid, fix)
        setattr(usage, count, getattr(usage, count) + 1)
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                usage = self._get(uid)
                setattr(usage, count, getattr(usage, count) - 1)
                self._put(uid, usage)

        try:
            yield release
        finally:
            release()

    def uploads(self, uid: int) -> int:
        """Uploads of `uid` running now."""
        return self._usage.get(uid, _Usage()).uploads

    # -- jobs ----------------------------------------------------------------------------

    @contextmanager
    def job_creation(self, uid: int, live_jobs: int) -> Iterator[None]:
        """Around one POST /v1/jobs of `uid`, which has `live_jobs` jobs now."""
        usage = self._get(uid)
        if live_jobs + usage.creating >= self.config.jobs_per_uid:
            self._put(uid, usage)
            self._refused("jobs_per_uid")
            raise limit_exceeded(
                "jobs_per_uid",
                self.config.jobs_per_uid,
                uid,
                "DELETE one of this uid's jobs first",
            )
        self._take_token(uid)
        usage.creating += 1
        try:
            yield
        finally:
            usage = self._get(uid)
            usage.creating -= 1
            self._put(uid, usage)

    def _take_token(self, uid: int) -> None:
        rate = self.config.job_creates_per_minute_per_uid
        now = self._monotonic()
        bucket = self._buckets.get(uid)
        tokens = float(rate)
        if bucket is not None:
            tokens = min(float(rate), bucket.tokens + (now - bucket.at) * rate / 60.0)
        if tokens < 1.0:
            self._buckets[uid] = _Bucket(tokens, now)
            self._refused("job_creates_per_minute_per_uid")
            raise limit_exceeded(
                "job_creates_per_minute_per_uid",
                rate,
                uid,
                "register jobs more slowly",
                retry_after=(1.0 - tokens) * 60.0 / rate,
            )
        self._buckets[uid] = _Bucket(tokens - 1.0, now)
        self._forget_full_buckets(now)

    def _forget_full_buckets(self, now: float) -> None:
        """A bucket refilled to the brim is the same as no bucket."""
        if len(self._buckets) < 64:
            return
        rate = self.config.job_creates_per_minute_per_uid
        for uid, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * rate / 60.0 >= rate:
                del self._buckets[uid]

    # -- for tests and /healthz ----------------------------------------------------------

    def usage(self, uid: int) -> tuple[int, int, int]:
        """(connections, streams, registrations in flight) of `uid`."""
        u = self._usage.get(uid, _Usage())
        return u.connections, u.streams, u.creating
