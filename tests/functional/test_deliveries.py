"""Deliveries (POST .../objects/{Key}?deliver=fd) through the real socket, fake
S3 behind: the descriptor handshake, the descriptor checks, and the bytes
(docs/design.md, Socket API: deliveries)."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import random
import socket
from typing import Any

import orjson
import pytest
from harness import Harness

from s3feed.client import AsyncClient, S3feedError

MiB = 1024 * 1024
DATA = random.Random(7).randbytes(3 * MiB + 11)
PATH = "/v1/jobs/job-1/objects/clip.ts"


@pytest.fixture
def api_settings() -> dict[str, Any]:
    # The descriptor must come within header_timeout of the 100 Continue; the
    # tests that send one must never race that timer, however busy the machine.
    return {"header_timeout": 60.0}


async def _job(h: Harness) -> None:
    h.store().put("sources/clip.ts", DATA)
    assert (await h.create_job()).status == 201


async def _drain(fd: int) -> bytes:
    """Read a pipe or socket to its end in a thread (the daemon writes it in our loop)."""

    def read_all() -> bytes:
        out = bytearray()
        while chunk := os.read(fd, MiB):
            out += chunk
        return bytes(out)

    return await asyncio.to_thread(read_all)


async def test_delivery_into_a_pipe_and_a_socket_with_range(harness: Harness) -> None:
    await _job(harness)
    async with AsyncClient(harness.socket) as c:
        r, w = os.pipe()
        flags = fcntl.fcntl(w, fcntl.F_GETFL)
        reader = asyncio.ensure_future(_drain(r))
        doc = await c.deliver("job-1", "clip.ts", w)
        assert fcntl.fcntl(w, fcntl.F_GETFL) == flags, "the caller's flags are put back"
        os.close(w)
        assert await reader == DATA
        os.close(r)
        assert doc["Bytes"] == doc["Length"] == doc["Size"] == len(DATA)
        assert doc["ETag"] == harness.store().objects["sources/clip.ts"].etag
        assert "ContentRange" not in doc
        a, b = socket.socketpair()
        reader = asyncio.ensure_future(_drain(b.fileno()))
        doc = await c.deliver("job-1", "clip.ts", a.fileno(), "1000-2500000")
        a.close()
        assert await reader == DATA[1000:2500001]
        b.close()
        assert doc["ContentRange"] == f"bytes 1000-2500000/{len(DATA)}"
        job = await c.get_job("job-1")
    assert [t["State"] for t in job["Transfers"] if t["Mode"] == "stream"] == ["done", "done"]


async def test_errors_before_a_byte_leave_the_output_untouched(harness: Harness) -> None:
    await _job(harness)
    async with AsyncClient(harness.socket) as c:
        for key, rng, code in (
            ("missing.ts", None, "NoSuchKey"),
            ("clip.ts", "99999999-", "InvalidRange"),
        ):
            r, w = os.pipe()
            with pytest.raises(S3feedError) as err:
                await c.deliver("job-1", key, w, rng)
            os.close(w)
            assert err.value.code == code and err.value.document["Delivered"] == 0
            assert os.read(r, 10) == b""
            os.close(r)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            with pytest.raises(S3feedError) as err:
                await c.deliver("job-1", "clip.ts", null)
            assert (err.value.status, err.value.code) == (400, "InvalidRequest")
            assert "neither a regular file" in err.value.message
        finally:
            os.close(null)


async def _handshake(h: Harness, query: str = "?deliver=fd") -> tuple[socket.socket, bytes]:
    """Send the head; return the socket and the daemon's first answer bytes."""
    loop = asyncio.get_running_loop()
    head = f"POST {PATH}{query} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    sock = socket.socket(socket.AF_UNIX)
    # Blocking, and done before the loop runs again: a Unix connect is queued at
    # once and the head fits the socket's buffer, so the daemon finds the head
    # there when it accepts, whatever its head timer.
    sock.connect(h.socket)
    sock.sendall(head.encode())
    sock.setblocking(False)
    return sock, await loop.sock_recv(sock, 65536)


async def _answer(sock: socket.socket, first: bytes = b"", closes: bool = True) -> tuple[int, Any]:
    """The final answer; after a descriptor was asked for, the daemon closes the connection."""
    loop = asyncio.get_running_loop()
    buf = first
    while True:
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(body) >= length and not closes:
                break
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        buf += chunk
    sock.close()
    assert len(body) == length
    return int(head.split()[1]), orjson.loads(body)


async def test_the_descriptor_handshake_refuses_what_is_not_one_fd(harness: Harness) -> None:
    await _job(harness)
    sock, first = await _handshake(harness)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.send(b"\0")  # the byte without a descriptor
    status, doc = await _answer(sock)
    assert (status, doc["Error"]["Code"]) == (400, "InvalidRequest")
    assert "exactly one descriptor with SCM_RIGHTS (got 0)" in doc["Error"]["Message"]

    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    sock, first = await _handshake(harness)
    sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w1, w2]))])
    status, doc = await _answer(sock)
    assert (status, doc["Error"]["Code"]) == (400, "InvalidRequest")
    assert "(got 2)" in doc["Error"]["Message"]
    for fd in (w1, w2):
        os.close(fd)
    assert os.read(r1, 1) == b"" and os.read(r2, 1) == b"", "the daemon kept no copy"
    for fd in (r1, r2):
        os.close(fd)

    sock, first = await _handshake(harness, "")  # POST without ?deliver=fd
    status, doc = await _answer(sock, first, closes=False)
    assert (status, doc["Error"]["Code"]) == (400, "InvalidRequest")
    job = (await harness.request("GET", "/v1/jobs/job-1")).json
    assert [t for t in job["Transfers"] if t["Mode"] == "stream"] == []


# The daemon's descriptor timer runs on the loop's clock and is the behaviour
# here; the client never sends, so a busy machine can only delay the 408.
@pytest.mark.parametrize("api_settings", [{"header_timeout": 0.3}])
async def test_a_descriptor_that_never_comes_is_408(harness: Harness) -> None:
    await _job(harness)
    sock, first = await _handshake(harness)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    status, doc = await asyncio.wait_for(_answer(sock), 60)  # a hang guard
    assert (status, doc["Error"]["Code"]) == (408, "RequestTimeout")
    assert "no descriptor arrived within 0.3 s" in doc["Error"]["Message"]
