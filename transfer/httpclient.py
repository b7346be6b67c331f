"""The data plane's HTTP client: a pool of keep-alive connections shared by all jobs.

Only GET, only already-signed requests: connections carry no credentials, so
one pool (keyed by scheme, host, port) serves every job, and each request is
signed by its job (transfer/s3store.py) just before it is sent. Bodies are
received into each connection's reused buffer (transfer/httpconn.py says why
and what it saved).

Concurrency: `get` runs in the caller's task; it takes an idle connection
(most recently used first, younger than `idle_timeout`) or opens one, and
gives it back when the `async with` block ends, only if the exchange ended
cleanly on a keep-alive response; otherwise the connection is aborted. The
number of open connections is bounded by the callers' own concurrency (the
engine's global cap); idle ones by `max_idle_per_host`. A request that fails
before any response byte on a reused connection (the server closed it while
idle) is retried once on a fresh one; every other failure is the caller's.
`close` aborts every connection, idle or busy, and waits until they are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

from .errors import TransientError
from .httpconn import BUFFER_SIZE, BodyConsumer, HttpConnection

ERROR_BODY_LIMIT = 64 * 1024

Key = tuple[str, str, int]


class _Enough(Exception):
    pass


class Response:
    """The head of a response; read its body at most once, inside `get`'s block."""

    def __init__(self, conn: HttpConnection, stall_timeout: float) -> None:
        self._conn = conn
        self._stall_timeout = stall_timeout
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers  # lower-case names

    async def read_into(self, consumer: BodyConsumer) -> None:
        """Hand the body to `consumer` slice by slice, without copying."""
        await self._conn.read_body(consumer, self._stall_timeout)

    async def read(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        """The body, or its first `limit` bytes (then the connection is dropped)."""
        body = bytearray()

        def collect(data: memoryview) -> None:
            body.extend(data[: limit - len(body)])
            if len(body) >= limit:
                raise _Enough

        with contextlib.suppress(_Enough):
            await self._conn.read_body(collect, self._stall_timeout)
        return bytes(body)


class HttpClient:
    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        idle_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        buffer_size: int = BUFFER_SIZE,
    ) -> None:
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._buffer_size = buffer_size
        self._idle: dict[Key, list[HttpConnection]] = {}
        self._open: set[HttpConnection] = set()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @contextlib.asynccontextmanager
    async def get(
        self, url: str, headers: Mapping[str, str], *, stall_timeout: float
    ) -> AsyncIterator[Response]:
        """GET `url` with `headers` (signed; Host is added from the URL when
        absent) and yield the response once its head has arrived."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key: Key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not any(k.lower() == "host" for k in headers):
            headers = {"Host": parts.netloc, **headers}
        request = serialize_get(target, headers)
        conn = await self._exchange(key, request, stall_timeout)
        try:
            yield Response(conn, stall_timeout)
        finally:
            self._release(conn)

    async def _exchange(self, key: Key, request: bytes, stall_timeout: float) -> HttpConnection:
        conn = await self._acquire(key)
        try:
            await conn.send(request, stall_timeout)
        except TransientError as e:
            if not (conn.exchanges > 0 and conn.received == 0 and e.reason == "reset"):
                raise
            # The server closed it while it sat idle; its idle siblings are suspect too.
            for stale in self._idle.pop(key, []):
                stale.abort()
            conn = await self._connect(key)
            await conn.send(request, stall_timeout)
        return conn

    async def _acquire(self, key: Key) -> HttpConnection:
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        idle = self._idle.get(key, [])
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.reusable and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.abort()
        return await self._connect(key)

    async def _connect(self, key: Key) -> HttpConnection:
        scheme, host, port = key
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: HttpConnection(key, self._buffer_size),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except (OSError, TimeoutError) as e:
            raise TransientError(
                f"cannot connect to {host}:{port}: {e or 'timeout'}", "reset"
            ) from e
        self._open.add(conn)
        conn.closed.add_done_callback(lambda _: self._open.discard(conn))
        return conn

    def _release(self, conn: HttpConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if conn.reusable and not self._closed and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.abort()

    async def close(self) -> None:
        self._closed = True
        self._idle.clear()
        waiting = [c.closed for c in self._open]
        for conn in list(self._open):
            conn.abort()
        if waiting:
            await asyncio.wait(waiting, timeout=5)


def serialize_get(target: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1"]
    for name, value in headers.items():
        if any(c in s for s in (name, value) for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
