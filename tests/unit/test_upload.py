"""transfer/upload/multipart.py against the in-memory FakeUploadStore."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web

from s3feed.transfer.checksums import composite, crc32c
from s3feed.transfer.errors import AccessDenied, IncompleteBody, TransientError
from s3feed.transfer.upload.multipart import (
    CHECKSUM,
    BodyError,
    Encryption,
    Upload,
    UploadConfig,
    UploadResult,
    upload,
)
from tests.fakes.upload import FakeUploadStore

MiB = 1024 * 1024
PART = 5 * MiB


class Body:
    """A body that hands out `data` in small reads; optionally raises `error` at `break_at`."""

    def __init__(
        self,
        data: bytes,
        chunk: int = 256 * 1024,
        break_at: int | None = None,
        error: Exception | None = None,
    ) -> None:
        self.data, self.chunk, self.pos, self.break_at = data, chunk, 0, break_at
        self.error = error or ConnectionResetError("client gone")
        self.reads = 0

    async def read(self, n: int) -> bytes:
        self.reads += 1
        await asyncio.sleep(0)
        if self.break_at is not None and self.pos >= self.break_at:
            raise self.error
        out = self.data[self.pos : self.pos + min(n, self.chunk)]
        self.pos += len(out)
        return out


async def _no_sleep(_: float) -> None:
    return None


def _run(
    data: bytes,
    store: FakeUploadStore,
    *,
    hint: int | None = None,
    memory: int = 4 * PART,
    body: Body | None = None,
    **kw: object,
) -> UploadResult:
    config = UploadConfig(part_size=PART, memory=memory, retries=3)
    state = Upload("out/x", size_hint=hint)
    return asyncio.run(
        upload(
            body or Body(data), store, "out/x", config=config, state=state, sleep=_no_sleep, **kw
        )  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
@pytest.mark.parametrize("hinted", [False, True])
def test_round_trip_is_byte_exact(size: int, hinted: bool) -> None:
    data = os.urandom(size)
    store = FakeUploadStore()
    result = _run(data, store, hint=size if hinted else None)
    assert store.objects["out/x"].data == data
    assert result.size == size
    assert not store.uploads  # nothing left behind
    if size < PART:
        assert "CreateMultipartUpload" not in store.calls
        assert result.checksum == {CHECKSUM: crc32c(data)}
    else:
        parts = [data[i : i + PART] for i in range(0, size, PART)]
        assert result.checksum == {CHECKSUM: composite([crc32c(p) for p in parts])}


def test_parts_go_in_parallel_within_the_memory_budget() -> None:
    async def main() -> None:
        store = FakeUploadStore()
        store.gate = asyncio.Event()
        body = Body(os.urandom(8 * PART))
        config = UploadConfig(part_size=PART, memory=3 * PART)
        state = Upload("out/x")
        task = asyncio.create_task(
            upload(body, store, "out/x", config=config, state=state, sleep=_no_sleep)
        )
        # Three buffers: three parts go up, and the reader stops before a fourth.
        while store.in_flight < 3:
            await asyncio.sleep(0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert store.in_flight == 3
        assert body.pos == 3 * PART  # backpressure: nothing read beyond the budget
        store.gate.set()
        await task
        assert store.max_in_flight == 3

    asyncio.run(main())


def test_transient_part_failures_are_retried() -> None:
    store = FakeUploadStore()
    store.failures["UploadPart"] = [
        TransientError("503 SlowDown", "throttled"),
        TransientError("reset", "reset"),
    ]
    data = os.urandom(2 * PART + 3)
    _run(data, store)
    assert store.objects["out/x"].data == data
    assert store.calls.count("UploadPart") == 3 + 2


def test_a_part_failing_for_good_aborts() -> None:
    store = FakeUploadStore()
    store.failures["UploadPart"] = [TransientError("503", "server_error")] * 4
    with pytest.raises(TransientError):
        _run(os.urandom(2 * PART), store)
    assert "AbortMultipartUpload" in store.calls
    assert not store.uploads and not store.objects


def test_client_gone_mid_body_aborts() -> None:
    store = FakeUploadStore()
    with pytest.raises(IncompleteBody):
        _run(b"", store, body=Body(os.urandom(3 * PART), break_at=PART + 1))
    assert "AbortMultipartUpload" in store.calls
    assert not store.uploads and not store.objects


def test_a_body_that_breaks_off_aborts_and_says_so() -> None:
    store = FakeUploadStore()
    body = Body(os.urandom(3 * PART), break_at=PART + 1, error=BodyError("bad chunk"))
    with pytest.raises(IncompleteBody, match=r"the body broke off after \d+ bytes: bad chunk"):
        _run(b"", store, body=body)
    assert "AbortMultipartUpload" in store.calls
    assert not store.uploads and not store.objects


def test_a_body_source_failing_otherwise_is_not_called_a_short_body() -> None:
    store = FakeUploadStore()
    with pytest.raises(RuntimeError, match="a bug"):
        _run(b"", store, body=Body(os.urandom(PART), break_at=0, error=RuntimeError("a bug")))


def test_short_body_under_content_length_stores_nothing() -> None:
    store = FakeUploadStore()
    with pytest.raises(IncompleteBody, match="100 of 200"):
        _run(os.urandom(100), store, hint=200)
    assert not store.objects and "PutObject" not in store.calls
    with pytest.raises(IncompleteBody):
        _run(os.urandom(PART + 5), store, hint=2 * PART)
    assert not store.uploads and not store.objects


def test_refusal_of_a_large_body_comes_before_the_body_flows() -> None:
    store = FakeUploadStore()
    store.failures["CreateMultipartUpload"] = [AccessDenied("s3:PutObject")]
    flowed: list[bool] = []

    async def ready() -> None:
        flowed.append(True)

    body = Body(os.urandom(2 * PART))
    with pytest.raises(AccessDenied):
        _run(b"", store, hint=2 * PART, body=body, ready=ready)
    assert body.reads == 0 and not flowed


def test_encryption_and_content_type_reach_the_store() -> None:
    store = FakeUploadStore()
    enc = Encryption("aws:kms", "arn:aws:kms:eu-west-1:1:key/k")
    _run(b"abc", store, encryption=enc, content_type="video/mp2t")
    headers = store.objects["out/x"].headers
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"].endswith("key/k")
    assert headers["Content-Type"] == "video/mp2t"


def test_cancelled_upload_aborts_its_multipart_upload() -> None:
    async def main() -> FakeUploadStore:
        store = FakeUploadStore()
        store.gate = asyncio.Event()
        state = Upload("out/x")
        config = UploadConfig(part_size=PART, memory=2 * PART)
        task = asyncio.create_task(
            upload(Body(os.urandom(4 * PART)), store, "out/x", config=config, state=state)
        )
        while store.in_flight < 2:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return store

    store = asyncio.run(main())
    assert "AbortMultipartUpload" in store.calls
    assert not store.uploads and not store.objects


def test_known_size_above_10000_parts_grows_the_part() -> None:
    # 10,001 x PART announced: the part grows so that it fits in 10,000 parts.
    store = FakeUploadStore()
    hint = 10_001 * PART
    state = Upload("out/x", size_hint=hint)
    config = UploadConfig(part_size=PART, memory=PART)

    async def main() -> None:
        with pytest.raises(IncompleteBody):
            await upload(Body(b"x" * 10), store, "out/x", config=config, state=state)

    asyncio.run(main())
    assert "AbortMultipartUpload" in store.calls


async def test_a_request_body_is_buffered_by_aiohttp_only_a_few_slices_ahead(
    tmp_path: Path,
) -> None:
    """aiohttp raises a request's buffer limits to twice the largest read asked
    for: reading whole parts let it hold 2 parts of the body beyond the part
    buffers (measured +48 MiB over `upload_memory` in a daemon). A real aiohttp
    server reads the body through `upload` while the store is slow."""
    limits: list[tuple[int, int]] = []
    store = FakeUploadStore()

    async def handler(request: web.Request) -> web.Response:
        config = UploadConfig(part_size=PART, memory=2 * PART, retries=0)
        state = Upload("out/x", size_hint=request.content_length)
        await upload(request.content, store, "out/x", config=config, state=state)
        limits.append(request.content.get_read_buffer_limits())
        return web.Response(text="ok")

    app = web.Application(client_max_size=0)
    app.router.add_put("/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "s.sock")
    await web.UnixSite(runner, path).start()
    data = os.urandom(4 * PART + 3)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(f"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        writer.write(data)
        await writer.drain()
        status = await reader.readline()
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert status.startswith(b"HTTP/1.1 200"), status
    assert store.objects["out/x"].data == data
    low, high = limits[0]
    assert high <= 2 * MiB, (low, high)  # a part is 5 MiB: it was 10 MiB
