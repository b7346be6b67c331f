"""GET /v1/jobs/{JobId}/objects/{Key}: an object, in order, over the socket.

Design note. The handler runs in aiohttp's request task and only maps HTTP
onto transfer/serve.py: `ObjectServer.open` makes the access check (a HEAD
with the job's own credentials), picks the cache or S3 and counts the
transfer; this module parses the Range header, sends the headers and writes
the chunks. `resp.write` waits while the socket's buffer is full, so a slow
reader stops the iteration, and with it the window and the fetches. When the
reader goes away, `write` raises and leaving the `async with` cancels the
fetches. A failure after the headers went out aborts the connection: the
reader sees a short body (the Content-Length says so), never wrong bytes.
The record is done when the last byte is handed to the socket, before the
reader can have it: a reader holding every byte that asks about the job sees
the stream done.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web

from s3feed.transfer.errors import InvalidRange
from s3feed.transfer.serve import Delivery, ObjectServer

from .errors import describe, s3_ids
from .job import Job
from .records import TransferRecord, TransferState

log = logging.getLogger("s3feed.stream")

# Offsets of at most 19 digits (2**63 has 19; an S3 object has at most 13):
# longer ones are ignored like any unparsable header, before int() meets
# thousands of digits (docs/design.md, Socket API: streams).
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single-range header, or None for the whole object.

    Multi-range and unparsable headers are ignored (whole object, 200), as
    docs/design.md says (Socket API: streams); a well-formed range outside the object raises InvalidRange.
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
    request: web.Request, job: Job, key: str, server: ObjectServer
) -> web.StreamResponse:
    delivery = await server.open(
        job.store,
        job.location.key_for(key),
        tenant=job.tenant,
        choose_range=lambda meta: parse_range(request.headers.get("Range"), meta.size),
    )
    meta = delivery.meta
    resp = web.StreamResponse(status=206 if delivery.partial else 200)
    resp.content_length = delivery.length
    resp.content_type = "application/octet-stream"
    resp.headers["ETag"] = meta.etag
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["X-S3feed-Source"] = delivery.source
    resp.last_modified = meta.last_modified
    if delivery.partial:
        resp.headers["Content-Range"] = f"bytes {delivery.first}-{delivery.last}/{meta.size}"

    record = job.new_record("stream", key, delivery.progress)
    record.move(TransferState.RUNNING)
    job.stream_opened()
    try:
        async with delivery:
            await _send(request, resp, delivery, record)
    except asyncio.CancelledError:
        _settle(record, TransferState.CANCELLED, ("Cancelled", "the reader went away"))
        raise
    except ConnectionError as exc:
        # The reader went away (aiohttp raises ClientConnectionResetError).
        _settle(record, TransferState.CANCELLED, ("Cancelled", f"the reader went away: {exc.__class__.__name__}"))  # fmt: skip
        return resp
    except Exception as exc:
        if record.state is TransferState.DONE:
            # Every byte was handed over; what failed after it is not the reader's.
            log.warning("stream teardown failed", exc_info=True, extra={"job_id": job.job_id})
            return resp
        _, code, message, _ = describe(exc)
        if record.state is TransferState.RUNNING:
            record.error_ids = s3_ids(exc)
        _settle(record, TransferState.FAILED, (code, message))
        if not resp.prepared:
            raise
        log.warning(
            "stream aborted after headers",
            extra={"job_id": job.job_id, "tenant": job.tenant, "key": key, "code": code,
                   "request_id": record.error_ids.get("RequestId"),
                   "host_id": record.error_ids.get("HostId")},
        )  # fmt: skip
        if request.transport is not None:
            request.transport.abort()
        return resp
    finally:
        job.stream_closed()
    return resp


async def _send(
    request: web.Request, resp: web.StreamResponse, delivery: Delivery, record: TransferRecord
) -> None:
    if delivery.length == 0:
        _done(delivery, record)  # the headers are the whole response
    await resp.prepare(request)
    async for chunk in delivery:
        if delivery.complete:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the reader went away")
            _done(delivery, record)  # resp.write hands the bytes over before it yields
        await resp.write(chunk)
    await resp.write_eof()


def _done(delivery: Delivery, record: TransferRecord) -> None:
    delivery.settle("success")
    _settle(record, TransferState.DONE)


def _settle(
    record: TransferRecord, state: TransferState, error: tuple[str, str] | None = None
) -> None:
    """Settle the record once; a reader leaving or a teardown failing after
    the last byte leaves it done."""
    if record.state is not TransferState.RUNNING:
        return
    record.error = error
    record.move(state)
