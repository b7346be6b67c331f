"""daemon/api/outputs.py: what an upload's handler does over HTTP itself (the
interim 100 Continue, the body handed to transfer/upload), against a real
aiohttp server on a Unix socket. The journal's tests are in
test_destination_journal.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from s3feed.daemon.api.outputs import RequestBody, _send_continue, expect_handler
from s3feed.transfer.upload.multipart import IncompleteBody, Upload, UploadConfig, upload
from tests.fakes.upload import FakeUploadStore

MiB = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _serving(tmp_path: Path, handler: Handler) -> AsyncIterator[str]:
    app = web.Application(client_max_size=0)
    app.router.add_put("/x", handler, expect_handler=expect_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "s.sock")
    await web.UnixSite(runner, path).start()
    try:
        yield path
    finally:
        await runner.cleanup()


async def _exchange(path: str, *sends: bytes) -> list[bytes]:
    """Each send, then what the server answered to it (until a pause or the end)."""
    reader, writer = await asyncio.open_unix_connection(path)
    answers = []
    try:
        for data in sends:
            writer.write(data)
            await writer.drain()
            got = b""
            try:
                async with asyncio.timeout(0.5):
                    while chunk := await reader.read(65536):
                        got += chunk
            except TimeoutError:
                pass
            answers.append(got)
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


HEAD = b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"


async def test_the_100_continue_comes_when_the_handler_says_and_the_answer_after(
    tmp_path: Path,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await _send_continue(request)
        return web.Response(status=201, text=(await request.content.read()).decode())

    async with _serving(tmp_path, handler) as path:
        before, after = await _exchange(path, HEAD, b"hello")
    assert before == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert after.startswith(b"HTTP/1.1 201 Created\r\n") and after.endswith(b"hello")


async def test_a_failure_after_the_100_continue_still_gets_its_answer(tmp_path: Path) -> None:
    # aiohttp sends an error answer only while no byte of the response went
    # out: the interim answer must not count as one.
    async def handler(request: web.Request) -> web.Response:
        await _send_continue(request)
        await request.content.read()
        raise RuntimeError("S3 said no")

    async with _serving(tmp_path, handler) as path:
        before, after = await _exchange(path, HEAD, b"hello")
    assert before == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert after.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_a_body_aiohttp_cannot_decode_is_an_incomplete_body(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    async def handler(request: web.Request) -> web.Response:
        state = Upload("out/x", size_hint=None)
        config = UploadConfig(part_size=5 * MiB, memory=5 * MiB, retries=0)
        try:
            await upload(
                RequestBody(request.content), FakeUploadStore(), "out/x", config=config, state=state
            )
        except IncompleteBody as e:
            errors.append(e)
        return web.Response(status=400)

    async with _serving(tmp_path, handler) as path:
        await _exchange(
            path,
            b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\n"
            b"Content-Length: 5\r\n\r\nhello",  # not deflate
        )
    assert len(errors) == 1
    assert "the body broke off after 0 bytes" in str(errors[0])
