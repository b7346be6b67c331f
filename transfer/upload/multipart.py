"""The upload engine: bytes arriving on the socket -> one object in S3.

Design note (docs/design.md, Outputs). `upload` runs in the API handler's
task; it reads the body part by part from a `BodySource` (the request's
stream: while nobody reads it, aiohttp stops reading the socket, so the
encoder's writes block) and hands full parts to tasks of its own
`asyncio.TaskGroup`, one per part. A body that ends below `part_size` is one
PutObject; anything else is a multipart upload whose parts go up in
parallel. Memory per upload: a part buffer is taken before it is filled and
given back when S3 acknowledged the part; an upload holds at most
`memory // part_size` buffers (at least one), and all uploads together draw
them from the daemon's one `UploadMemory` (transfer/upload/memory.py): the
first buffer is the upload's floor, always granted, the others come from
the free budget only. So a slow S3, or many uploads, slow the readers, not
the heap.

Every part (and a single PutObject) carries its CRC32C (`x-amz-checksum-
crc32c`), which S3 verifies before it stores the bytes; the payload itself
is sent as UNSIGNED-PAYLOAD (the checksum is its integrity, TLS its
secrecy). A part that fails with a TransientError is retried up to
`retries` times with capped exponential backoff; any other error, a short
body, the client going away (the read raises or the task is cancelled)
aborts the multipart upload (shielded from the cancellation) so that
neither an object nor parts remain. The `UploadJournal` hears of every
multipart upload between CreateMultipartUpload and its end, so a daemon
restarted after a crash can abort what it left behind.

`UploadClient` is the seam to S3 for writes (put_object, create_multipart,
upload_part, complete, abort, list_multipart_uploads); `S3Uploader` is its
real implementation, signing with botocore's SigV4 and sending through the
shared connection pool of transfer/s3/pool.py; the fake lives in
tests/fakes/upload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from s3feed.transfer.checksums import composite, crc32c
from s3feed.transfer.config import MiB
from s3feed.transfer.errors import IncompleteBody, TransientError
from s3feed.transfer.retry import first_error
from s3feed.transfer.upload.memory import PartBuffers, UploadMemory

MIN_PART = 5 * MiB  # S3's smallest part but the last
MAX_PARTS = 10_000
CHECKSUM = "CRC32C"
T = TypeVar("T")


@dataclass(frozen=True)
class UploadConfig:
    """Memory bound per upload: max(part_size, memory // part_size x part_size)."""

    part_size: int = 16 * MiB
    memory: int = 64 * MiB  # [transfer] upload_memory
    retries: int = 10  # attempts per part beyond the first
    stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART:
            raise ValueError("the upload part size must be at least 5MiB (S3's minimum)")
        if self.memory < 1:
            raise ValueError("transfer.upload_memory must be > 0")


@dataclass(frozen=True)
class Encryption:
    """The destination's server-side encryption, as S3 headers."""

    algorithm: str | None = None  # "AES256" | "aws:kms"
    kms_key_id: str | None = None

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.algorithm:
            h["x-amz-server-side-encryption"] = self.algorithm
        if self.kms_key_id:
            h["x-amz-server-side-encryption-aws-kms-key-id"] = self.kms_key_id
        return h


@dataclass(frozen=True)
class PartDone:
    number: int
    etag: str
    checksum: str  # base64 CRC32C of the part


READ_SLICE = 1024 * 1024  # bytes asked of the body per read (_read_part)


@dataclass(frozen=True)
class UploadResult:
    key: str  # full S3 key
    bucket: str
    etag: str
    size: int
    checksum: dict[str, str] = field(default_factory=dict)


class BodyError(Exception):
    """A `BodySource`'s body broke off: it could not be read as sent (bad
    framing or encoding). Each source translates its own errors into this one,
    so the engine knows no HTTP server's."""


class BodySource(Protocol):
    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end. Raises a ConnectionError (or another
        OSError) when the client went away, `BodyError` when the body broke off."""
        ...


class UploadClient(Protocol):
    """S3's write operations on one bucket with one job's credentials. Each
    raises transfer/errors.py: AccessDenied (naming the permission),
    TransientError (worth retrying), ObjectStoreError."""

    bucket: str

    async def put_object(
        self, key: str, body: memoryview, checksum: str, headers: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        """-> (ETag, checksums S3 echoed)"""
        ...

    async def create_multipart(self, key: str, headers: Mapping[str, str]) -> str:
        """-> UploadId; asks for CRC32C checksums on the parts."""
        ...

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: memoryview, checksum: str
    ) -> str:
        """-> the part's ETag"""
        ...

    async def complete(
        self, key: str, upload_id: str, parts: list[PartDone]
    ) -> tuple[str, dict[str, str]]: ...

    async def abort(self, key: str, upload_id: str) -> None: ...

    async def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, UploadId) of the multipart uploads under prefix."""
        ...


class UploadJournal(Protocol):
    def started(self, bucket: str, key: str, upload_id: str) -> None: ...
    def ended(self, bucket: str, key: str, upload_id: str) -> None: ...


class NullJournal:
    def started(self, bucket: str, key: str, upload_id: str) -> None:
        pass

    def ended(self, bucket: str, key: str, upload_id: str) -> None:
        pass


Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Upload:
    """One upload's live state, for the job document and metrics."""

    key: str
    size_hint: int | None = None
    received: int = 0
    sent: int = 0  # bytes S3 acknowledged
    parts_in_flight: int = 0
    on_sent: Callable[[int], None] = lambda n: None
    on_part: Callable[[float], None] = lambda seconds: None  # part latency


# An output's Content-Type when its request names none (docs/design.md, URLs
# for encoders): what players and CDNs expect of an HLS or DASH ladder.
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".vtt": "text/vtt",
}


def content_type_for(key: str, requested: str | None = None) -> str:
    """The request's Content-Type, else the one the key's extension names."""
    if requested:
        return requested
    dot = key.rfind(".")
    ext = key[dot:].lower() if dot > key.rfind("/") else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


async def upload(
    body: BodySource,
    client: UploadClient,
    key: str,
    *,
    config: UploadConfig,
    state: Upload,
    encryption: Encryption = Encryption(),
    content_type: str | None = None,
    journal: UploadJournal | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
    memory: UploadMemory | None = None,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> UploadResult:
    """Upload what `body` delivers to `key` (docs/design.md, Outputs).

    `ready` is awaited once the body may flow: at once for a body that may
    be a single PutObject, after CreateMultipartUpload when `size_hint` says
    it will be multipart (so a refusal answers before the body is sent).
    `memory` is the daemon's budget of all uploads' part buffers; None: one
    of `config.memory` for this upload alone.
    """
    journal = journal or NullJournal()
    headers = encryption.headers()
    if content_type:
        headers["Content-Type"] = content_type
    part_size = config.part_size
    if state.size_hint is not None:
        # 10,000 parts at most: a known large body gets larger parts.
        part_size = max(part_size, -(-state.size_hint // MAX_PARTS))
    upload_id: str | None = None
    if state.size_hint is not None and state.size_hint >= part_size:
        upload_id = await client.create_multipart(key, headers)
        journal.started(client.bucket, key, upload_id)
    try:
        if ready is not None:
            await ready()
        if memory is None:
            memory = UploadMemory(max(config.memory, part_size))
        buffers = PartBuffers(memory, part_size, most=max(1, config.memory // part_size))
        try:
            await buffers.acquire()  # the floor: free at once
            # A list the parts' sender empties: no frame here keeps the first part alive.
            first = [await _read_part(body, part_size, state)]
            if upload_id is None and len(first[0]) < part_size:
                return await _put_single(
                    client, key, first.pop(), headers, state, config, sleep, rand
                )
            if upload_id is None:
                upload_id = await client.create_multipart(key, headers)
                journal.started(client.bucket, key, upload_id)
            parts = await _send_parts(
                body,
                client,
                key,
                upload_id,
                first,
                part_size,
                buffers,
                state,
                config,
                sleep,
                rand,
            )
        finally:
            buffers.close()
        etag, echoed = await _retrying(
            lambda: client.complete(key, upload_id, parts), config, sleep, rand
        )
        checksum = echoed.get(CHECKSUM) or composite([p.checksum for p in parts])
        result = UploadResult(key, client.bucket, etag, state.received, {CHECKSUM: checksum})
    except BaseException:
        if upload_id is not None:
            await _abort(client, key, upload_id)
        raise
    finally:
        if upload_id is not None:
            journal.ended(client.bucket, key, upload_id)
    return result


async def _abort(client: UploadClient, key: str, upload_id: str) -> None:
    # Shielded: the abort must reach S3 even when the client's going away
    # cancelled us; a failed abort stays in the journal's file for the next start.
    task = asyncio.ensure_future(client.abort(key, upload_id))
    with contextlib.suppress(Exception):
        await asyncio.shield(task)


async def _read_part(body: BodySource, size: int, state: Upload) -> bytearray:
    # Filled in place: appending grew it by reallocation, so a part briefly
    # took up to twice its size (docs/design.md, Outputs: memory per upload).
    # At most READ_SLICE per read: aiohttp raises its request buffer's high
    # water mark to twice the largest read asked for, so reading a 16 MiB part
    # at once let it buffer 32 MiB more of the body.
    buf = bytearray(size)
    view = memoryview(buf)
    filled = 0
    while filled < size:
        try:
            chunk = await body.read(min(size - filled, READ_SLICE))
        except (ConnectionError, OSError, EOFError) as e:
            raise IncompleteBody(f"the client went away after {state.received} bytes: {e}") from e
        except BodyError as e:
            raise IncompleteBody(f"the body broke off after {state.received} bytes: {e}") from e
        if not chunk:
            break
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
        state.received += len(chunk)
    view.release()
    if filled < size:
        if state.size_hint is not None and state.received != state.size_hint:
            raise IncompleteBody(
                f"the body ended after {state.received} of {state.size_hint} bytes (Content-Length)"
            )
        del buf[filled:]
    return buf


async def _put_single(
    client: UploadClient,
    key: str,
    data: bytearray,
    headers: Mapping[str, str],
    state: Upload,
    config: UploadConfig,
    sleep: Sleep,
    rand: Callable[[], float],
) -> UploadResult:
    checksum = crc32c(data)
    view = memoryview(data)
    etag, echoed = await _retrying(
        lambda: _timed(state, client.put_object(key, view, checksum, headers)), config, sleep, rand
    )
    state.sent += len(data)
    state.on_sent(len(data))
    return UploadResult(
        key, client.bucket, etag, len(data), {CHECKSUM: echoed.get(CHECKSUM, checksum)}
    )


async def _send_parts(
    body: BodySource,
    client: UploadClient,
    key: str,
    upload_id: str,
    first: list[bytearray],
    part_size: int,
    buffers: PartBuffers,
    state: Upload,
    config: UploadConfig,
    sleep: Sleep,
    rand: Callable[[], float],
) -> list[PartDone]:
    done: list[PartDone] = []

    async def send(number: int, data: bytearray) -> None:
        try:
            checksum = crc32c(data)
            view = memoryview(data)
            state.parts_in_flight += 1
            etag = await _retrying(
                lambda: _timed(state, client.upload_part(key, upload_id, number, view, checksum)),
                config,
                sleep,
                rand,
            )
            done.append(PartDone(number, etag, checksum))
            state.sent += len(data)
            state.on_sent(len(data))
        finally:
            state.parts_in_flight -= 1
            buffers.release()

    try:
        async with asyncio.TaskGroup() as tg:
            number, data = 1, first.pop()
            while True:
                tg.create_task(send(number, data), name=f"part {number} of {key}")
                del data  # the task holds it; this frame must not
                await buffers.acquire()  # backpressure: no buffer, no read
                data = await _read_part(body, part_size, state)
                if not data:
                    buffers.release()
                    break
                number += 1
                if number > MAX_PARTS:
                    raise IncompleteBody(
                        f"the body exceeds {MAX_PARTS} parts of {part_size} bytes; send "
                        "Content-Length so that the part size fits it"
                    )
    except BaseExceptionGroup as group:
        # The first real failure is the upload's (the others are its echoes).
        raise first_error(group) from None
    return sorted(done, key=lambda p: p.number)


async def _timed(state: Upload, request: Awaitable[T]) -> T:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await request
    state.on_part(loop.time() - started)
    return result


async def _retrying(
    attempt: Callable[[], Awaitable[T]],
    config: UploadConfig,
    sleep: Sleep,
    rand: Callable[[], float],
) -> T:
    for n in range(config.retries + 1):
        try:
            return await attempt()
        except TransientError:
            if n == config.retries:
                raise
            # Full jitter, capped: many parts retrying at once spread out.
            await sleep(min(5.0, 0.1 * 2**n) * rand())
    raise AssertionError("unreachable")
