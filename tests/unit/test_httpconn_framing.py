"""Property: however a valid response is cut into receives, HttpConnection
hands the sink exactly its body. The protocol is driven directly through a
fake transport that honours pause/resume like the real one."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from s3feed.auth.clock import FakeClock
from s3feed.transfer.s3.connection import HttpConnection

HEADER_NAMES = st.sampled_from(["ETag", "x-amz-request-id", "Content-Type", "Link", "X-Pad"])
HEADER_VALUES = st.text(alphabet='abcdefXYZ0123456789 /;=-"', min_size=0, max_size=40).map(
    str.strip
)


class Transport:
    def __init__(self) -> None:
        self.paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: no SO_RCVLOWAT


@st.composite
def responses(draw: Any) -> tuple[bytes, bytes, int]:
    """(raw response, its body, status)"""
    body = draw(st.binary(min_size=0, max_size=3000))
    status = draw(st.sampled_from([200, 206, 404, 503]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    interim = draw(st.lists(st.sampled_from([b"100 Continue", b"103 Early Hints"]), max_size=2))
    raw = b""
    for line in interim:
        hints = b"".join(b"Link: <%s>\r\n" % v.encode() for _, v in headers[:2])
        raw += b"HTTP/1.1 " + line + b"\r\n" + hints + b"\r\n"
    raw += b"HTTP/1.1 %d Whatever\r\n" % status
    raw += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
    if draw(st.booleans()):
        raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        raw += b"Transfer-Encoding: chunked\r\n\r\n"
        sizes = draw(st.lists(st.integers(1, 700), max_size=8))
        at = 0
        for size in [*sizes, len(body)]:
            piece = body[at : at + size]
            if piece:
                raw += b"%x\r\n%s\r\n" % (len(piece), piece)
            at += len(piece)
        raw += b"0\r\n\r\n"
    return raw, body, status


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points) if b > a]


async def exchange(raw_segments: list[bytes], buffer_size: int) -> tuple[int, bytes, bool]:
    # A clock nobody moves: however slowly the examples run, no stall fires.
    conn = HttpConnection(("http", "127.0.0.1", 80), buffer_size=buffer_size, clock=FakeClock())
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    pending = bytearray(b"".join(raw_segments))
    cuts = iter(len(s) for s in raw_segments)

    async def deliver() -> None:
        """Receive the next segment (or what the buffer takes of it) while not paused."""
        nonlocal pending
        size = next(cuts, len(pending))
        while size > 0 and not transport.paused and pending and not transport.aborted:
            buf = conn.get_buffer(-1)
            n = min(len(buf), size, len(pending))
            buf[:n] = pending[:n]
            del pending[:n]
            size -= n
            conn.buffer_updated(n)
            await asyncio.sleep(0)

    send = asyncio.create_task(conn.send(b"GET / HTTP/1.1\r\n\r\n", stall_timeout=30))
    while not send.done():
        await asyncio.sleep(0)  # the request is written before any byte comes back
        await deliver()
    await send
    got = bytearray()
    read = asyncio.create_task(conn.read_body(got.extend, stall_timeout=30))
    while not read.done():
        await asyncio.sleep(0)
        await deliver()
    await read
    return conn.status, bytes(got), conn.reusable


@settings(max_examples=300, deadline=None)
@given(
    response=responses(),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    buffer_size=st.sampled_from([1024, 4096]),
)
def test_any_split_of_any_response_gives_its_body(
    response: tuple[bytes, bytes, int], cuts: list[int], buffer_size: int
) -> None:
    raw, body, status = response
    got_status, got_body, reusable = asyncio.run(exchange(split(raw, cuts), buffer_size))
    assert (got_status, got_body) == (status, body)
    assert reusable
