"""An object as a seekable binary file: `Client.open` and `AsyncClient.open`
(docs/design.md, CLI: clients), for Python tools that want a file object
(PyAV, zipfile, tarfile, a parser of their own) rather than a path or a pipe.

    with Client().open("job-1", "show/ep1.mp4") as f:    # an io.BufferedReader
        f.seek(-1024, os.SEEK_END); tail = f.read()
    async with AsyncClient() as c:
        async with c.open("job-1", "show/ep1.mp4") as f:  # or f = await c.open(...)
            await f.seek(100); head = await f.read(4096)

Design note. Each read is a ranged GET of the object over the Unix socket
(docs/design.md, Socket API: streams), one connection at a time. A request
asks for a block from the position: `MIN_BLOCK` after an open or a jump,
twice the last one (up to `MAX_BLOCK`) while the reader reads in order, so
an in-order reader pays one request per `MAX_BLOCK`, and the daemon reads
ahead inside each (its stream window). The answer is read as the caller reads, never
held whole: memory is the socket's buffers plus `BUFFER` (the blocking
file's io.BufferedReader). A seek only moves the position; the next read
settles the open answer: a short jump forward inside it is read through,
an answer with little left is drained (the connection is kept), any other
is dropped by closing its connection (the daemon then cancels its
transfer). The first request (at open) learns the size and ETag; every
later one carries `If-Match` with that ETag (a 412 is taken as a change)
and its answer must name the same ETag and size, so an object replaced while open is `SourceChanged`
(409), never bytes of two versions. A body that ends short is `ShortRead`
(502); nothing is retried, as for `read_object`.
"""

from __future__ import annotations

import http.client
import io
import os
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from s3feed.client.calls import S3feedError, _Calls, _error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    import aiohttp
    from _typeshed import WriteableBuffer


KiB = 1024
MIN_BLOCK = 256 * KiB  # the first request's bytes, and again after a jump
MAX_BLOCK = 8 * 1024 * KiB  # in-order requests grow to this
SKIP = 256 * KiB  # a jump forward this close, inside the open answer, is read through
BUFFER = 64 * KiB  # the blocking file's buffer (io.BufferedReader)

__all__ = ["AsyncObjectFile", "AsyncOpening", "ObjectReader", "RawObject"]


@dataclass
class _Answer:
    """What one ranged GET answered: bytes first..end-1 of a `size`-byte object."""

    first: int
    end: int
    size: int
    etag: str | None


def _answer(
    status: int,
    crange: str | None,
    etag: str | None,
    body: Callable[[], bytes],
    key: str,
) -> _Answer:
    """The range an answer carries (its Content-Range and ETag), or the error
    it is. `body` reads an error's document."""
    crange = crange or ""
    if status == 416:  # only asked at open, at 0: the object is empty
        total = crange.rpartition("/")[2]
        if total == "0":
            body()  # the connection stays usable
            return _Answer(0, 0, 0, None)
    if status == 412:
        raise _changed(key)
    if status >= 400:
        raise _error(status, body())
    if status != 206 or not crange.startswith("bytes "):
        raise S3feedError(502, "HttpError", f"expected a 206 with a Content-Range, got {status}")
    span, _, total = crange[6:].partition("/")
    first, _, last = span.partition("-")
    return _Answer(int(first), int(last) + 1, int(total), etag)


def _changed(key: str) -> S3feedError:
    return S3feedError(409, "SourceChanged", f"{key} changed while it was open; open it again")


class _Plan:
    """Where the file is and which answer is open: the state both files share."""

    def __init__(self, key: str, first: _Answer) -> None:
        self.key = key
        self.size = first.size
        self.etag = first.etag
        self.pos = 0
        self.at = 0  # the open answer's next byte
        self.end = first.end  # ... and its end (at == end: none open)
        self.block = MIN_BLOCK
        self.jumped = False  # since the last request

    def seek(self, offset: int, whence: int) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def settle(self) -> tuple[str, int]:
        """What to do with the open answer before reading at `pos`: "keep" it
        (or none is open), "skip" n bytes of it (a short jump forward inside
        it), "drain" its last n bytes or "drop" it; after a jump the next
        read starts a new request, and the blocks start small again."""
        if self.at == self.pos:
            return "keep", 0
        left = self.end - self.at
        if left and self.at < self.pos < self.end and self.pos - self.at <= SKIP:
            return "skip", self.pos - self.at
        self.block, self.jumped = MIN_BLOCK, True
        self.at = self.end = self.pos
        if not left:
            return "keep", 0
        return ("drain", left) if left <= SKIP else ("drop", 0)

    def next_range(self) -> str:
        """The Range of the next request, at `pos`; in order, the blocks grow."""
        if not self.jumped:
            self.block = min(self.block * 2, MAX_BLOCK)
        self.jumped = False
        last = min(self.size, self.pos + self.block) - 1
        return f"bytes={self.pos}-{last}"

    def opened(self, answer: _Answer) -> None:
        if answer.etag != self.etag or answer.size != self.size:
            raise _changed(self.key)
        if answer.first != self.pos:
            raise S3feedError(502, "HttpError", f"asked for {self.pos}, got {answer.first}")
        self.at, self.end = answer.first, answer.end

    def want(self, n: int) -> int:
        """How much of a read of `n` the open answer gives."""
        return min(n, self.end - self.at)

    def moved(self, n: int) -> None:
        if n == 0:
            raise S3feedError(502, "ShortRead", f"{self.key}: the answer ended early")
        self.pos += n
        self.at += n


def _open_range() -> str:
    return f"bytes=0-{MIN_BLOCK - 1}"


class RawObject(io.RawIOBase):
    """The unbuffered file under `ObjectReader`: one connection, kept alive
    across requests while answers are read to their end."""

    def __init__(
        self, connect: Callable[[], http.client.HTTPConnection], job_id: str, key: str
    ) -> None:
        self._connect = connect
        self._path = _Calls.object_path(job_id, key)
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self.name = key
        first = self._request(_open_range(), {})
        self._plan = _Plan(key, first)

    def _request(self, byte_range: str, headers: dict[str, str]) -> _Answer:
        reused = self._conn is not None
        if self._conn is None:
            self._conn = self._connect()
        try:
            self._conn.request("GET", self._path, headers={"Range": byte_range, **headers})
            resp = self._conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self._drop()
            if not reused:
                raise
            # The daemon closed the idle connection (keep-alive timeout): once more.
            return self._request(byte_range, headers)
        except BaseException:
            self._drop()
            raise
        try:
            answer = _answer(
                resp.status,
                resp.headers.get("Content-Range"),
                resp.headers.get("ETag"),
                resp.read,
                self.name,
            )
        except BaseException:
            self._drop()
            raise
        self._resp = resp
        return answer

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._resp = None

    @property
    def size(self) -> int:
        return self._plan.size

    @property
    def etag(self) -> str | None:
        return self._plan.etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._plan.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        return self._plan.seek(offset, whence)

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        plan = self._plan
        if plan.pos >= plan.size or not len(view):
            return 0
        action, n = plan.settle()
        try:
            if action == "skip":
                self._read_through(n)
                plan.at += n
            elif action == "drain":
                self._read_through(n)
                self._resp = None  # read to its end: the connection is free again
            elif action == "drop":
                self._drop()
            if plan.end == plan.at:
                byte_range = plan.next_range()
                plan.opened(self._request(byte_range, self._if_match()))
            assert self._resp is not None
            got = self._resp.readinto(view[: plan.want(len(view))])
        except http.client.IncompleteRead as exc:
            self._drop()
            raise S3feedError(502, "ShortRead", f"{plan.key}: stream ended early: {exc}") from None
        except BaseException:
            self._drop()
            raise
        plan.moved(got)
        if plan.at == plan.end:
            self._resp = None  # read to its end: the connection is free again
        return got

    def _if_match(self) -> dict[str, str]:
        return {"If-Match": self._plan.etag} if self._plan.etag else {}

    def _read_through(self, n: int) -> None:
        assert self._resp is not None
        while n:
            got = len(self._resp.read(min(n, BUFFER)))
            if not got:
                raise http.client.IncompleteRead(b"", n)
            n -= got

    def close(self) -> None:
        self._drop()
        super().close()


class ObjectReader(io.BufferedReader):
    """What `Client.open` returns: an io.BufferedReader over `RawObject`
    (read, read1, readinto, peek, readline, seek, tell, close; a context
    manager), with the object's `size` and `etag`."""

    raw: RawObject

    def __init__(self, raw: RawObject) -> None:
        super().__init__(raw, buffer_size=BUFFER)

    @property
    def size(self) -> int:
        return self.raw.size

    @property
    def etag(self) -> str | None:
        return self.raw.etag


def open_object(
    connect: Callable[[], http.client.HTTPConnection], job_id: str, key: str
) -> ObjectReader:
    """`Client.open`: `connect` makes a connection to the socket."""
    return ObjectReader(RawObject(connect, job_id, key))


class AsyncObjectFile:
    """What `AsyncClient.open` gives: `await read(n=-1)`, `await seek(offset,
    whence)`, `tell()`, `size`, `etag`, `await close()`; an async context
    manager. A read returns `n` bytes, fewer only at the end."""

    def __init__(self, session: aiohttp.ClientSession, job_id: str, key: str) -> None:
        self._session = session
        self._path = _Calls.object_path(job_id, key)
        self.name = key
        self._resp: aiohttp.ClientResponse | None = None
        self._plan: _Plan | None = None
        self.closed = False

    async def _open(self) -> AsyncObjectFile:
        self._plan = _Plan(self.name, await self._request(_open_range(), {}))
        return self

    async def _request(self, byte_range: str, headers: dict[str, str]) -> _Answer:
        resp = await self._session.get(self._path, headers={"Range": byte_range, **headers})
        try:
            body = await resp.read() if resp.status >= 400 else b""
            answer = _answer(
                resp.status,
                resp.headers.get("Content-Range"),
                resp.headers.get("ETag"),
                lambda: body,
                self.name,
            )
        except BaseException:
            resp.release()
            raise
        self._resp = resp
        return answer

    @property
    def plan(self) -> _Plan:
        if self._plan is None or self.closed:
            raise ValueError("I/O operation on a closed or unopened file")
        return self._plan

    @property
    def size(self) -> int:
        return self.plan.size

    @property
    def etag(self) -> str | None:
        return self.plan.etag

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.plan.pos

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.plan.seek(offset, whence)

    async def read(self, n: int = -1) -> bytes:
        plan = self.plan
        n = plan.size - plan.pos if n < 0 else min(n, max(0, plan.size - plan.pos))
        out = bytearray()
        while len(out) < n:
            out += await self._read1(n - len(out))
        return bytes(out)

    async def _read1(self, n: int) -> bytes:
        from aiohttp import ClientPayloadError

        plan = self.plan
        action, skip = plan.settle()
        try:
            if action == "skip":
                await self._read_through(skip)
                plan.at += skip
            elif action == "drain":
                await self._read_through(skip)
                self._release()
            elif action == "drop":
                self._drop()
            if plan.end == plan.at:
                byte_range = plan.next_range()
                plan.opened(await self._request(byte_range, self._if_match()))
            assert self._resp is not None
            data = await self._resp.content.read(plan.want(n))
        except ClientPayloadError as exc:
            self._drop()
            raise S3feedError(502, "ShortRead", f"{plan.key}: stream ended early: {exc}") from None
        except BaseException:
            self._drop()
            raise
        plan.moved(len(data))
        if plan.at == plan.end:
            self._release()
        return data

    def _if_match(self) -> dict[str, str]:
        etag = self.plan.etag
        return {"If-Match": etag} if etag else {}

    async def _read_through(self, n: int) -> None:
        assert self._resp is not None
        while n:
            data = await self._resp.content.read(min(n, BUFFER))
            if not data:
                raise S3feedError(502, "ShortRead", f"{self.name}: the answer ended early")
            n -= len(data)

    def _release(self) -> None:
        if self._resp is not None:
            self._resp.release()  # read to its end: its connection goes back to the pool
            self._resp = None

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()  # not read to its end: its connection is closed
            self._resp = None

    async def close(self) -> None:
        self._drop()
        self.closed = True

    async def __aenter__(self) -> AsyncObjectFile:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncOpening:
    """`AsyncClient.open(...)`: awaited, the open file; or `async with` it."""

    def __init__(self, opening: Callable[[], Awaitable[AsyncObjectFile]]) -> None:
        self._opening = opening
        self._file: AsyncObjectFile | None = None

    def __await__(self) -> Generator[Any, None, AsyncObjectFile]:
        return self._opening().__await__()

    async def __aenter__(self) -> AsyncObjectFile:
        self._file = await self._opening()
        return self._file

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            await self._file.close()


def open_async(session: aiohttp.ClientSession, job_id: str, key: str) -> AsyncOpening:
    """`AsyncClient.open`, over the client's session."""

    def opening() -> Awaitable[AsyncObjectFile]:
        f = AsyncObjectFile(session, job_id, key)
        return f._open()

    return AsyncOpening(opening)
