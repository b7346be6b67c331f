"""The one seam between transfer/ and S3: head, part layout, ranged get, list.

`ObjectStore` declares every capability the code above it uses; nothing
above this seam asks a store for anything else (no `getattr` probes).
`S3ObjectStore` (transfer/s3/objects.py) is the real implementation, every
request through the daemon's one S3 client (transfer/s3/client.py), bodies
received into a reused buffer and handed to the caller's sink without
copying. `FakeObjectStore` and `FailingObjectStore` (tests/fakes/store.py)
implement the same contract for unit tests, and one parametrised suite
(tests/integration/test_store_contract.py) holds the fakes and the real
store on SeaweedFS and ministack to it (docs/design.md, Transfers).

Keys here are full S3 keys (the job's folder already joined); a store is
bound to one bucket and one job's credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ObjectMeta:
    key: str
    size: int
    etag: str  # as S3 returns it, quotes included
    last_modified: datetime
    version_id: str | None = None
    # Checksums S3 returned with ChecksumMode=ENABLED, e.g. {"CRC32C": "base64=="}.
    checksums: dict[str, str] = field(default_factory=dict)
    checksum_type: str | None = None  # "FULL_OBJECT" or "COMPOSITE"
    # x-amz-server-side-encryption, e.g. "aws:kms" (an ETag that is not an MD5).
    encryption: str | None = None


@dataclass(frozen=True)
class RangeMeta:
    """What a ranged GET learned about the whole object (from its headers)."""

    size: int  # total object size (Content-Range's /SIZE)
    etag: str
    last_modified: datetime | None = None
    version_id: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    checksum_type: str | None = None


@dataclass(frozen=True)
class ObjectPage:
    """One page of a listing; `next_token` is None on the last page."""

    objects: list[ObjectMeta]
    next_token: str | None = None


MAX_KEYS = 1000  # S3's own cap on a ListObjectsV2 page


class BodySink(Protocol):
    def write(self, offset: int, data: memoryview) -> None:
        """Consume `data`, which starts at absolute object offset `offset`.

        Called synchronously from the receiving code; `data` is only valid
        during the call (the buffer is reused), so copy or pwrite it now.

        A sink may also have `answered(meta: RangeMeta)`: a store calls it
        once the answer's head has arrived, before the first `write` (a
        stream's early GET learns the ETag there; it may raise to drop the
        body: transfer/stream.py, EarlyGet).
        """


class ObjectStore(Protocol):
    bucket: str
    endpoint: str  # where requests go; part of the cache key

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        """Raises NoSuchKey, AccessDenied, SourceChanged (If-Match failed), TransientError."""
        ...

    async def part_size(self, key: str, *, if_match: str | None = None) -> int | None:
        """The size of the object's part 1 (S3: HEAD ?partNumber=1, its
        Content-Length); the object's size when it has no parts; None when the
        store cannot tell (a server that ignores partNumber: the layout is then
        guessed). Raises as `head`. With part 1's size and the `-N` ETag the
        whole layout follows (every part but the last has part 1's size)."""
        ...

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
        """GET bytes start..end (inclusive; end None = to the end) into `sink`.

        Delivers the body as it arrives and returns what the answer said of
        the whole object; a body whose ETag is not `if_match` is refused
        before its first byte (SourceChanged), even from a server that
        ignores If-Match. Raises NoSuchKey, AccessDenied,
        SourceChanged (412), InvalidRange (416), or TransientError with a
        reason (5xx, throttling, reset, truncated body, stall). Bytes already
        handed to the sink before a TransientError are valid: the caller may
        retry from where they stopped.
        """
        ...

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        """Every object under prefix, all pages, no delimiter."""
        ...

    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage:
        """At most `max_keys` (1..1000) objects under prefix, after `token` (the
        `next_token` of the previous page, opaque). Every key returned starts
        with `prefix`, whatever the token says. Raises InvalidContinuationToken
        for a token the store did not issue, AccessDenied, TransientError."""
        ...

    async def connect(self) -> None:
        """Build what the first request needs (clients, connections), so that it
        does not pay for it. Called when a job registers; optional to await."""
        ...

    async def close(self) -> None: ...


class Paged(Protocol):
    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage: ...


async def every_object(store: Paged, prefix: str) -> AsyncIterator[ObjectMeta]:
    """Every object under `prefix`: `store.list_page` followed page by page."""
    token = None
    while True:
        page = await store.list_page(prefix, token=token)
        for meta in page.objects:
            yield meta
        if page.next_token is None:
            return
        token = page.next_token
