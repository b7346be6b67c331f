"""GET /v1/jobs/{JobId}/objects/{Key}: an object, in order, over the socket.

Design note. The handler runs in aiohttp's request task and only maps HTTP
onto transfer/objectserver.py: `ObjectServer.open` makes the access check (a HEAD
with the job's own credentials), picks the cache or S3 and counts the
transfer; this module parses the Range header, sends the headers and writes
the chunks. `resp.write` waits while the socket's buffer is full, so a slow
reader stops the iteration, and with it the window and the fetches. When the
reader goes away, `write` raises and leaving the `async with` cancels the
fetches. A failure after the headers went out aborts the connection: the
reader sees a short body (the Content-Length says so), never wrong bytes.
The record is done when the last byte is handed to the socket, before the
reader can have it: a reader holding every byte that asks about the job sees
the stream done. The headers wait for the first chunk (`first_bytes`), so a
first S3 request that fails for good answers its own status and document.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable

import orjson
from aiohttp import web

from s3feed.daemon.api.descriptors import FdWriter, ready
from s3feed.daemon.errors import (
    STATUS_BY_CODE,
    ApiError,
    OutputClosed,
    describe,
    error_body,
    s3_ids,
)
from s3feed.daemon.jobs import Job, TransferRecord, TransferState
from s3feed.transfer import Delivery, InvalidRange, ObjectMeta, ObjectServer, first_bytes

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


def early_range(header: str | None) -> tuple[int, int | None] | None:
    """What `parse_range` will pick, as far as it is known before the object's
    size: (first, last or None for the end); None for a suffix range (it needs
    the size). The stream's first GET goes out with the HEAD (docs/design.md,
    Streams: first bytes)."""
    m = _RANGE.match(header) if header else None
    if not m or (not m.group(1) and not m.group(2)):
        return 0, None  # the whole object
    first_s, last_s = m.group(1), m.group(2)
    if not first_s:
        return None
    first, last = int(first_s), int(last_s) if last_s else None
    if last is not None and last < first:
        return 0, None  # ignored: the whole object
    return first, last


async def head_object(
    request: web.Request, job: Job, key: str, server: ObjectServer
) -> web.StreamResponse:
    """What `stream_object` would answer, status and headers, with no body."""
    meta = (await server.authorise(job.store, job.location.key_for(key))).meta
    chosen = parse_range(request.headers.get("Range"), meta.size)
    first, last = chosen if chosen is not None else (0, meta.size - 1)
    return _object_response(meta, first, last, partial=chosen is not None)


def _object_response(
    meta: ObjectMeta, first: int, last: int, *, partial: bool
) -> web.StreamResponse:
    """A GET's (or HEAD's) status and headers for bytes first..last of the object."""
    resp = web.StreamResponse(status=206 if partial else 200)
    resp.content_length = max(0, last - first + 1)
    resp.content_type = "application/octet-stream"
    resp.headers["ETag"] = meta.etag
    resp.headers["Accept-Ranges"] = "bytes"
    resp.last_modified = meta.last_modified
    if partial:
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{meta.size}"
    return resp


async def stream_object(
    request: web.Request,
    job: Job,
    key: str,
    server: ObjectServer,
    *,
    kind: str = "stream",
    on_done: Callable[[], None] = lambda: None,
) -> web.StreamResponse:
    """`kind`: the log's name for it, "stream" on the socket, "url" on the
    loopback listener (docs/design.md, Logs), whose reads go through the
    cache (URLs for encoders: Reads). `on_done` runs when the last byte is
    handed over, before the teardown (it gives the stream's limit slot back)."""
    delivery = await server.open(
        job.store,
        job.location.key_for(key),
        tenant=job.tenant,
        choose_range=lambda meta: parse_range(request.headers.get("Range"), meta.size),
        through_cache=kind == "url",
        early_range=early_range(request.headers.get("Range")),
    )
    resp = _object_response(delivery.meta, delivery.first, delivery.last, partial=delivery.partial)

    record = job.new_record("stream", key, delivery.progress, kind=kind)
    record.source = delivery.first_source
    record.move(TransferState.RUNNING)
    job.stream_opened()
    try:
        async with delivery:
            await _send(request, resp, delivery, record, on_done)
    except asyncio.CancelledError:
        _settle(record, TransferState.CANCELLED, ("Cancelled", "the reader went away"))
        raise
    except ConnectionError as exc:
        # The reader went away (aiohttp raises ClientConnectionResetError).
        _settle(
            record,
            TransferState.CANCELLED,
            ("Cancelled", f"the reader went away: {exc.__class__.__name__}"),
        )
        return resp
    except Exception as exc:
        if record.state is TransferState.DONE:
            # Every byte was handed over; what failed after it is not the reader's.
            log.warning("stream teardown failed", exc_info=True, extra={"job_id": job.job_id})
            return resp
        if record.state is TransferState.RUNNING:
            record.fail(exc)
        if not resp.prepared:
            raise  # the answer is the error; the record's log line says why (records.py)
        if request.transport is not None:
            request.transport.abort()
        return resp
    finally:
        job.stream_closed()
    return resp


async def _send(
    request: web.Request,
    resp: web.StreamResponse,
    delivery: Delivery,
    record: TransferRecord,
    on_done: Callable[[], None],
) -> None:
    if delivery.length == 0:
        _done(delivery, record)  # the headers are the whole response
        on_done()
    # The headers wait for the first bytes: a first S3 request that fails for
    # good is the answer's status, never a 200 cut short (docs/design.md,
    # Socket API: streams).
    chunks = await first_bytes(delivery)
    resp.headers["X-S3feed-Source"] = delivery.first_source
    await resp.prepare(request)
    async for chunk in chunks:
        if delivery.complete:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the reader went away")
            _done(delivery, record)  # resp.write hands the bytes over before it yields
            on_done()
        await resp.write(chunk)
    await resp.write_eof()


def _done(delivery: Delivery, record: TransferRecord) -> None:
    record.source = delivery.source  # where the bytes came from, in the end
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


# --- Delivery into the caller's own descriptor (docs/design.md, Socket API: deliveries) ---

FD_WAIT = "HTTP/1.1 100 Continue\r\n\r\n"


async def receive_fd(request: web.Request, timeout: float) -> int:
    """Ask the client for its descriptor (an interim 100) and take it off the
    connection with recvmsg: one byte carrying SCM_RIGHTS with one fd.

    The transport stops reading first, so the byte (and its fd) stays in the
    kernel for us; the client sends it only after the 100, so nothing of it
    can have been read before."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    raw = transport.get_extra_info("socket")
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    try:
        sock.setblocking(False)
        transport.write(FD_WAIT.encode())
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data, ancdata, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(4 * SCM_MAX_FDS))
                    break
                except BlockingIOError:
                    await ready(loop, sock.fileno(), reading=True)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(array.array("i", payload[:usable]))
        if len(fds) != 1 or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            if not data:
                raise ConnectionResetError("the client went away before passing its descriptor")
            raise ApiError(
                "InvalidRequest", f"pass exactly one descriptor with SCM_RIGHTS (got {len(fds)})"
            )
        return fds[0]
    except TimeoutError:
        raise ApiError("RequestTimeout", f"no descriptor arrived within {timeout:g} s") from None
    finally:
        sock.close()
        if not transport.is_closing():
            transport.resume_reading()  # so that a client leaving is noticed


SCM_MAX_FDS = 4  # room to see (and refuse) a few extra fds


async def deliver_object(
    request: web.Request, job: Job, key: str, server: ObjectServer, fd_timeout: float
) -> web.Response:
    """POST .../objects/{Key}?deliver=fd: the object into the caller's descriptor.

    Same window, range, error and cancellation semantics as `stream_object`;
    the answer comes after the last byte (or the failure): 200 with what was
    delivered, or the error document with `Delivered` (bytes written)."""
    if request.query.get("deliver") != "fd":
        raise ApiError("InvalidRequest", "POST to an object needs ?deliver=fd (GET streams it)")
    try:
        fd = await receive_fd(request, fd_timeout)
    except ApiError as exc:
        return _answer(error_body(exc.code, exc.message), STATUS_BY_CODE[exc.code])
    writer = FdWriter(fd)  # owns the descriptor from here on
    try:
        await writer.check()
        return await _deliver(request, job, key, server, writer)
    except ApiError as exc:
        return _answer(error_body(exc.code, exc.message, Delivered=0), STATUS_BY_CODE[exc.code])
    finally:
        writer.close()  # the pipe's reader sees EOF (or a short file) now


async def _deliver(
    request: web.Request, job: Job, key: str, server: ObjectServer, writer: FdWriter
) -> web.Response:
    try:
        delivery = await server.open(
            job.store,
            job.location.key_for(key),
            tenant=job.tenant,
            choose_range=lambda meta: parse_range(request.headers.get("Range"), meta.size),
            early_range=early_range(request.headers.get("Range")),
        )
    except Exception as exc:  # known before a byte moves: the output is untouched
        status, code, message, headers = describe(exc)
        if status >= 500 and code == "InternalError":
            raise  # a bug of ours: the middleware logs it
        return _answer(error_body(code, message, s3_ids(exc), Delivered=0), status, headers)
    meta = delivery.meta
    doc: dict[str, object] = {
        "Key": key,
        "ETag": meta.etag,
        "Size": meta.size,
        "Length": delivery.length,
        "Source": delivery.first_source,
    }
    if delivery.partial:
        doc["ContentRange"] = f"bytes {delivery.first}-{delivery.last}/{meta.size}"
    record = job.new_record("stream", key, delivery.progress, kind="delivery")
    record.source = delivery.first_source
    record.move(TransferState.RUNNING)
    job.stream_opened()
    try:
        async with delivery:
            if delivery.length == 0:
                _done(delivery, record)
            async for chunk in delivery:
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                await writer.write(chunk)
                if delivery.complete:
                    _done(delivery, record)
    except OutputClosed as exc:
        _settle(record, TransferState.CANCELLED, ("Cancelled", f"the reader went away: {exc}"))
        body = error_body(exc.code, exc.message, Delivered=writer.written)
        return _answer(body, STATUS_BY_CODE[exc.code])
    except (asyncio.CancelledError, ConnectionError):
        _settle(record, TransferState.CANCELLED, ("Cancelled", "the client went away"))
        raise
    except Exception as exc:
        if record.state is TransferState.DONE:
            log.warning("delivery teardown failed", exc_info=True, extra={"job_id": job.job_id})
        else:
            status, code, message, headers = describe(exc)
            if record.state is TransferState.RUNNING:
                record.fail(exc)
            body = error_body(code, message, record.error_ids, Delivered=writer.written)
            return _answer(body, status, headers)
    finally:
        job.stream_closed()
    doc["Bytes"] = writer.written
    return _answer(doc, 200)


def _answer(
    doc: dict[str, object], status: int, headers: dict[str, str] | None = None
) -> web.Response:
    resp = web.Response(
        body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers
    )
    resp.force_close()  # the connection carried a descriptor: start afresh
    return resp
