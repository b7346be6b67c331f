"""One keep-alive HTTP/1.1 connection that receives bodies into a reused buffer.

Why it exists (docs/design.md, Performance notes: the table and Receive path):
aiobotocore's `get_object` + `iter_chunks`, and botocore signing + one aiohttp
session, copy every received segment into new `bytes` and join them; an
`asyncio.BufferedProtocol` per connection receiving straight into one reused
1 MiB buffer and handing slices to the sink (which pwrites inline) costs about
half their CPU, with or without uvloop. No maintained client offers that
zero-copy receive, so the hand-written part is kept to framing: the status
line and headers are parsed by httptools (llhttp); a body with Content-Length
is counted here and never becomes Python `bytes`; any other body (chunked,
close-delimited: error bodies in practice) goes through llhttp as well. Where
the head ends is the parser's word, not a search for CRLFCRLF: the head is fed
to llhttp a line at a time, and the body starts after the line on which it
completed the final head. Interim 1xx responses (100 Continue, 103 Early
Hints) are parsed and dropped; a 101 is a malformed answer to a GET. Through
S3ObjectStore the saving holds (docs/design.md, Performance notes: Receive
path).

Concurrency: one exchange at a time (no pipelining). The caller's task awaits
a future that the protocol callbacks (run by the event loop) resolve, once at
the end of the head and once at the end of the body. After the head the
connection stops reading until the caller asks for the body, so memory is one
buffer per connection whatever the body size. While the caller waits, a
watchdog task ticking at a quarter of the stall timeout on the injected
clock (auth's `Clock`; a `MonotonicClock` unless a test passes a fake) fails
the exchange when no byte arrived for the whole timeout (docs/design.md,
Transfers: Retries); the wait cancels it when it ends. A cancelled caller, a
sink that raises, a stall, a reset or a short body abort the connection;
only a connection whose exchange ended cleanly on a keep-alive response is
`reusable`. `idle_since` is on the same clock: the pool's idle timer reads it.

While a body with a Content-Length is received, the socket's SO_RCVLOWAT makes
the kernel wake the loop only once a mark's worth of bytes is queued, so a
slow (paced) link costs a wakeup per mark rather than per packet
(docs/design.md, Performance notes: Receive path). The mark never exceeds
what is sure to come: the body's remaining bytes (less `TLS_SLACK` over TLS,
where the TLS layer may hold a partial record read from the socket), so the
last bytes of any body are delivered. It ramps with the body (at most the
bytes already received, so the first bytes come as soon as they arrive),
stays within a quarter of the kernel's receive buffer (the sender keeps
sending while the mark fills) and `RECEIVE_MARK`, and is 1 again for every
head. A TLS transport reads the socket 256 KiB at a time: uvloop's (the
daemon's) up to 32 times per wakeup, asyncio's once, so on asyncio's loop
the rest waits for the next mark (slower, never stuck: the mark stays within
what will come). FIN and resets wake the loop whatever the mark. A stall tick that
finds no new byte drops the mark for the rest of the exchange, so a link
slower than a mark per quarter stall timeout is not taken for a stall.

A request body (an upload's part) is written a slice (`WRITE_SLICE`) at a
time, the next only once the transport drained below its high-water mark
(pause_writing / resume_writing), so the transport copies at most a slice of
it, never the whole part (docs/design.md, Outputs: memory). The response may
arrive before the body is all sent (S3 refusing early); writing stops then,
and the connection is not reused.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

import httptools

from s3feed.auth import Clock, MonotonicClock
from s3feed.transfer.errors import TransientError

BUFFER_SIZE = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
WRITE_SLICE = 1024 * 1024  # of a request body, per transport.write
RECEIVE_MARK = 1024 * 1024  # most body bytes the kernel queues before waking the loop
MIN_MARK = 16 * 1024  # a smaller mark saves too few wakeups to be worth a setsockopt
RCVBUF_SHARE = 4  # the mark stays within this fraction of the receive buffer
TLS_SLACK = 64 * 1024  # ciphertext the TLS layer may hold (a partial record), with margin

BodyConsumer = Callable[[memoryview], None]


class _HeadDone(Exception):
    """Raised in httptools' on_headers_complete to stop it before the body."""


class HttpConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        key: tuple[str, str, int],
        buffer_size: int = BUFFER_SIZE,
        clock: Clock | None = None,
    ) -> None:
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._clock = clock or MonotonicClock()
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._max_head = min(MAX_HEAD_BYTES, buffer_size)
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.exchanges = 0  # completed exchanges; > 0 means the connection was reused
        self.idle_since = self._clock.now()
        self._state = "idle"  # idle -> head -> wait -> body -> done (-> head ...) | closed
        self._waiter: asyncio.Future[None] | None = None
        self._stall: asyncio.Task[None] | None = None  # the watchdog of the current wait
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._sock: socket.socket | None = None  # for SO_RCVLOWAT (TCP only)
        self._slack = 0  # body bytes the mark leaves out (TLS_SLACK over TLS)
        self._lowat = 1  # the socket's SO_RCVLOWAT now
        self._new_exchange()

    def _new_exchange(self) -> None:
        self._parser: httptools.HttpResponseParser | None = None
        self._filled = 0  # head bytes (and the body bytes that came with them) in the buffer
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased; repeats joined with ", "
        self.received = 0  # response bytes of this exchange, head included
        self._keep_alive = False
        self._remaining = -1  # body bytes still due (Content-Length); -1: llhttp frames it
        self._length = 0  # the body's Content-Length, when it has one
        self._marks = True  # SO_RCVLOWAT may be raised during this exchange's body
        self._rcvbuf = 0  # the kernel's receive buffer, as last read
        self._rcvbuf_at = 0  # body bytes received when it was read
        self._pending: list[bytes] = []  # llhttp-framed body bytes that came with the head
        self._body_start = 0  # where the final head ended in the buffer (llhttp said so)
        self._interim = False  # llhttp is inside a 1xx response
        self._complete = False
        self._lost: str | None = None  # why the transport went away during the exchange
        self._consumer: BodyConsumer | None = None
        self._error: BaseException | None = None
        self._no_body = False  # the request was a HEAD: no body follows any head
        self._unsent = False  # the answer came before the whole request body was written

    @property
    def reusable(self) -> bool:
        return self._state in ("idle", "done") and self._transport is not None

    async def send(
        self,
        request: bytes,
        stall_timeout: float,
        *,
        head: bool = False,
        body: memoryview | None = None,
    ) -> None:
        """Write a request (its serialised head, then `body` a slice at a time)
        and wait for the response head (status, headers). `head`: the request
        was a HEAD, so the response has no body whatever its Content-Length says."""
        assert self.reusable and self._transport is not None
        self._new_exchange()
        self._no_body = head
        self._parser = httptools.HttpResponseParser(self)
        self._state = "head"
        self._transport.write(request)
        await self._wait(stall_timeout, body)

    async def read_body(self, consumer: BodyConsumer, stall_timeout: float) -> None:
        """Feed the whole body to `consumer` in order as it arrives; each
        memoryview is valid only during the call."""
        assert self._state == "wait" or (self._lost and self.status)
        self._consumer = consumer
        if self._remaining >= 0:
            start = self._body_start
            extra = self._filled - start
            if extra > self._remaining:
                self._keep_alive = False  # bytes beyond the body: do not trust the connection
            if min(extra, self._remaining) > 0:
                self._deliver(self._view[start : start + min(extra, self._remaining)])
        else:
            pending, self._pending = self._pending, []
            for chunk in pending:
                self._deliver(memoryview(chunk))
        if self._error is not None:
            self.abort()
            raise self._error
        close_delimited = self._remaining < 0 and "transfer-encoding" not in self.headers
        if self._remaining == 0 or self._complete or (close_delimited and self._lost == "eof"):
            self._finish()
        elif self._lost is not None or self._transport is None:
            raise self._lost_error()
        else:
            self._state = "body"
            if self._remaining > 0:
                self._mark()
            self._transport.resume_reading()
            await self._wait(stall_timeout)

    def abort(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TransientError("connection aborted", "reset"))
        self._state = "closed"
        self._cancel_stall()
        if self._transport is not None:
            self._transport.abort()

    # -- waiting ------------------------------------------------------------------------

    async def _wait(self, stall_timeout: float, body: memoryview | None = None) -> None:
        self._waiter = self._loop.create_future()
        self._stall = self._loop.create_task(
            self._watch(stall_timeout, self.received, self._clock.now())
        )
        try:
            if body is not None:
                await self._write_body(self._waiter, body)
            await self._waiter
        except BaseException:
            self.abort()
            raise
        finally:
            self._cancel_stall()
            self._waiter = None

    async def _write_body(self, answered: asyncio.Future[None], body: memoryview) -> None:
        """Write `body` a slice at a time, each once the transport drained (the
        module's note); stop early when `answered` (the head came, or the exchange
        failed: the stall timer and a lost connection resolve it)."""
        for start in range(0, len(body), WRITE_SLICE):
            if answered.done() or self._transport is None:
                self._unsent = True
                return
            self._transport.write(body[start : start + WRITE_SLICE])
            if self._writable is not None:
                await asyncio.wait((self._writable, answered), return_when=asyncio.FIRST_COMPLETED)

    async def _watch(self, timeout: float, seen: int, since: datetime) -> None:
        """Fail the wait once no byte arrived for `timeout` seconds, looking
        every quarter of it (a byte costs a counter, never a clock read)."""
        tick, limit = timedelta(seconds=timeout / 4), timedelta(seconds=timeout)
        due = since + tick
        while True:
            await self._clock.sleep_until(due)
            now = self._clock.now()
            if self.received != seen:
                seen, since = self.received, now
            elif self._lowat > 1:
                self._marks = False  # bytes may be waiting below the mark: no mark for now
                self._set_lowat(1)
            elif now - since >= limit:
                self._stall = None  # done: nothing to cancel
                self._fail(TransientError(f"no byte received for {timeout:g} s", "stall"))
                return
            due = now + tick

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.abort()

    def _mark(self) -> None:
        """Set SO_RCVLOWAT for the rest of a Content-Length body (the module's note)."""
        if self._sock is None:
            return
        done = self._length - self._remaining
        most = min(RECEIVE_MARK, len(self._buf))  # a wakeup reads one buffer at most
        want = min(most, done, self._remaining - self._slack) if self._marks else 1
        if want >= 2 * self._lowat:
            if done >= 2 * self._rcvbuf_at:  # it grows with the link: read it again
                self._rcvbuf_at = done
                try:
                    self._rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                except OSError:
                    self._rcvbuf = 0
            want = min(want, self._rcvbuf // RCVBUF_SHARE)
        if want < MIN_MARK:
            want = 1
        if want < self._lowat or want >= 2 * self._lowat:
            self._set_lowat(want)

    def _set_lowat(self, n: int) -> None:
        if self._sock is None or n == self._lowat:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:  # closed under us; a mark that cannot be set is only slower
            self._sock = None
        self._lowat = n

    def _finish(self) -> None:
        self.exchanges += 1
        self._set_lowat(1)  # the next head, or the server closing an idle connection
        self.idle_since = self._clock.now()
        reuse = self._keep_alive and self._transport is not None and not self._unsent
        self._state = "done" if reuse else "closed"
        self._consumer = None
        if self._state == "done":
            assert self._transport is not None
            self._transport.resume_reading()  # idle: notice the server closing it
        self._wake()

    def _deliver(self, data: memoryview) -> None:
        assert self._consumer is not None
        try:
            self._consumer(data)
        except BaseException as e:  # the sink's own error, re-raised to the caller
            self._error = e
        if self._remaining > 0:
            self._remaining -= len(data)

    def _lost_error(self) -> TransientError:
        if self._lost == "eof" and self.status:
            return TransientError("connection closed before the body was complete", "truncated")
        return TransientError(f"connection lost: {self._lost or 'closed'}", "reset")

    # -- asyncio.BufferedProtocol -------------------------------------------------------

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")  # under TLS, the TCP socket beneath it
        if sock is not None and sock.type == socket.SOCK_STREAM and sock.family != socket.AF_UNIX:
            self._sock = sock
        self._slack = TLS_SLACK if transport.get_extra_info("ssl_object") is not None else 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "head":
            return self._view[self._filled : self._max_head]
        if self._state == "body" and self._remaining > 0:
            return self._view[: min(self._remaining, len(self._view))]
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self._state == "head":
            start = self._filled
            self._filled += nbytes
            fed = self._feed_head(start, self._filled)
            if fed and self._state == "head" and self._filled >= self._max_head:
                self._fail(TransientError("response head too large", "server_error"))
        elif self._state == "body" and self._remaining > 0:
            self._deliver(self._view[:nbytes])
            if self._error is not None:
                self._fail(self._error)
            elif self._remaining == 0:
                self._finish()
            else:
                self._mark()
        elif self._state == "body":
            self._feed(self._view[:nbytes])
        else:
            self._fail(TransientError("bytes arrived that no request asked for", "reset"))

    def _feed_head(self, start: int, end: int) -> bool:
        """Feed head bytes a line at a time: llhttp completes a head only on
        the LF of its blank line, so when it stops there (_HeadDone) the body
        starts right after the line just fed. httptools does not report that
        offset itself."""
        while start < end:
            newline = self._buf.find(b"\n", start, end)
            stop = newline + 1 if newline >= 0 and self._state == "head" else end
            if not self._feed(self._view[start:stop]):
                return False
            if self._state != "head" and self._remaining >= 0:
                self._body_start = stop
                return True
            start = stop
        return True

    def _feed(self, data: memoryview) -> bool:
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadDone):
                return True
            self._fail(self._error or e.__context__ or e)
            return False
        except httptools.HttpParserError as e:
            self._fail(TransientError(f"malformed HTTP response: {e}", "server_error"))
            return False
        if self._error is not None:
            self._fail(self._error)
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.resume_writing()  # a body writer waiting for room stops waiting
        self._cancel_stall()
        state, self._state = self._state, "closed"
        if state in ("head", "wait", "body"):
            self._lost = "eof" if exc is None else str(exc)
            if state == "body" and self._remaining < 0 and "transfer-encoding" not in self.headers:
                self._finish()  # a close-delimited body ends here
            elif state != "wait":  # a waiting head keeps its buffered body for read_body
                self._fail(self._lost_error())
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool | None:
        return False

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v

    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._transport is not None
        status = self._parser.get_status_code()
        if status == 101:  # llhttp would hand the connection over: refuse here
            self._error = TransientError(
                "101 Switching Protocols answered a request", "server_error"
            )
            raise self._error
        if 100 <= status < 200:
            self._interim = True  # llhttp ends it here; the real head follows
            self.headers = {}
            return
        self.status = status
        self._keep_alive = self._parser.should_keep_alive()
        self._state = "wait"
        self._transport.pause_reading()
        self._wake()
        length = self.headers.get("content-length", "")
        if self._no_body:
            self._remaining = 0
            raise _HeadDone  # the answer to a HEAD ends with its head
        if status in (204, 304):
            return  # no body whatever Content-Length says; llhttp completes it
        if "transfer-encoding" not in self.headers and length.isdigit():
            self._remaining = self._length = int(length)
            raise _HeadDone  # the body is ours to count; llhttp stops here

    def on_body(self, body: bytes) -> None:
        if self._consumer is None:
            self._pending.append(body)
        else:
            self._deliver(memoryview(body))

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        if self._state == "body":
            self._finish()
