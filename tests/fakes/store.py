"""In-memory ObjectStores for unit tests: `FakeObjectStore` and `FailingObjectStore`.

They honour the `ObjectStore` contract of transfer/store.py as S3 does:
If-Match (412 -> SourceChanged), ranges (416 -> InvalidRange), NoSuchKey,
AccessDenied for keys marked with `deny`. Bodies go to the sink in
`chunk_size` slices of a reused buffer (so a sink that keeps a slice past its
call sees it overwritten, as with the real client), with a yield to the event
loop between slices; with `rng` set, a random number of yields, so that
parallel ranges complete in random order. `gate`, when set, is awaited before
every slice: tests use it to hold producers on an event instead of sleeping.
`pace`, when set, is a fake clock that the GETs move: S3's per-connection cap
(every GET at `rate`, however many run) or, `shared`, one link all GETs share
(loopback, where one GET runs at the host's pace); pass `pace.monotonic` as
the engine's clock. With `rtt`, every request (HEAD, part size, GET) also
takes a round trip on a causal clock (`Pace.after`, one per task, as each
connection has its own): a request's answer comes `rtt` after the time of
the task that sent it, and a task started after it inherits that time, so
requests sent together overlap and requests sent one after another add up,
whatever order the event loop runs them in.
Each answer calls the sink's `answered` (transfer/store.py) before its body.

`FailingObjectStore` wraps any ObjectStore (a fake or the real one) and
injects the faults the engine must survive into its GETs, HEADs and listing
pages, per call number, and records every call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from s3feed.transfer.errors import (
    AccessDenied,
    InvalidContinuationToken,
    InvalidRange,
    NoSuchKey,
    SourceChanged,
    TransientError,
)
from s3feed.transfer.store import (
    MAX_KEYS,
    BodySink,
    ObjectMeta,
    ObjectPage,
    ObjectStore,
    RangeMeta,
    every_object,
)

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class _Object:
    data: bytes
    etag: str
    parts: list[tuple[int, int]] | None
    checksums: dict[str, str]
    checksum_type: str | None
    version: int  # bumped on every put: S3 serves a GET from one version
    encryption: str | None = None  # x-amz-server-side-encryption


@dataclass
class Pace:
    """A fake clock that GETs advance as a paced link would (no wall time):
    each slice of n bytes moves it n / (rate x GETs running) seconds, so each
    of k parallel GETs sees `rate` bytes per second; with `shared`, n / rate, so
    they share `rate` between them."""

    rate: float
    shared: bool = False
    now: float = 0.0
    active: int = 0
    peak: int = 0  # most GETs running at once
    rtt: float = 0.0  # each request's round trip
    first_body: float | None = None  # causal time of the first body byte of any GET
    after: ContextVar[float] = field(default_factory=lambda: ContextVar("after", default=0.0))

    def monotonic(self) -> float:
        return self.now

    def answer(self, sent: float) -> None:
        """A request sent at causal time `sent` answers, a round trip later."""
        self.after.set(sent + self.rtt)
        self.now = max(self.now, sent + self.rtt)

    def moved(self, n: int) -> None:
        self.now += n / (self.rate if self.shared else self.rate * self.active)


class FakeObjectStore:
    def __init__(
        self,
        bucket: str = "b",
        endpoint: str = "fake://",
        *,
        chunk_size: int = 64 * 1024,
        rng: random.Random | None = None,
        gate: Callable[[str, int], Awaitable[None]] | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.bucket = bucket
        self.pace = pace
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self.rng = rng
        self.gate = gate
        self.objects: dict[str, _Object] = {}
        self.denied: set[str] = set()
        self.denied_all = False
        self.bytes_sent = 0
        self.get_calls = 0  # GETs asked for, answered or not
        self.head_calls = 0  # HEADs, part-size probes included
        self.closed = False
        self._versions = 0

    def put(
        self,
        key: str,
        data: bytes,
        *,
        etag: str | None = None,
        parts: int | None = None,
        part_size: int | None = None,
        checksum: str | None = None,
        encryption: str | None = None,
    ) -> str:
        """Store an object. `parts` splits it into N equal parts (the last
        shorter), `part_size` into parts of that size, as an uploader would,
        with a `-N` ETag; `checksum` ("CRC32", "CRC32C") adds that checksum:
        FULL_OBJECT for single-part, COMPOSITE for multipart; `encryption` is
        what HEAD says of it ("aws:kms": pass an `etag` that is no MD5, as S3's)."""
        layout: list[tuple[int, int]] | None = None
        if part_size:
            parts = max(1, -(-len(data) // part_size))
        if parts:
            psize = part_size or max(1, -(-len(data) // parts))
            layout = [(s, min(s + psize, len(data)) - 1) for s in range(0, len(data), psize)]
        if etag is None:
            digest = hashlib.md5(data).hexdigest()
            etag = f'"{digest}-{len(layout)}"' if layout else f'"{digest}"'
        checksums: dict[str, str] = {}
        ctype = None
        if checksum is not None:
            from s3feed.transfer.checksums import ALGORITHMS

            alg = ALGORITHMS[checksum]
            if layout:
                part_crcs = b"".join(alg.digest(alg.update(data[s : e + 1], 0)) for s, e in layout)
                value = base64.b64encode(alg.digest(alg.update(part_crcs, 0))).decode()
                checksums[checksum] = f"{value}-{len(layout)}"
                ctype = "COMPOSITE"
            else:
                checksums[checksum] = base64.b64encode(alg.digest(alg.update(data, 0))).decode()
                ctype = "FULL_OBJECT"
        self._versions += 1
        self.objects[key] = _Object(
            data, etag, layout, checksums, ctype, self._versions, encryption
        )
        return etag

    def overwrite(self, key: str, data: bytes) -> str:
        return self.put(key, data, etag=f'"{zlib.crc32(data) ^ self._versions:032x}"')

    def deny(self, key: str | None = None) -> None:
        """Refuse `key` (AccessDenied; listings skip it), or with no key the
        whole bucket, listings included, as S3 does to a role without access."""
        if key is None:
            self.denied_all = True
        else:
            self.denied.add(key)

    def _lookup(self, key: str, if_match: str | None) -> _Object:
        if key in self.denied or self.denied_all:
            raise AccessDenied(f"Access Denied: s3://{self.bucket}/{key}")
        obj = self.objects.get(key)
        if obj is None:
            raise NoSuchKey(f"s3://{self.bucket}/{key} does not exist")
        if if_match is not None and if_match != obj.etag:
            raise SourceChanged(f"s3://{self.bucket}/{key} changed (ETag {obj.etag})")
        return obj

    def _meta(self, key: str, obj: _Object) -> ObjectMeta:
        return ObjectMeta(
            key=key,
            size=len(obj.data),
            etag=obj.etag,
            last_modified=_EPOCH,
            checksums=dict(obj.checksums),
            checksum_type=obj.checksum_type,
            encryption=obj.encryption,
        )

    async def _round_trip(self) -> None:
        """Send, yield (requests sent meanwhile go out at the same time), answer."""
        sent = self.pace.after.get() if self.pace else 0.0
        await asyncio.sleep(0)
        if self.pace is not None:
            self.pace.answer(sent)

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        self.head_calls += 1
        await self._round_trip()
        return self._meta(key, self._lookup(key, if_match))

    async def part_size(self, key: str, *, if_match: str | None = None) -> int | None:
        """Size of part 1 (HEAD ?partNumber=1), the object size if single-part."""
        self.head_calls += 1
        await self._round_trip()
        obj = self._lookup(key, if_match)
        return obj.parts[0][1] + 1 if obj.parts else len(obj.data)

    async def get_range(
        self,
        key: str,
        start: int,
        end: int | None,
        sink: BodySink,
        *,
        if_match: str | None = None,
        stall_timeout: float = 30.0,
    ) -> RangeMeta:
        self.get_calls += 1
        await self._round_trip()
        obj = self._lookup(key, if_match)
        size = len(obj.data)
        if start >= size:
            raise InvalidRange(f"range start {start} beyond size {size}", size)
        last = size - 1 if end is None else min(end, size - 1)
        answer = RangeMeta(size=size, etag=obj.etag, last_modified=_EPOCH)
        answered = getattr(sink, "answered", None)
        if answered is not None:
            answered(answer)
        buf = bytearray(self.chunk_size)
        view = memoryview(buf)
        pos = start
        pace = self.pace
        if pace is not None:
            pace.active += 1
            pace.peak = max(pace.peak, pace.active)
        try:
            while pos <= last:
                if self.gate is not None:
                    await self.gate(key, pos)
                for _ in range(self.rng.randint(0, 3) if self.rng else 1):
                    await asyncio.sleep(0)
                n = min(self.chunk_size, last + 1 - pos)
                if pace is not None:
                    pace.moved(n)
                    if pace.first_body is None:
                        pace.first_body = pace.after.get()
                buf[:n] = obj.data[pos : pos + n]
                sink.write(pos, view[:n])
                self.bytes_sent += n
                pos += n
        finally:
            if pace is not None:
                pace.active -= 1
        return answer

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        for key in sorted(self.objects):
            if key.startswith(prefix) and key not in self.denied:
                yield self._meta(key, self.objects[key])

    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage:
        # The token is the last key listed, encoded: StartAfter-like, as some
        # S3 servers' are; the prefix still bounds what it can reach.
        after = ""
        if token is not None:
            try:
                after = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidContinuationToken("the continuation token is not valid") from None
        await asyncio.sleep(0)
        if self.denied_all:
            raise AccessDenied(f"Access Denied: s3://{self.bucket}/{prefix}")
        keys = [
            k
            for k in sorted(self.objects)
            if k.startswith(prefix) and k > after and k not in self.denied
        ]
        page = keys[:max_keys]
        next_token = None
        if len(keys) > max_keys:
            next_token = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return ObjectPage([self._meta(k, self.objects[k]) for k in page], next_token)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


FaultKind = Literal[
    "server_error",
    "throttled",
    "reset",
    "truncated",
    "stall",
    "expired_token",
    "source_changed",
    "access_denied",
]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    after_bytes: int = 0  # body bytes delivered before the fault strikes


@dataclass(frozen=True)
class Call:
    op: str
    key: str
    start: int | None = None
    end: int | None = None
    if_match: str | None = None


@dataclass
class FailingObjectStore:
    """Wraps any ObjectStore and injects faults, recording every call.

    `schedule[n]` strikes the n-th GET (0-based; or a function of the GET's
    number and Call), `heads[n]` the n-th HEAD (part-size probes included),
    `lists[n]` the n-th listing page. A GET fault may deliver `after_bytes`
    first; `source_changed` overwrites a FakeObjectStore's object (then the
    inner store refuses the stale ETag itself) and is SourceChanged at once
    for any other store.
    """

    inner: ObjectStore
    schedule: Mapping[int, Fault] | Callable[[int, Call], Fault | None] = field(
        default_factory=dict
    )
    heads: Mapping[int, Fault] = field(default_factory=dict)
    lists: Mapping[int, Fault] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    @property
    def bucket(self) -> str:
        return self.inner.bucket

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    @property
    def gets(self) -> list[Call]:
        return [c for c in self.calls if c.op == "GetObject"]

    def _count(self, *ops: str) -> int:
        return sum(1 for c in self.calls if c.op in ops)

    async def _strike(self, fault: Fault | None, key: str, if_match: str | None) -> None:
        """Raise what a control-plane `fault` stands for (None: nothing)."""
        if fault is None:
            return
        if fault.kind == "access_denied":
            raise AccessDenied(f"Access Denied: s3://{self.bucket}/{key}")
        if fault.kind == "source_changed":
            if isinstance(self.inner, FakeObjectStore) and key in self.inner.objects:
                self.inner.overwrite(key, b"overwritten:" + self.inner.objects[key].data)
                if if_match is None:
                    return
            raise SourceChanged(f"s3://{self.bucket}/{key} changed (injected)")
        raise TransientError(f"injected {fault.kind}", fault.kind)

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        n = self._count("HeadObject", "HeadObjectPart")
        self.calls.append(Call("HeadObject", key, if_match=if_match))
        await self._strike(self.heads.get(n), key, if_match)
        return await self.inner.head(key, if_match=if_match)

    async def part_size(self, key: str, *, if_match: str | None = None) -> int | None:
        n = self._count("HeadObject", "HeadObjectPart")
        self.calls.append(Call("HeadObjectPart", key, if_match=if_match))
        await self._strike(self.heads.get(n), key, if_match)
        return await self.inner.part_size(key, if_match=if_match)

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        return every_object(self, prefix)

    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage:
        n = self._count("ListObjectsV2")
        self.calls.append(Call("ListObjectsV2", prefix))
        await self._strike(self.lists.get(n), prefix, None)
        return await self.inner.list_page(prefix, max_keys=max_keys, token=token)

    async def get_range(
        self,
        key: str,
        start: int,
        end: int | None,
        sink: BodySink,
        *,
        if_match: str | None = None,
        stall_timeout: float = 30.0,
    ) -> RangeMeta:
        call = Call("GetObject", key, start, end, if_match)
        n = len(self.gets)
        self.calls.append(call)
        fault = self.schedule(n, call) if callable(self.schedule) else self.schedule.get(n)
        inner = self.inner
        if fault is None:
            return await inner.get_range(
                key, start, end, sink, if_match=if_match, stall_timeout=stall_timeout
            )
        if fault.kind in ("access_denied", "source_changed"):
            await self._strike(fault, key, if_match)
            return await inner.get_range(
                key, start, end, sink, if_match=if_match, stall_timeout=stall_timeout
            )
        if fault.after_bytes:
            limit = start + fault.after_bytes - 1
            limit = limit if end is None else min(limit, end)
            await inner.get_range(key, start, limit, sink, if_match=if_match)
        else:
            await asyncio.sleep(0)  # S3's error answer takes a round trip: others start meanwhile
        raise TransientError(f"injected {fault.kind}", fault.kind)

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()
