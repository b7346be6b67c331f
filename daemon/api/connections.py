"""The API socket's connections: who is on the other end, how many, how slow.

Design note (docs/design.md, Limits). `GuardedSockSite` serves the API socket
like aiohttp's SockSite, but puts a `ConnectionGuard` in front of each
connection's aiohttp RequestHandler. Everything runs on the event loop in the
transport's callbacks; the guard forwards every callback to the handler and
adds three things:

- at accept, the peer uid (SO_PEERCRED) takes a connection slot of
  daemon/api/limits.py; over `connections_per_uid` the guard answers 429
  LimitExceeded itself, without aiohttp, and closes once the client has sent
  something (or after a second), so the client reads the answer rather than a
  broken pipe. The slot is given back in connection_lost.
- a request head must arrive within `[api] header_timeout`: counted from the
  accept for the first request and from the first byte of each later one
  (an idle kept-alive connection is aiohttp's `keepalive_timeout`, 60 s).
  A connection still short of a whole head then is closed. "A head arrived" is
  aiohttp's own count of parsed requests, so the framing is its parser's.
- nothing else: the handler sees the same transport and bytes.

A head pipelined behind another in one read is covered by the keep-alive
timeout only. Request bodies are the handlers' to bound (`max_body`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.errors import ApiError, error_body

log = logging.getLogger("s3feed.connections")

KEEPALIVE_TIMEOUT = 60.0  # idle kept-alive connections close after this (aiohttp's timer)
REFUSED_LINGER = 1.0  # a refused connection waits this long for its request, at most


def socket_peer_uid(sock: Any) -> int | None:
    """The peer's uid on a Unix socket (SO_PEERCRED), None on any other."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _refusal(exc: ApiError) -> bytes:
    body = orjson.dumps(error_body(exc.code, exc.message))
    head = [
        "HTTP/1.1 429 Too Many Requests",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in exc.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard(asyncio.Protocol):
    def __init__(self, handler: RequestHandler, limits: UidLimits, header_timeout: float) -> None:
        self._handler = handler
        self._limits = limits
        self._header_timeout = header_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._uid: int | None = None  # holds a connection slot of this uid
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._heads = 0  # requests aiohttp had parsed when the timer was last settled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        uid = socket_peer_uid(transport.get_extra_info("socket"))
        if uid is not None:
            try:
                self._limits.open_connection(uid)
            except ApiError as exc:
                self._refused = True
                self._transport.write(_refusal(exc))
                self._timer = self._loop.call_later(REFUSED_LINGER, self._transport.close)
                return
            self._uid = uid
        self._handler.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            assert self._transport is not None
            self._transport.close()  # the answer is written; the client reads it
            return
        if self._timer is None and self._between_requests():
            self._arm()  # the first byte of a new head
        self._handler.data_received(data)
        if self._handler._request_count != self._heads:
            self._heads = self._handler._request_count
            self._disarm()

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        self._handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._uid is not None:
            self._limits.close_connection(self._uid)
            self._uid = None
        if not self._refused:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._handler.resume_writing()

    # -- the head timer ------------------------------------------------------------------

    def _between_requests(self) -> bool:
        h = self._handler
        return not h._request_in_progress and not h._messages

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._loop.call_later(self._header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        # Body bytes that arrive after aiohttp took the head from its queue but
        # before its handler task ran (not eager on Python 3.11) arm the timer as
        # if a new head began: a request whose handler now runs (a long upload's
        # body, docs/design.md, Outputs) is not a late head.
        if (
            self._handler._request_count == self._heads
            and self._between_requests()
            and self._transport is not None
        ):
            log.info(
                "closing a connection whose request head did not arrive in time",
                extra={"uid": self._uid, "header_timeout_s": self._header_timeout},
            )
            self._transport.close()


class GuardedSockSite(web.SockSite):
    """aiohttp's SockSite with a ConnectionGuard in front of every connection."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        limits: UidLimits,
        header_timeout: float,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._limits = limits
        self._header_timeout = header_timeout

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        make_handler = server

        def guard() -> ConnectionGuard:
            return ConnectionGuard(make_handler(), self._limits, self._header_timeout)

        self._server = await asyncio.get_running_loop().create_server(
            guard, sock=self._sock, backlog=self._backlog
        )
