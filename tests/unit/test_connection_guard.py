"""daemon/api/connections.py: the head timer does not close a request whose handler runs.

The guard frames the bytes itself (httptools) and reads nothing of aiohttp's:
these tests put a recording protocol where aiohttp's handler goes.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from s3feed.daemon.api.connections import ConnectionGuard, GuardedServer
from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.config import LimitsConfig

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
UPLOAD_HEAD = b"PUT /v1/jobs/j/outputs/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"


class Handler(asyncio.Protocol):
    """Stands where aiohttp's RequestHandler goes: records what reaches it."""

    def __init__(self) -> None:
        self.received = b""
        self.calls: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.calls.append("connection_made")

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool | None:
        self.calls.append("eof_received")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("connection_lost")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")


class Transport:
    closed = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None


def _guard(header_timeout: float = 10) -> tuple[ConnectionGuard, Handler, Transport]:
    handler, transport = Handler(), Transport()
    guard = ConnectionGuard(handler, UidLimits(LimitsConfig()), header_timeout=header_timeout)
    guard.connection_made(transport)  # type: ignore[arg-type]
    return guard, handler, transport


def _guard_after_a_head_and_early_body() -> tuple[ConnectionGuard, Handler, Transport]:
    guard, handler, transport = _guard()
    guard.data_received(UPLOAD_HEAD)  # the head arrived...
    guard.data_received(b"body bytes")  # ... and its body is arriving: no head is owed
    assert guard._timer is None
    return guard, handler, transport


def test_a_running_request_is_not_a_late_head() -> None:
    async def main() -> bool:
        guard, _, transport = _guard_after_a_head_and_early_body()
        guard._head_late()  # the upload's handler runs for minutes
        return transport.closed

    assert asyncio.run(main()) is False


def test_a_late_head_still_closes() -> None:
    async def main() -> bool:
        guard, _, transport = _guard_after_a_head_and_early_body()
        guard.data_received(b"x" * (1000 - len(b"body bytes")))  # the body ended
        guard.data_received(b"GET /v1/jo")  # a next head began, and no more of it came
        assert guard._timer is not None
        guard._head_late()
        return transport.closed

    assert asyncio.run(main()) is True


def test_the_first_head_is_timed_from_the_accept() -> None:
    async def main() -> tuple[bool, bool]:
        guard, _, transport = _guard(header_timeout=0.05)
        armed = guard._timer is not None
        await asyncio.sleep(0.1)  # nothing was sent
        return armed, transport.closed

    assert asyncio.run(main()) == (True, True)


def test_a_head_in_pieces_stops_the_timer_when_it_is_whole() -> None:
    async def main() -> tuple[bool, bool, bool]:
        guard, handler, transport = _guard(header_timeout=0.1)
        guard.data_received(HEAD[:10])
        await asyncio.sleep(0.03)
        guard.data_received(HEAD[10:])
        disarmed = guard._timer is None
        await asyncio.sleep(0.15)  # past the header timeout: an idle kept-alive connection
        return disarmed, transport.closed, handler.received == HEAD

    assert asyncio.run(main()) == (True, False, True)


def test_each_pipelined_head_is_timed_from_its_first_byte() -> None:
    async def main() -> tuple[bool, bool]:
        guard, _, transport = _guard(header_timeout=0.05)
        guard.data_received(HEAD + HEAD + b"GET /v1/jobs HT")  # two whole, one begun
        armed = guard._timer is not None
        await asyncio.sleep(0.1)
        return armed, transport.closed

    assert asyncio.run(main()) == (True, True)


def test_body_bytes_that_look_like_a_head_do_not_start_the_timer() -> None:
    async def main() -> bool:
        guard, _, transport = _guard()
        guard.data_received(
            b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"f\r\nGET / HTTP/1.1\r\n\r\n"  # a chunk of 15 bytes that reads like a head
        )
        armed = guard._timer is not None
        guard.data_received(b"0\r\n\r\n")
        guard._head_late()
        return armed or transport.closed

    assert asyncio.run(main()) is False


def test_a_request_asking_to_switch_protocols_ends_the_timing() -> None:
    # httptools frames such a request without a body, aiohttp with one: the
    # guard cannot be sure of the next head's start, so it leaves it to the
    # keep-alive timeout rather than close an upload whose body reads like a head.
    async def main() -> tuple[bool, bool, bool]:
        guard, handler, transport = _guard()
        upgrade = (
            b"PUT /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
            b"Content-Length: 1000\r\n\r\nGET /a-body-that-reads-like-a-head"
        )
        guard.data_received(upgrade)
        guard._head_late()
        return guard._timer is None, transport.closed, handler.received == upgrade

    assert asyncio.run(main()) == (True, False, True)


def test_bytes_llhttp_rejects_end_the_timing_and_reach_aiohttp() -> None:
    # aiohttp's parser is llhttp too: it answers 400 and closes.
    async def main() -> tuple[bool, bool, bytes]:
        guard, handler, transport = _guard()
        guard.data_received(b"\x16\x03\x01\x02\x00")  # a TLS hello
        guard.data_received(b"GET / HTTP/1.1\r\n")
        guard._head_late()
        return guard._timer is None, transport.closed, handler.received

    assert asyncio.run(main()) == (True, False, b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n")


def test_every_callback_reaches_the_handler() -> None:
    async def main() -> list[str]:
        guard, handler, _ = _guard()
        guard.pause_writing()
        guard.resume_writing()
        guard.eof_received()
        guard.connection_lost(None)
        assert guard._timer is None
        return handler.calls

    assert asyncio.run(main()) == [
        "connection_made",
        "pause_writing",
        "resume_writing",
        "eof_received",
        "connection_lost",
    ]


async def test_the_guarded_server_serves_a_runner_through_its_public_factory(
    tmp_path: Path,
) -> None:
    """The listener needs only what aiohttp documents: a set-up runner's
    `server`, a protocol factory for loop.create_server."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "api.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    server = GuardedServer(runner, sock, limits=UidLimits(LimitsConfig()), header_timeout=0.2)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.readuntil(b"hello")
        writer.write(b"GET / HT")  # half a head: closed by the guard, no answer
        async with asyncio.timeout(5):
            rest = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await runner.cleanup()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert rest == b""
