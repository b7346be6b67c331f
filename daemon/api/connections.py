"""The API socket's connections: who is on the other end, how many, how slow.

Design note (docs/design.md, Limits). `GuardedServer` accepts on the API
socket itself (an asyncio server, not an aiohttp site) and puts a
`ConnectionGuard` in front of the request handler that the runner's `server`,
aiohttp's public protocol factory, makes for each connection. Everything runs
on the event loop in the transport's callbacks; the guard forwards every
callback to the handler and adds three things:

- at accept, the peer uid (daemon/api/peer.py: SO_PEERCRED on the Unix socket,
  the kernel's owner of the client's end on the loopback listener; a TCP caller
  it cannot name is answered 403 Forbidden and closed) takes a connection slot of
  daemon/api/limits.py; over `connections_per_uid` the guard answers 429
  LimitExceeded itself, without aiohttp, and closes once the client has sent
  something (or after a second), so the client reads the answer rather than a
  broken pipe. The slot is given back in connection_lost.
- a request head must arrive within `[api] header_timeout`: counted from the
  accept for the first request and from the first byte of each later one,
  pipelined or not (an idle kept-alive connection is aiohttp's
  `keepalive_timeout`, 60 s). A connection still short of a whole head then
  is closed. The guard frames the bytes itself with httptools: llhttp, the
  parser aiohttp's is built on, strict for requests in both. A request's first
  byte starts the timer, the end of its head stops it, body bytes do neither.
  It reads no state of aiohttp's, so no aiohttp release can switch it off
  unnoticed.
- nothing else: the handler sees the same transport and bytes.

The guard times heads only while its framing is surely aiohttp's. Bytes
llhttp rejects (aiohttp answers them 400 and closes) and a request that asks
to switch protocols (httptools takes it to have no body, aiohttp reads its
body and goes on with HTTP/1.1) end the timing of that connection; a head that
then never completes is left to aiohttp's keep-alive timeout. Request bodies
are the handlers' to bound (`max_body`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.api.peer import UNKNOWN_CALLER, Peer, peer_at_accept
from s3feed.daemon.errors import STATUS_BY_CODE, ApiError, error_body

log = logging.getLogger("s3feed.connections")

KEEPALIVE_TIMEOUT = 60.0  # idle kept-alive connections close after this (aiohttp's timer)
REFUSED_LINGER = 1.0  # a refused connection waits this long for its request, at most


UNKNOWN = ApiError("Forbidden", UNKNOWN_CALLER)

# Each live connection's guard, by the transport aiohttp holds: the caller
# as learned at the accept (a client may close right after its last byte, as
# ffmpeg does, and the kernel forgets a closed socket's owner, so a request
# never asks again), and the count of its answers (`Answered`).
_GUARDS: dict[asyncio.BaseTransport, ConnectionGuard] = {}


def caller(transport: asyncio.BaseTransport | None) -> Peer | None:
    """Who was on the other end of this connection at its accept."""
    guard = _GUARDS.get(transport) if transport is not None else None
    return guard.peer if guard is not None else None


class Answered(AbstractAccessLogger):
    """aiohttp's access-log hook, called once each response is written whole:
    the guard of a client that half-closed counts its answers, and closes the
    connection after the last (ConnectionGuard.eof_received)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        guard = _GUARDS.get(request.transport) if request.transport is not None else None
        if guard is not None:
            guard.answered()


def _refusal(exc: ApiError) -> bytes:
    body = orjson.dumps(error_body(exc.code, exc.message))
    status = HTTPStatus(STATUS_BY_CODE[exc.code])
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in exc.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class HandedTransport(asyncio.Transport):
    """The transport aiohttp's handler gets: the connection's own, until a client
    that sent requests it has no answers to yet goes away.

    A client may send its last request and close at once, without reading the
    answers (ffmpeg's HTTP output does, with requests pipelined on a persistent
    connection). Then the first answer written draws a reset, and aiohttp would
    drop the requests it holds. From that moment (`gone`) this transport drops
    writes and stays open to aiohttp, so the handler goes on through those
    requests in order - an upload whose body arrived whole lands - and the
    guard ends the connection for aiohttp after the last answer.
    """

    def __init__(
        self, real: asyncio.Transport, on_close: Callable[[], None], on_write: Callable[[], None]
    ) -> None:
        super().__init__()
        self._real = real
        self._on_close = on_close
        self._on_write = on_write
        self.gone = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.gone:
            self._on_write()
            self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if not self.gone:
            self._on_write()
            self._real.writelines(list_of_data)

    def is_closing(self) -> bool:
        return False if self.gone else self._real.is_closing()

    def close(self) -> None:
        if self.gone:
            self._on_close()
        else:
            self._real.close()

    def abort(self) -> None:
        if self.gone:
            self._on_close()
        else:
            self._real.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if not self.gone:
            self._real.pause_reading()

    def resume_reading(self) -> None:
        if not self.gone:
            self._real.resume_reading()

    def is_reading(self) -> bool:
        return False if self.gone else self._real.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return 0 if self.gone else self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def write_eof(self) -> None:
        if not self.gone:
            self._real.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()


class ConnectionGuard(asyncio.Protocol):
    """One connection's slot and head timer, in front of `inner` (aiohttp's handler)."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        limits: UidLimits,
        header_timeout: float,
        refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self._inner = inner
        self._refused_hook = refused  # counts the answers given without aiohttp
        self._limits = limits
        self._header_timeout = header_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._uid: int | None = None  # holds a connection slot of this uid
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        # Only on_message_begin, on_headers_complete and on_message_complete are
        # defined here, so httptools calls into Python three times per request
        # and never for a header or body bytes.
        self._framing: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._in_head = True  # a connection owes its first head from the accept
        self._in_message = False  # between a request's first byte and its body's end
        self._framed = 0  # requests whose last byte arrived
        self._answered = 0  # responses written whole
        self._eof = False  # the client will send no more
        self.peer: Peer | None = None  # the caller, from the accept
        self._handed: HandedTransport | None = None  # what aiohttp writes to
        self._writing_paused = False
        self._ended = False  # aiohttp was told the connection is over
        self._answering = False  # bytes of an answer went out since the last whole one
        # Per request framed and not answered yet, in order: does it change
        # anything (not GET or HEAD)? Only such requests outlive their client.
        self._owed: collections.deque[bool] = collections.deque()
        self._effect = False  # the request being framed changes something

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.peer = peer_at_accept(sock)
        uid = self.peer.uid if self.peer is not None else None
        if uid is None and sock is not None and sock.family != socket.AF_UNIX:
            # A TCP caller the kernel cannot name is nobody's: never served.
            self._refuse(UNKNOWN)
            return
        if uid is not None:
            try:
                self._limits.open_connection(uid)
            except ApiError as exc:
                self._refuse(exc)
                return
            self._uid = uid
        self._handed = HandedTransport(self._transport, self._end_for_aiohttp, self._wrote)
        _GUARDS[self._handed] = self
        self._inner.connection_made(self._handed)
        self._arm()

    def _refuse(self, exc: ApiError) -> None:
        assert self._transport is not None
        log.info("connection refused", extra={"code": exc.code, "reason": exc.message})
        self._refused = True
        self._framing = None
        self._transport.write(_refusal(exc))
        self._refused_hook(STATUS_BY_CODE[exc.code])
        self._timer = self._loop.call_later(REFUSED_LINGER, self._transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            assert self._transport is not None
            self._transport.close()  # the answer is written; the client reads it
            return
        if self._framing is not None:
            self._frame(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        self._inner.eof_received()
        if self._framing is None or self._in_message or self._answered >= self._framed:
            return None  # mid-request, framing unknown, or idle: the transport closes
        # Every request the client sent arrived whole, some are not answered
        # yet, and it will send no more: a half close, or a close right after
        # its last byte (ffmpeg's HTTP output does that for every object it
        # PUTs). aiohttp would drop the requests it has not started and fail
        # the bodies it has not read; so the transport stays open until the
        # last answer is written (`Answered`), then closes.
        self._eof = True
        return True

    def _wrote(self) -> None:
        self._answering = True

    def answered(self) -> None:
        self._answered += 1
        self._answering = False
        if self._owed:
            self._owed.popleft()
        if not self._eof or self._answered < self._framed:
            return
        if self._handed is not None and self._handed.gone:
            self._loop.call_soon(self._end_for_aiohttp, None)  # after aiohttp's own bookkeeping
        elif self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        whole = self._framing is not None and not self._in_message
        self._framing = None
        handed = self._handed
        if (
            handed is not None
            and whole
            and not self._answering
            and any(self._owed)
            and not handed.gone
        ):
            # The client left (a close after its EOF, or a reset: a close with
            # our answers unread) after whole requests that change something
            # (PUT, POST, DELETE) and have no answers yet, none half-written:
            # aiohttp finishes them against a transport that drops the answers
            # (HandedTransport). A reader leaving mid-answer, or with only reads
            # owed, ends the connection: its transfers are cancelled.
            handed.gone = True
            if self._writing_paused:
                self._inner.resume_writing()
            return
        self._end_for_aiohttp(exc)

    def _end_for_aiohttp(self, exc: Exception | None = None) -> None:
        """The connection is over, for the limits and for aiohttp: once only."""
        if self._handed is not None:
            _GUARDS.pop(self._handed, None)
            self._handed = None
        if self._uid is not None:
            self._limits.close_connection(self._uid)
            self._uid = None
        if not self._refused and not self._ended:
            self._ended = True
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._writing_paused = True
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._writing_paused = False
            self._inner.resume_writing()

    # -- framing: httptools' callbacks -----------------------------------------------------

    def _frame(self, data: bytes) -> None:
        assert self._framing is not None
        try:
            self._framing.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Where the guard cannot be sure its framing is aiohttp's, it stops
            # timing (see the module's note); on_headers_complete has run for
            # an upgrade request.
            self._framing = None
            self._in_head = False
            self._disarm()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._in_message = True
        if self._timer is None:  # the first head's timer runs from the accept
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._framing is not None:
            self._effect = self._framing.get_method() not in (b"GET", b"HEAD")

    def on_message_complete(self) -> None:
        self._in_message = False
        self._framed += 1
        self._owed.append(self._effect)

    # -- the head timer ------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._loop.call_later(self._header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._in_head and self._transport is not None:
            log.info(
                "closing a connection whose request head did not arrive in time",
                extra={"uid": self._uid, "header_timeout_s": self._header_timeout},
            )
            self._transport.close()


class GuardedServer:
    """The API socket's listener: aiohttp's handlers, each behind a ConnectionGuard.

    Not an aiohttp site (a site's own start() makes unguarded connections):
    `close` stops accepting, and the runner's cleanup shuts the connections
    down, as it does a site's.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        limits: UidLimits,
        header_timeout: float,
        backlog: int = 1024,
        refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self._refused = refused  # (status): a connection answered and closed by its guard
        self._runner = runner
        self._sock = sock
        self._limits = limits
        self._header_timeout = header_timeout
        self._backlog = backlog
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        handlers: Callable[[], asyncio.Protocol] | None = self._runner.server
        if handlers is None:
            raise RuntimeError("GuardedServer needs a runner that was set up")

        def guard() -> ConnectionGuard:
            return ConnectionGuard(handlers(), self._limits, self._header_timeout, self._refused)

        self._server = await asyncio.get_running_loop().create_server(
            guard, sock=self._sock, backlog=self._backlog
        )

    def close(self) -> None:
        """Stop accepting; the connections are the runner's to shut down."""
        if self._server is not None:
            self._server.close()
            self._server = None
