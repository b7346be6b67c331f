"""SO_RCVLOWAT while a body is received (transfer/s3/connection.py; docs/design.md,
Performance notes: Receive path), on real TCP sockets on 127.0.0.1, plain and
TLS, on asyncio's loop and uvloop.

A mark above the bytes still to come would hold the body's last bytes in the
kernel for ever, so every slice the sink gets is checked against the mark the
socket had when it arrived: never above the body's remaining bytes (less
TLS_SLACK over TLS). The connection runs on a clock nobody moves, so no stall
tick can rescue a wrong mark: the body would simply never complete.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from s3feed.auth.clock import FakeClock
from s3feed.transfer.s3.connection import MIN_MARK, RECEIVE_MARK, TLS_SLACK, HttpConnection

pytestmark = pytest.mark.timeout(120)

KEY = ("http", "127.0.0.1", 0)
STALL = 30.0
Respond = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


def run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    (uvloop.run if loop == "uvloop" else asyncio.run)(coro)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key),
            *("-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Peer:
    """A server answering each request with `respond(writer, n)`, and one
    HttpConnection to it; `lowat()` is the client socket's SO_RCVLOWAT now."""

    def __init__(self, respond: Respond, tls: tuple[str, str] | None) -> None:
        self.respond = respond
        self.tls = tls
        self.requests = 0

    async def __aenter__(self) -> Peer:
        server_ctx = client_ctx = None
        if self.tls is not None:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(*self.tls)
            client_ctx = ssl.create_default_context(cafile=self.tls[0])
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=server_ctx)
        port = self.server.sockets[0].getsockname()[1]
        self.clock = FakeClock()
        transport, self.conn = await asyncio.get_running_loop().create_connection(
            lambda: HttpConnection(KEY, clock=self.clock), "127.0.0.1", port, ssl=client_ctx
        )
        self.sock = transport.get_extra_info("socket")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.conn.abort()
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                await self.respond(writer, self.requests)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def lowat(self) -> int:
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))

    async def get(self, sink: Callable[[memoryview], None]) -> None:
        await self.conn.send(b"GET /k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", STALL)
        await self.conn.read_body(sink, STALL)


def body_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def send_in_pieces(writer: asyncio.StreamWriter, body: bytes, seed: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    rng, at = random.Random(seed), 0
    while at < len(body):
        n = rng.choice([1, 100, 1500, 9000, 65536, 300_000])
        writer.write(body[at : at + n])
        at += n
        await writer.drain()
    await writer.drain()


class CheckedSink:
    """Collects the body; records the mark each slice arrived under."""

    def __init__(self, peer: Peer, size: int, slack: int) -> None:
        self.peer, self.size, self.slack = peer, size, slack
        self.data = bytearray()
        self.marks: list[tuple[int, int]] = []  # (mark, bytes still due) per slice

    def __call__(self, view: memoryview) -> None:
        self.marks.append((self.peer.lowat(), self.size - len(self.data)))
        self.data += view

    def unsafe(self) -> list[tuple[int, int]]:
        return [(m, due) for m, due in self.marks if m > 1 and m > due - self.slack]


SIZES = [
    0,
    1,
    100,
    MIN_MARK - 1,
    MIN_MARK,
    2 * MIN_MARK + 1,
    TLS_SLACK + MIN_MARK,
    RECEIVE_MARK - 1,
    RECEIVE_MARK,
    RECEIVE_MARK + 1,
    3 * RECEIVE_MARK + 12345,
]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_every_body_size_arrives_whole_under_the_mark(
    loop: str, tls: bool, tls_files: tuple[str, str]
) -> None:
    """Bodies below, at and above the mark, sent in uneven pieces, one after
    another on one keep-alive connection (the mark is 1 again for each head)."""

    async def respond(writer: asyncio.StreamWriter, n: int) -> None:
        await send_in_pieces(writer, body_of(SIZES[n - 1]), seed=n)

    async def main() -> None:
        async with Peer(respond, tls_files if tls else None) as peer:
            raised = False
            for size in SIZES:
                sink = CheckedSink(peer, size, TLS_SLACK if tls else 0)
                await asyncio.wait_for(peer.get(sink), 60)
                assert bytes(sink.data) == body_of(size), size
                assert sink.unsafe() == [], f"a mark above the bytes still due ({size} B body)"
                assert peer.lowat() == 1, "the next head is read with no mark"
                assert peer.conn.reusable
                raised |= any(m >= MIN_MARK for m, _ in sink.marks)
            assert peer.requests == len(SIZES)
            assert raised, "a 3 MiB body was received with no mark at all"

    run(loop, main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bytes_below_the_mark_are_delivered_by_the_stall_tick(loop: str) -> None:
    """The server pauses with fewer bytes sent than the mark: the kernel holds
    them, the first stall tick with no new byte drops the mark, and they come;
    no stall is declared, and the rest of the body arrives."""
    size = 4 * RECEIVE_MARK
    body = body_of(size)
    first, held = MIN_MARK, MIN_MARK - 1  # the mark after `first` bytes is `first`

    async def main() -> None:
        more, sent, rest = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def respond(writer: asyncio.StreamWriter, n: int) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            writer.write(body[:first])  # up to MIN_MARK the mark stays 1: all of it is read
            await writer.drain()
            await more.wait()
            writer.write(body[first : first + held])
            await writer.drain()
            sent.set()
            await rest.wait()
            writer.write(body[first + held :])
            await writer.drain()

        async with Peer(respond, None) as peer:
            sink = CheckedSink(peer, size, 0)
            got = asyncio.Event()

            def note(view: memoryview) -> None:
                sink(view)
                got.set()

            async def has(n: int) -> None:
                while len(sink.data) < n:
                    got.clear()
                    await got.wait()

            reading = asyncio.create_task(peer.get(note))
            await asyncio.wait_for(has(first), 60)
            assert peer.lowat() == first, "the mark follows the bytes received"
            more.set()
            await asyncio.wait_for(sent.wait(), 60)
            # The first tick sees the bytes that came since the wait began; the
            # second sees none and drops the mark, which wakes the reader.
            await peer.clock.advance(STALL / 4)
            await peer.clock.advance(STALL / 4)
            await asyncio.wait_for(has(first + held), 60)
            assert peer.lowat() == 1
            rest.set()
            await asyncio.wait_for(reading, 60)
            assert bytes(sink.data) == body
            assert sink.unsafe() == []
            assert peer.conn.reusable

    run(loop, main())
