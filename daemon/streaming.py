"""GET /v1/jobs/{JobId}/objects/{Key}: an object, in order, over the socket.

Design note. The handler runs in aiohttp's request task. It asks S3 (HEAD
with the job's own credentials) for size and ETag first: that is both the
access check and what picks the cache entry. A complete cache entry for that
ETag is read with pread and written out; otherwise the engine's stream fetches ranges in
parallel into a bounded window and this task writes them out in order.
`resp.write` waits while the socket's buffer is full, so a slow reader stops
the window from advancing and the window stops the fetches: memory stays
under [transfer] stream_window. When the reader goes away, `write` raises,
leaving the `async with` cancels the stream's fetches. A failure after the
headers went out aborts the connection: the reader sees a short body (the
Content-Length says so), never wrong bytes. The record is done when the
last byte is handed to the socket, before the reader can have it: a reader
holding every byte that asks about the job sees the stream done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time

from aiohttp import web

from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import InvalidRange
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.store import ObjectMeta

from .errors import describe
from .jobs import Job, TransferRecord, TransferState

log = logging.getLogger("s3feed.stream")

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
FILE_CHUNK = 1024 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single-range header, or None for the whole object.

    Multi-range and unparsable headers are ignored (whole object, 200), as
    DESIGN.md says; a well-formed range outside the object raises InvalidRange.
    """
    if not header:
        return None
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.group(1), m.group(2)
    unsatisfiable = InvalidRange(
        f"range {header.strip()!r} is outside the object, which has {size} bytes", size
    )
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        raise unsatisfiable
    return first, min(last, size - 1)


async def stream_object(
    request: web.Request,
    job: Job,
    key: str,
    full_key: str,
    engine: Engine,
    observer: TransferObserver,
) -> web.StreamResponse:
    meta = await job.store.head(full_key)
    byte_range = parse_range(request.headers.get("Range"), meta.size)
    first, last = byte_range if byte_range else (0, meta.size - 1)
    length = last - first + 1 if meta.size else 0

    resp = web.StreamResponse(status=206 if byte_range else 200)
    resp.content_length = length
    resp.content_type = "application/octet-stream"
    resp.headers["ETag"] = meta.etag
    resp.headers["Accept-Ranges"] = "bytes"
    resp.last_modified = meta.last_modified
    if byte_range:
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{meta.size}"

    record = job.new_record("stream", key)
    record.progress.start(time.monotonic(), length)
    record.move(TransferState.RUNNING)
    job.stream_opened()
    observer.transfer_started("stream")
    out = _Delivery(request, resp, record, observer)
    try:
        entry = job.cache.lookup(job.store, full_key, meta.etag)
        cached = None
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):  # evicted since: S3 has it
                cached = open(entry.path, "rb", buffering=0)  # noqa: ASYNC230, SIM115 (a local open)
        if cached is not None:
            resp.headers["X-S3feed-Source"] = "cache"
            with cached:
                await _send_file(out, cached.fileno(), first, length)
        else:
            resp.headers["X-S3feed-Source"] = "s3"
            await _send_stream(out, job, full_key, meta, first, last, engine)
    except asyncio.CancelledError:
        out.end(TransferState.CANCELLED, ("Cancelled", "the reader went away"))
        raise
    except ConnectionError as exc:
        # The reader went away (aiohttp raises ClientConnectionResetError).
        out.end(TransferState.CANCELLED, ("Cancelled", f"the reader went away: {exc.__class__.__name__}"))  # fmt: skip
        return resp
    except Exception as exc:
        if record.state is TransferState.DONE:
            # Every byte was handed over; what failed after it is not the reader's.
            log.warning("stream teardown failed", exc_info=True, extra={"job_id": job.job_id})
            return resp
        _, code, message, _ = describe(exc)
        out.end(TransferState.FAILED, (code, message))
        if not resp.prepared:
            raise
        log.warning(
            "stream aborted after headers",
            extra={"job_id": job.job_id, "tenant": job.tenant, "key": key, "code": code},
        )  # fmt: skip
        if request.transport is not None:
            request.transport.abort()
        return resp
    finally:
        job.stream_closed()
    return resp


_OUTCOMES = {
    TransferState.DONE: "success",
    TransferState.FAILED: "failed",
    TransferState.CANCELLED: "cancelled",
}


class _Delivery:
    """Writes a stream's bytes to the reader and keeps its record and metrics."""

    def __init__(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        record: TransferRecord,
        observer: TransferObserver,
    ) -> None:
        self.request = request
        self.resp = resp
        self.record = record
        self.observer = observer
        self.started = time.monotonic()

    async def prepare(self) -> None:
        if self.record.progress.size == 0:
            self.end(TransferState.DONE)  # the headers are the whole response
        await self.resp.prepare(self.request)

    async def send(self, chunk: bytes) -> None:
        progress = self.record.progress
        progress.add(len(chunk))
        self.observer.bytes_served("stream", len(chunk))
        if progress.bytes_done == progress.size:
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the reader went away")
            self.end(TransferState.DONE)  # resp.write hands the bytes over before it yields
        await self.resp.write(chunk)

    def end(self, state: TransferState, error: tuple[str, str] | None = None) -> None:
        """Settle the record and the metrics, once; a reader leaving or a
        teardown failing after the last byte leaves it done."""
        if self.record.state is not TransferState.RUNNING:
            return
        now = time.monotonic()
        if state is TransferState.DONE:
            self.record.progress.finish(now)
        self.record.error = error
        self.record.move(state)
        self.observer.transfer_finished("stream", _OUTCOMES[state], now - self.started)


async def _send_stream(
    out: _Delivery,
    job: Job,
    full_key: str,
    meta: ObjectMeta,
    first: int,
    last: int,
    engine: Engine,
) -> None:
    if meta.size == 0:
        await out.prepare()
        await out.resp.write_eof()
        return
    async with engine.stream(
        job.store, full_key, tenant=job.tenant, start=first, end=last, meta=meta
    ) as stream:
        await out.prepare()
        async for chunk in stream:
            await out.send(chunk)
    await out.resp.write_eof()


async def _send_file(out: _Delivery, fd: int, offset: int, count: int) -> None:
    """Send `count` bytes of a cache file from `offset`.

    uvloop has no loop.sendfile, so the file is read in 1 MiB slices and
    written through the transport (one copy more than sendfile(2); the
    transport's flow control still paces a slow reader).
    """
    await out.prepare()
    while count > 0:
        chunk = os.pread(fd, min(count, FILE_CHUNK), offset)
        if not chunk:
            raise RuntimeError(f"a cache file ended {count} bytes early")
        await out.send(chunk)
        offset += len(chunk)
        count -= len(chunk)
    await out.resp.write_eof()
