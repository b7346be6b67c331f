"""`Client.open` and `AsyncClient.open`: an object as a seekable file, read
with ranged GETs over the real socket, fake S3 behind (docs/design.md, CLI:
clients; client/objectfile.py). Every read is compared with the object's bytes.

The daemon runs on this test's event loop: the blocking client runs in a thread.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import random

import pytest
from harness import Harness

from s3feed.client import AsyncClient, Client, S3feedError
from s3feed.client.objectfile import MAX_BLOCK, MIN_BLOCK, open_object
from s3feed.client.unixhttp import UnixHTTPConnection

MiB = 1024 * 1024
# Past MAX_BLOCK, so an in-order read grows its requests to the largest.
DATA = random.Random(23).randbytes(2 * MAX_BLOCK + 12345)
KEY = "show/late.mp4"


async def _job(h: Harness, data: bytes = DATA, key: str = KEY) -> None:
    h.store().put(f"sources/{key}", data)
    assert (await h.create_job()).status == 201


def _random_walk(f: io.BufferedReader, rng: random.Random, steps: int) -> None:
    """Seeks of every kind and reads of every size, each checked against DATA."""
    size = len(DATA)
    for _ in range(steps):
        whence = rng.choice((os.SEEK_SET, os.SEEK_CUR, os.SEEK_END))
        base = {os.SEEK_SET: 0, os.SEEK_CUR: f.tell(), os.SEEK_END: size}[whence]
        target = rng.choice(
            (
                rng.randrange(size),  # anywhere
                min(size, f.tell() + rng.randrange(1, 300 * 1024)),  # a short jump forward
                size - rng.randrange(1, 4096),  # near the end, as a moov-at-end probe reads
                size + rng.randrange(3),  # at or past the end
            )
        )
        assert f.seek(target - base, whence) == target == f.tell()
        n = rng.choice((1, 7, 4096, 65536, 300 * 1024, 3 * MiB))
        got = f.read(n) if rng.random() < 0.8 else f.read1(n)
        assert got == DATA[target : target + n][: len(got)]
        assert len(got) == len(DATA[target : target + n]) or n > 64 * 1024  # read1 may stop short
        assert f.tell() == target + len(got)


async def test_random_seeks_read_the_objects_bytes(harness: Harness) -> None:
    await _job(harness)

    def walk() -> None:
        with Client(harness.socket).open("job-1", KEY) as f:
            assert (f.size, f.seekable(), f.readable()) == (len(DATA), True, True)
            assert f.etag == harness.store().objects[f"sources/{KEY}"].etag
            assert f.read(10) == DATA[:10]
            _random_walk(f, random.Random(5), 200)
            f.seek(0)
            assert f.read() == DATA  # in order, to the end
            assert f.read(1) == b""
        assert f.closed
        with pytest.raises(ValueError):
            f.read(1)

    await asyncio.to_thread(walk)


async def test_in_order_reads_keep_one_connection_and_fetch_each_byte_once(
    harness: Harness,
) -> None:
    await _job(harness)
    connections: list[UnixHTTPConnection] = []

    def connect() -> http.client.HTTPConnection:
        connections.append(UnixHTTPConnection(harness.socket, None))
        return connections[-1]

    def read_all() -> bytes:
        with open_object(connect, "job-1", KEY) as f:
            out = bytearray()
            while chunk := f.read(100_000):
                out += chunk
            return bytes(out)

    assert await asyncio.to_thread(read_all) == DATA
    assert len(connections) == 1
    # Every block was read to its end: S3 sent each byte once.
    assert harness.store().bytes_sent == len(DATA)


async def test_a_jump_drops_the_open_answer_and_starts_small(harness: Harness) -> None:
    await _job(harness)

    def jump() -> int:
        with Client(harness.socket).open("job-1", KEY) as f:
            f.seek(len(DATA) // 2)
            assert f.read(10) == DATA[len(DATA) // 2 :][:10]
            return f.raw._plan.end - f.raw._plan.pos

    left = await asyncio.to_thread(jump)
    # The block after a jump is MIN_BLOCK again, not a grown one.
    assert 0 < left <= MIN_BLOCK


async def test_an_object_replaced_while_open_is_source_changed(harness: Harness) -> None:
    await _job(harness)
    f = await asyncio.to_thread(Client(harness.socket).open, "job-1", KEY)
    try:
        assert await asyncio.to_thread(f.read, 100) == DATA[:100]
        harness.store().overwrite(f"sources/{KEY}", DATA[::-1])
        f.seek(len(DATA) - 1000)  # a new request: the new version's ETag answers it
        with pytest.raises(S3feedError) as err:
            await asyncio.to_thread(f.read, 100)
        assert (err.value.status, err.value.code) == (409, "SourceChanged")
    finally:
        f.close()


async def test_open_errors_and_an_empty_object(harness: Harness) -> None:
    await _job(harness)
    harness.store().put("sources/empty.bin", b"")
    client = Client(harness.socket)
    with pytest.raises(S3feedError) as err:
        await asyncio.to_thread(client.open, "job-1", "show/missing.mp4")
    assert err.value.code == "NoSuchKey"
    with pytest.raises(S3feedError) as err:
        await asyncio.to_thread(client.open, "no-such-job", KEY)
    assert err.value.code == "NoSuchJob"
    f = await asyncio.to_thread(client.open, "job-1", "empty.bin")
    with f:
        assert (f.size, f.read(), f.seek(0, os.SEEK_END)) == (0, b"", 0)
    async with AsyncClient(harness.socket) as c:
        async with c.open("job-1", "empty.bin") as af:
            assert (af.size, await af.read()) == (0, b"")
        with pytest.raises(S3feedError) as err:
            await c.open("job-1", "show/missing.mp4")
        assert err.value.code == "NoSuchKey"


async def test_async_random_seeks_read_the_objects_bytes(harness: Harness) -> None:
    await _job(harness)
    rng = random.Random(9)
    size = len(DATA)
    async with AsyncClient(harness.socket) as c:
        f = await c.open("job-1", KEY)
        assert (f.size, f.tell()) == (size, 0)
        for _ in range(150):
            target = rng.choice(
                (rng.randrange(size), min(size, f.tell() + rng.randrange(1, 300 * 1024)))
            )
            whence = rng.choice((os.SEEK_SET, os.SEEK_CUR, os.SEEK_END))
            base = {os.SEEK_SET: 0, os.SEEK_CUR: f.tell(), os.SEEK_END: size}[whence]
            assert await f.seek(target - base, whence) == target
            n = rng.choice((1, 4096, 300 * 1024, 3 * MiB))
            assert await f.read(n) == DATA[target : target + n]
        await f.seek(0)
        assert await f.read() == DATA
        await f.close()
        with pytest.raises(ValueError):
            await f.read(1)
        harness.store().bytes_sent = 0
        async with c.open("job-1", KEY) as g:
            while await g.read(1_000_000):
                pass
        assert harness.store().bytes_sent == size  # in order: each byte once
