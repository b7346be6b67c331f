"""The data-plane HTTP client against a scripted asyncio server on 127.0.0.1.

Every client here runs on a FakeClock: time stands still unless a test moves
it, so no stall or idle timer fires because the machine is busy, and the
tests of those timers move the clock past their windows instead of sleeping.
The scripted server holds a response on an event (`Server.hold`), never on
a real sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from s3feed.auth.clock import FakeClock
from s3feed.transfer.errors import S3Unavailable, TransientError
from s3feed.transfer.s3.pool import HttpPool, serialize_get
from s3feed.transfer.s3.proxy import Proxies

pytestmark = pytest.mark.timeout(30)

Respond = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """Calls `respond(request_head, writer, n)` for the n-th request it reads."""

    def __init__(self) -> None:
        self.respond: Respond = ok_body(b"hello")
        self.requests: list[bytes] = []
        self.connections = 0
        self.hold = asyncio.Event()  # a response that stops mid-way waits for this; stop() sets it
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await self.respond(head, writer, len(self.requests))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self.hold.set()
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


def ok_body(body: bytes, extra_headers: str = "", pieces: int = 1) -> Respond:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra_headers}\r\n".encode()
        )
        step = max(1, len(body) // pieces)
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
        await writer.drain()

    return respond


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[HttpPool]:
    c = HttpPool(buffer_size=4096, clock=clock)
    yield c
    await c.close()
    assert c.open_connections == 0


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0
        self._grew = asyncio.Event()

    def __call__(self, view: memoryview) -> None:
        self.data += view
        self.calls += 1
        self._grew.set()

    async def holds(self, n: int) -> None:
        """Return once `n` bytes arrived: the client is then inside read_into."""
        while len(self.data) < n:
            self._grew.clear()
            await self._grew.wait()


async def fetch(client: HttpPool, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    sink = Sink()
    async with client.get(url + "/k", {}, stall_timeout=timeout) as resp:
        if resp.status >= 300:
            return resp.status, await resp.read()
        await resp.read_into(sink)
    return resp.status, bytes(sink.data)


async def test_body_in_small_buffers_and_keep_alive(server: Server, client: HttpPool) -> None:
    body = os.urandom(300_000)
    server.respond = ok_body(body, pieces=37)
    for _ in range(3):
        assert await fetch(client, server.url) == (200, body)
    assert server.connections == 1
    assert len(server.requests) == 3
    assert server.requests[0].startswith(b"GET /k HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_an_idle_connection_is_closed_once_idle_timeout_passes(
    server: Server, clock: FakeClock
) -> None:
    """One pool serves every job: the connections of a burst must not keep
    their fds after it; a fresh request then opens a new one. Each goes once
    it has been idle `idle_timeout`, counted from its last use."""
    client = HttpPool(idle_timeout=15, clock=clock)
    try:
        server.respond = ok_body(b"x")
        await asyncio.gather(*(fetch(client, server.url) for _ in range(3)))
        burst = [c for conns in client._idle.values() for c in conns]
        assert len(burst) == 3 and client.open_connections == 3
        t0 = clock.now()
        await clock.advance(10)
        assert await fetch(client, server.url) == (200, b"x")  # reuses one: idle again from 10 s
        [reused] = [c for c in burst if c.idle_since > t0]
        await clock.advance(4.9)
        assert not any(c.closed.done() for c in burst)
        await clock.advance(0.1)
        async with asyncio.timeout(60):  # a hang guard: the pool aborted them at 15 s
            await asyncio.gather(*(c.closed for c in burst if c is not reused))
        assert not reused.closed.done() and client.idle_connections == 1
        await clock.advance(10)
        async with asyncio.timeout(60):
            await reused.closed  # closed by the pool, not by us
        assert client.idle_connections == 0 and client.open_connections == 0
        assert await fetch(client, server.url) == (200, b"x")
        assert server.connections == 4
    finally:
        await client.close()


async def test_head_and_body_split_at_every_byte(server: Server, client: HttpPool) -> None:
    body = b"0123456789" * 3

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        raw = b'HTTP/1.1 206 Partial Content\r\nContent-Length: 30\r\nETag: "e"\r\n\r\n' + body
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    server.respond = respond
    sink = Sink()
    async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
        assert resp.status == 206
        assert resp.headers["etag"] == '"e"'
        await resp.read_into(sink)
    assert sink.data == body


async def test_head_and_body_in_one_segment_reuses_the_buffer(
    server: Server, client: HttpPool
) -> None:
    body = os.urandom(3000)  # head + body fit one 4096-byte receive
    server.respond = ok_body(body)
    sink = Sink()
    async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
        await resp.read_into(sink)
    assert sink.data == body
    assert sink.calls == 1


async def test_empty_body(server: Server, client: HttpPool) -> None:
    server.respond = ok_body(b"")
    assert await fetch(client, server.url) == (200, b"")
    assert await fetch(client, server.url) == (200, b"")
    assert server.connections == 1


async def test_connection_close_is_not_reused(server: Server, client: HttpPool) -> None:
    server.respond = ok_body(b"abc", "Connection: close\r\n")
    assert await fetch(client, server.url) == (200, b"abc")
    assert await fetch(client, server.url) == (200, b"abc")
    assert server.connections == 2


ERROR_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)


async def test_error_body_with_length_then_reuse(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(ERROR_XML), ERROR_XML))
        else:
            await ok_body(b"fine")(head, writer, n)

    server.respond = respond
    assert await fetch(client, server.url) == (404, ERROR_XML)
    assert await fetch(client, server.url) == (200, b"fine")
    assert server.connections == 1


async def test_chunked_error_body(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(ERROR_XML), 40):
            piece = ERROR_XML[i : i + 40]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    server.respond = respond
    assert await fetch(client, server.url) == (503, ERROR_XML)
    assert await fetch(client, server.url) == (503, ERROR_XML)
    assert server.connections == 1


async def test_large_error_body_is_capped_and_dropped(server: Server, client: HttpPool) -> None:
    big = b"x" * 200_000

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big))
        writer.write(big)
        await writer.drain()

    server.respond = respond
    async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
        assert await resp.read(limit=1000) == b"x" * 1000
    async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
        assert resp.status == 500
    assert server.connections == 2


async def test_truncated_body(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"a" * 6000)
        await writer.drain()
        writer.close()

    server.respond = respond
    sink = Sink()
    with pytest.raises(TransientError) as e:
        async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
            await resp.read_into(sink)
    assert e.value.reason == "truncated"
    assert sink.data == b"a" * len(sink.data)  # what arrived is valid; no more than that
    assert 0 < len(sink.data) <= 6000


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_reset_mid_body(server: Server, client: HttpPool) -> None:
    sink = Sink()

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"b" * 5000)
        await writer.drain()
        await sink.holds(5000)  # a reset may discard bytes the client has not read yet
        _reset(writer)

    server.respond = respond
    with pytest.raises(TransientError) as e:
        async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
            await resp.read_into(sink)
    assert e.value.reason == "reset"
    assert sink.data == b"b" * 5000


async def test_reset_before_head(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        _reset(writer)

    server.respond = respond
    with pytest.raises(TransientError) as e:
        await fetch(client, server.url)
    assert e.value.reason == "reset"


async def test_refused_connection_is_reset(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpPool(clock=clock)
    with pytest.raises(TransientError) as e:
        await fetch(client, f"http://127.0.0.1:{port}")
    assert e.value.reason == "reset"
    await client.close()


STALL = 30.0  # seconds, the daemon's default stall_timeout
TICK = STALL / 4  # the watchdog looks this often (transfer/s3/connection.py)


@pytest.mark.parametrize("where", ["head", "body"])
async def test_stall(server: Server, client: HttpPool, clock: FakeClock, where: str) -> None:
    """No byte for the whole stall timeout fails the exchange: not before,
    and at the latest one tick after (docs/design.md, Transfers: Retries)."""
    asked = asyncio.Event()

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        if where == "body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        asked.set()
        await server.hold.wait()  # and nothing more

    server.respond = respond
    sink = Sink()

    async def get() -> None:
        async with client.get(server.url + "/k", {}, stall_timeout=STALL) as resp:
            await resp.read_into(sink)

    task = asyncio.create_task(get())
    await asyncio.wait_for(asked.wait(), 60)  # the request arrived: the head wait has begun
    if where == "body":
        await asyncio.wait_for(sink.holds(3), 60)  # the body wait has begun
    await clock.advance(STALL - 1)
    assert not task.done()
    await clock.advance(1 + TICK)  # the clock stops here: only the stall can end the wait
    with pytest.raises(TransientError) as e:
        await asyncio.wait_for(task, 60)
    assert e.value.reason == "stall"
    assert "no byte received for 30 s" in str(e.value)
    assert bytes(sink.data) == (b"abc" if where == "body" else b"")


async def test_slow_but_steady_body_is_not_a_stall(
    server: Server, client: HttpPool, clock: FakeClock
) -> None:
    """A byte every 20 s for 160 s: never a 30 s gap, so never a stall."""
    send = asyncio.Queue[None]()

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await send.get()
            writer.write(b"z")
            await writer.drain()

    server.respond = respond
    sink = Sink()
    async with client.get(server.url + "/k", {}, stall_timeout=STALL) as resp:
        reading = asyncio.create_task(resp.read_into(sink))
        for i in range(8):
            await clock.advance(20)
            assert not reading.done()
            send.put_nowait(None)
            await asyncio.wait_for(sink.holds(i + 1), 60)
        await reading
    assert bytes(sink.data) == b"z" * 8


async def test_a_reused_connection_the_server_dropped_is_retried_on_a_fresh_one(
    server: Server, client: HttpPool
) -> None:
    """The server closes a kept-alive connection just as the next request
    arrives on it (no response byte): the request is sent again, once, on a
    new connection."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 2:
            writer.close()  # keep-alive promised, then dropped under the request
        else:
            await ok_body(b"x%d" % n)(head, writer, n)

    server.respond = respond
    assert await fetch(client, server.url) == (200, b"x1")
    assert await fetch(client, server.url) == (200, b"x3")
    assert server.connections == 2 and len(server.requests) == 3


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    server: Server, client: HttpPool
) -> None:
    drop = asyncio.Event()

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        await ok_body(b"x%d" % n)(head, writer, n)
        await drop.wait()
        writer.close()  # keep-alive promised, then dropped while idle

    server.respond = respond
    assert await fetch(client, server.url) == (200, b"x1")
    [idle] = [c for conns in client._idle.values() for c in conns]
    drop.set()
    await asyncio.wait_for(idle.closed, 60)  # the client saw the close
    assert await fetch(client, server.url) == (200, b"x2")
    assert server.connections == 2 and len(server.requests) == 2


async def test_sink_error_propagates_and_drops_the_connection(
    server: Server, client: HttpPool
) -> None:
    server.respond = ok_body(os.urandom(50_000), pieces=10)

    def failing(view: memoryview) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
            await resp.read_into(failing)
    assert await fetch(client, server.url) != (0, b"")
    assert server.connections == 2


async def read_into(client: HttpPool, url: str, sink: Sink) -> None:
    async with client.get(url + "/k", {}, stall_timeout=STALL) as resp:
        await resp.read_into(sink)


async def test_cancelled_mid_body_drops_the_connection(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            await server.hold.wait()
        else:
            await ok_body(b"ok")(head, writer, n)

    server.respond = respond
    sink = Sink()
    task = asyncio.create_task(read_into(client, server.url, sink))
    await asyncio.wait_for(sink.holds(3), 60)  # mid-body
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fetch(client, server.url) == (200, b"ok")
    assert server.connections == 2


async def test_unread_body_drops_the_connection(server: Server, client: HttpPool) -> None:
    server.respond = ok_body(b"never read")
    async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
        assert resp.status == 200
    assert await fetch(client, server.url) == (200, b"never read")
    assert server.connections == 2


async def test_bytes_beyond_content_length_drop_the_connection(
    server: Server, client: HttpPool
) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA")

    server.respond = respond
    assert await fetch(client, server.url) == (200, b"abc")
    assert await fetch(client, server.url) == (200, b"abc")
    assert server.connections == 2


async def test_malformed_response(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 2OO OK\r\n\r\n")

    server.respond = respond
    with pytest.raises(TransientError) as e:
        await fetch(client, server.url)
    assert e.value.reason == "server_error"


async def test_close_waits_for_busy_connections(server: Server, clock: FakeClock) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await server.hold.wait()

    server.respond = respond
    client = HttpPool(clock=clock)
    sink = Sink()
    task = asyncio.create_task(read_into(client, server.url, sink))
    await asyncio.wait_for(sink.holds(3), 60)  # busy, mid-body
    await client.close()
    assert client.open_connections == 0
    with pytest.raises(TransientError):
        await task


def test_serialize_get_refuses_header_injection() -> None:
    assert serialize_get("/a", {"Host": "h", "Range": "bytes=0-1"}) == (
        b"GET /a HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n"
    )
    with pytest.raises(ValueError):
        serialize_get("/a", {"X": "a\r\nEvil: 1"})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_body_and_keep_alive(tls_files: tuple[str, str], clock: FakeClock) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    body = os.urandom(2 * 1024 * 1024 + 17)
    server = Server()
    server.respond = ok_body(body, pieces=9)
    server._server = await asyncio.start_server(server._handle, "127.0.0.1", 0, ssl=server_ctx)
    client = HttpPool(ssl_context=ssl.create_default_context(cafile=cert), clock=clock)
    try:
        port = server._server.sockets[0].getsockname()[1]
        for _ in range(2):
            assert await fetch(client, f"https://127.0.0.1:{port}") == (200, body)
        assert server.connections == 1
        # Certificates are checked: a client that does not trust this one refuses it.
        stranger = HttpPool(clock=clock)
        # Not a TransientError: retrying cannot make it trusted; the message
        # says which CAs the client trusted.
        with pytest.raises(S3Unavailable) as e:
            await fetch(stranger, f"https://127.0.0.1:{port}")
        assert "not trusted" in str(e.value) and "AWS_CA_BUNDLE" in str(e.value)
        await stranger.close()
    finally:
        await client.close()
        await server.stop()


def test_on_uvloop() -> None:
    """The daemon runs on uvloop, whose transports differ from asyncio's."""

    async def scenario() -> None:
        server = Server()
        await server.start()
        client = HttpPool(buffer_size=4096, clock=FakeClock())
        try:
            body = os.urandom(100_000)
            server.respond = ok_body(body, pieces=7)
            for _ in range(2):
                assert await fetch(client, server.url) == (200, body)
            assert server.connections == 1

            async def short(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n" + b"s" * 5000)
                await writer.drain()
                writer.close()

            server.respond = short
            with pytest.raises(TransientError) as e:
                await fetch(client, server.url)
            assert e.value.reason == "truncated"
        finally:
            await client.close()
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


INTERIM = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Hint: "h"\r\n\r\n',
]


@pytest.mark.parametrize("interim", [INTERIM[:1], INTERIM[1:], INTERIM], ids=["100", "103", "both"])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
async def test_interim_responses_are_skipped(
    server: Server, client: HttpPool, interim: list[bytes], split: bool
) -> None:
    body = os.urandom(2000)

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        raw = b"".join(interim) + b'HTTP/1.1 200 OK\r\nContent-Length: 2000\r\nETag: "e"\r\n\r\n'
        raw += body
        step = 1 if split else len(raw)
        for i in range(0, len(raw), step):
            writer.write(raw[i : i + step])
            await writer.drain()

    server.respond = respond
    for _ in range(2):  # and the connection stays usable
        sink = Sink()
        async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers.get("link") is None, "an interim header leaked"
            assert resp.headers["etag"] == '"e"'
            await resp.read_into(sink)
        assert sink.data == body
    assert server.connections == 1


async def test_interim_then_chunked_error(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(INTERIM[1] + b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ERROR_XML), ERROR_XML))

    server.respond = respond
    assert await fetch(client, server.url) == (503, ERROR_XML)


async def test_not_modified_with_a_length_has_no_body(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n")

    server.respond = respond
    assert await fetch(client, server.url, timeout=2) == (304, b"")
    assert await fetch(client, server.url, timeout=2) == (304, b"")
    assert server.connections == 1


async def test_switching_protocols_is_malformed(server: Server, client: HttpPool) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )

    server.respond = respond
    with pytest.raises(TransientError) as e:
        await fetch(client, server.url)
    assert e.value.reason == "server_error"


async def _connect_proxy(targets: list[str]) -> asyncio.Server:
    """A CONNECT-only proxy on 127.0.0.1 that records each tunnel's target."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split(" ", 2)
            assert method == "CONNECT"
            targets.append(target)
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_https_through_a_connect_tunnel(tls_files: tuple[str, str], loop: str) -> None:
    """TLS inside the proxy's tunnel, verified end to end, keep-alive kept, on
    both event loops (the daemon runs on uvloop); a refused CONNECT is a reset."""
    cert, key = tls_files

    async def scenario() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        body = os.urandom(300_000)
        server = Server()
        server.respond = ok_body(body, pieces=5)
        server._server = await asyncio.start_server(server._handle, "127.0.0.1", 0, ssl=server_ctx)
        targets: list[str] = []
        proxy = await _connect_proxy(targets)
        proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
        clock = FakeClock()
        client = HttpPool(
            ssl_context=ssl.create_default_context(cafile=cert),
            proxies=Proxies.from_environ({"HTTPS_PROXY": proxy_url}),
            clock=clock,
        )
        try:
            port = server._server.sockets[0].getsockname()[1]
            for _ in range(2):
                assert await fetch(client, f"https://127.0.0.1:{port}/x") == (200, body)
            assert targets == [f"127.0.0.1:{port}"] and server.connections == 1
            request_line = server.requests[0].split(b"\r\n")[0]
            assert request_line == b"GET /x/k HTTP/1.1", "origin form inside the tunnel"
            refused = HttpPool(
                proxies=Proxies.from_environ({"HTTPS_PROXY": "http://127.0.0.1:1"}), clock=clock
            )
            with pytest.raises(TransientError) as e:
                await fetch(refused, f"https://127.0.0.1:{port}/x")
            assert e.value.reason == "reset" and "through the proxy 127.0.0.1:1" in str(e.value)
            await refused.close()
        finally:
            await client.close()
            proxy.close()
            await server.stop()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


class BodyServer:
    """Reads each request's head and Content-Length body, then answers 200 with
    the body's length; or, with `refuse`, answers 403 at once without reading the body."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.connections = 0
        self.received: list[int] = []
        self._server: asyncio.Server | None = None
        self._handlers: list[asyncio.Task[None]] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.refuse:
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")
                    await writer.drain()
                    await reader.read()  # until the client drops the connection
                    return
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                got = 0
                while got < length:
                    got += len(await reader.read(min(256 * 1024, length - got)))
                self.received.append(got)
                answer = str(got).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """After the client closed: every handler ends on its connection's close."""
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()


async def test_a_request_body_is_written_in_slices_not_copied_whole(clock: FakeClock) -> None:
    import tracemalloc

    server = BodyServer()
    url = await server.start()
    client = HttpPool(clock=clock)
    body = bytearray(os.urandom(24 * 1024 * 1024))
    tracemalloc.start()
    try:
        for _ in range(2):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            async with client.request(
                "PUT", url + "/k", {}, memoryview(body), stall_timeout=10
            ) as r:
                assert (r.status, await r.read()) == (200, str(len(body)).encode())
            peak = tracemalloc.get_traced_memory()[1] - before
            # The transport holds at most a slice (1 MiB) of it; the old request
            # (head + body joined) was a copy of all 24 MiB.
            assert peak < 6 * 1024 * 1024, f"{peak} bytes allocated sending the body"
        assert server.received == [len(body)] * 2 and server.connections == 1  # kept alive
    finally:
        tracemalloc.stop()
        await client.close()
        await server.stop()


async def test_an_answer_before_the_body_is_sent_stops_it_and_drops_the_connection(
    clock: FakeClock,
) -> None:
    server = BodyServer(refuse=True)
    url = await server.start()
    client = HttpPool(clock=clock)
    body = memoryview(bytes(64 * 1024 * 1024))  # far beyond the sockets' buffers
    try:
        for n in (1, 2):
            async with client.request("PUT", url + "/k", {}, body, stall_timeout=10) as r:
                assert (r.status, await r.read()) == (403, b"denied")
            assert server.connections == n  # never reused: the server still expects a body
    finally:
        await client.close()
        await server.stop()


async def test_warm_opens_connections_until_enough_are_idle(
    server: Server, client: HttpPool
) -> None:
    """A stream's HEAD and first GET go out together: both find one ready."""
    await client.warm(server.url, 2)
    assert client.idle_connections == 2
    await client.warm(server.url, 2)
    await client.warm(server.url)
    assert client.idle_connections == 2

    async def get() -> bytes:
        async with client.get(server.url + "/k", {}, stall_timeout=5) as resp:
            return await resp.read()

    assert await asyncio.gather(get(), get()) == [b"hello", b"hello"]
    assert server.connections == 2  # the two warmed ones, no connect on the way
