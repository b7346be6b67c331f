"""The daemon's one HTTP client: a pool of keep-alive connections shared by all jobs.

Every S3 request of every job goes through it (transfer/s3/client.py signs
them; docs/design.md, Transfers): HEAD, ListObjectsV2, ranged GET, and the
upload calls. Connections carry no credentials, so one pool (keyed by scheme,
host, port) serves every job; each request is signed by its job just before
it is sent. Bodies are received into each connection's reused buffer
(transfer/s3/connection.py says why and what it saved).

TLS and proxies (docs/design.md, Configuration): https connections verify
the server against `ssl_context` (built from `[s3] ca_bundle` or
`AWS_CA_BUNDLE`, else the system's store); a certificate that does not
verify is S3Unavailable naming where the trusted CAs came from (`trust`),
never retried. `proxies` (transfer/s3/proxy.py: HTTPS_PROXY, HTTP_PROXY,
NO_PROXY) sends https through a CONNECT tunnel, TLS inside it end to end,
and http to the proxy in absolute form.

Concurrency: `request` runs in the caller's task; it takes an idle connection
(most recently used first, younger than `idle_timeout`) or opens one, and
gives it back when the `async with` block ends, only if the exchange ended
cleanly on a keep-alive response; otherwise the connection is aborted. The
number of open connections is bounded by the callers' own concurrency (the
engine's global cap); idle ones by `max_idle_per_host`, and an idle one is
closed once `idle_timeout` passes (one pool serves every job: a burst must
not keep its fds): a sweeper task, alive only while some connection is idle,
sleeps on the injected clock (auth's `Clock`, shared with the connections'
stall timers) until the oldest idle one is due. A request that fails
before any response byte on a reused connection (the server closed it while
idle) is retried once on a fresh one; every other failure is the caller's.
`close` stops the sweeper, aborts every connection, idle or busy, and waits
until they are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from s3feed.auth import Clock, MonotonicClock
from s3feed.transfer.errors import S3Unavailable, TransientError
from s3feed.transfer.s3.connection import BUFFER_SIZE, MAX_HEAD_BYTES, BodyConsumer, HttpConnection
from s3feed.transfer.s3.proxy import Proxies, Proxy

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


class HttpPool:
    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        idle_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        trust: str = "the system's CA certificates ([s3] ca_bundle and AWS_CA_BUNDLE unset)",
        proxies: Proxies | None = None,
        buffer_size: int = BUFFER_SIZE,
        clock: Clock | None = None,
    ) -> None:
        self._max_idle = max_idle_per_host
        self._idle_timeout = timedelta(seconds=idle_timeout)
        self._clock = clock or MonotonicClock()
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._trust = trust  # where the CA certificates came from, for errors
        self._proxies = proxies or Proxies()
        self._buffer_size = buffer_size
        self._idle: dict[Key, list[HttpConnection]] = {}
        self._sweep: asyncio.Task[None] | None = None  # closes idle ones past idle_timeout
        self._open: set[HttpConnection] = set()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def get(
        self, url: str, headers: Mapping[str, str], *, stall_timeout: float
    ) -> contextlib.AbstractAsyncContextManager[Response]:
        """GET `url`: `request("GET", ...)`."""
        return self.request("GET", url, headers, stall_timeout=stall_timeout)

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | memoryview = b"",
        *,
        stall_timeout: float,
    ) -> AsyncIterator[Response]:
        """Send `method url` with `headers` (signed; Host is added from the URL
        when absent, Content-Length when there is a body or the method needs
        one) and yield the response once its head has arrived. Read its body
        (or not) inside the block."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key: Key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = self._proxies.for_url(parts.scheme, parts.hostname)
        if proxy is not None and parts.scheme == "http":
            target = f"http://{parts.netloc}{target}"  # absolute form, to the proxy
            if proxy.authorization:
                headers = {**headers, "Proxy-Authorization": proxy.authorization}
        if not any(k.lower() == "host" for k in headers):
            headers = {"Host": parts.netloc, **headers}
        if (body or method in ("PUT", "POST")) and not any(
            k.lower() == "content-length" for k in headers
        ):
            headers = {**headers, "Content-Length": str(len(body))}
        # The body is written as it is, a slice at a time (transfer/s3/connection.py): no copy.
        request = serialize(method, target, headers)
        view = memoryview(body) if body else None
        conn = await self._exchange(key, request, stall_timeout, method == "HEAD", view)
        try:
            yield Response(conn, stall_timeout)
        finally:
            self._release(conn)

    async def warm(self, url: str, count: int = 1) -> None:
        """Open connections to `url`'s host, at once, until `count` are idle,
        so that the first requests do not pay for connect (and TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key: Key = (
            parts.scheme,
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        missing = count - len(self._idle.get(key, []))
        if missing <= 0:
            return
        opened = await asyncio.gather(
            *(self._connect(key) for _ in range(missing)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, HttpConnection):
                self._release(conn)
        for error in opened:
            if isinstance(error, BaseException):
                raise error

    async def _exchange(
        self,
        key: Key,
        request: bytes,
        stall_timeout: float,
        head: bool,
        body: memoryview | None = None,
    ) -> HttpConnection:
        conn = await self._acquire(key)
        try:
            await conn.send(request, stall_timeout, head=head, body=body)
        except TransientError as e:
            if not (conn.exchanges > 0 and conn.received == 0 and e.reason == "reset"):
                raise
            # The server closed it while it sat idle; its idle siblings are suspect too.
            for stale in self._idle.pop(key, []):
                stale.abort()
            conn = await self._connect(key)
            await conn.send(request, stall_timeout, head=head, body=body)
        return conn

    async def _acquire(self, key: Key) -> HttpConnection:
        if self._closed:
            raise RuntimeError("HttpPool is closed")
        idle = self._idle.get(key, [])
        now = self._clock.now()
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
        proxy = self._proxies.for_url(scheme, host)
        where = f"{host}:{port}" + (
            f" through the proxy {proxy.host}:{proxy.port}" if proxy else ""
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                if proxy is None:
                    conn = await self._open_direct(key, tls)
                elif tls is None:
                    conn = await self._open_direct(key, None, (proxy.host, proxy.port))
                else:
                    conn = await self._open_tunnel(key, tls, proxy)
        except ssl.SSLCertVerificationError as e:
            raise S3Unavailable(
                f"the TLS certificate of {host}:{port} is not trusted "
                f"({e.verify_message or e}); the daemon trusts {self._trust}"
            ) from None
        except (OSError, TimeoutError) as e:
            raise TransientError(f"cannot connect to {where}: {e or 'timeout'}", "reset") from e
        self._open.add(conn)
        conn.closed.add_done_callback(lambda _: self._open.discard(conn))
        return conn

    async def _open_direct(
        self, key: Key, tls: ssl.SSLContext | None, via: tuple[str, int] | None = None
    ) -> HttpConnection:
        host, port = via or key[1:]
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: HttpConnection(key, self._buffer_size, self._clock),
            host,
            port,
            ssl=tls,
            server_hostname=key[1] if tls else None,
        )
        return conn

    async def _open_tunnel(self, key: Key, tls: ssl.SSLContext, proxy: Proxy) -> HttpConnection:
        """CONNECT through `proxy`, then TLS with the S3 host inside the tunnel."""
        _, host, port = key
        loop = asyncio.get_running_loop()
        transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            head = {"Host": authority}
            if proxy.authorization:
                head["Proxy-Authorization"] = proxy.authorization
            transport.write(serialize("CONNECT", authority, head))
            status = await tunnel.answered
            if status != 200:
                raise ConnectionRefusedError(
                    f"the proxy {proxy.host}:{proxy.port} answered {status} to CONNECT {authority}"
                )
            conn = HttpConnection(key, self._buffer_size, self._clock)
            secure = await loop.start_tls(transport, tunnel, tls, server_hostname=host)
            if secure is None:
                raise ConnectionResetError("the tunnel closed during the TLS handshake")
            secure.set_protocol(conn)
            conn.connection_made(secure)
            return conn
        except BaseException:
            transport.abort()
            raise

    def _release(self, conn: HttpConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if conn.reusable and not self._closed and len(idle) < self._max_idle:
            idle.append(conn)
            if self._sweep is None:
                due = conn.idle_since + self._idle_timeout
                self._sweep = asyncio.get_running_loop().create_task(self._close_expired(due))
        else:
            conn.abort()

    async def _close_expired(self, due: datetime) -> None:
        """Close idle connections past `idle_timeout`: one pool serves every job,
        so a burst must not keep its connections' fds once it is over. Ends when
        none is idle; the next release starts another."""
        try:
            while not self._closed:
                await self._clock.sleep_until(due)
                now = self._clock.now()
                oldest: datetime | None = None
                for key, idle in list(self._idle.items()):
                    keep = []
                    for conn in idle:
                        if now - conn.idle_since >= self._idle_timeout:
                            conn.abort()
                        else:
                            keep.append(conn)
                            oldest = (
                                conn.idle_since if oldest is None else min(oldest, conn.idle_since)
                            )
                    if keep:
                        self._idle[key] = keep
                    else:
                        del self._idle[key]
                if oldest is None:
                    return
                due = oldest + self._idle_timeout
        finally:
            self._sweep = None

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            sweep = self._sweep
            sweep.cancel()
            await asyncio.wait([sweep])
        self._idle.clear()
        waiting = [c.closed for c in self._open]
        for conn in list(self._open):
            conn.abort()
        if waiting:
            await asyncio.wait(waiting, timeout=5)


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: its status once the head ended."""

    def __init__(self) -> None:
        self.answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return  # bytes before TLS started: the handshake will fail on them
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self.answered.set_exception(ConnectionResetError("the proxy's answer is too long"))
            return
        status_line = bytes(self._head[: self._head.find(b"\r\n")]).decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            self.answered.set_exception(
                ConnectionResetError(f"the proxy answered {status_line[:80]!r} to CONNECT")
            )
            return
        self.answered.set_result(int(code))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(
                ConnectionResetError(f"the proxy closed the connection: {exc or 'eof'}")
            )


def serialize_get(target: str, headers: Mapping[str, str]) -> bytes:
    return serialize("GET", target, headers)


def serialize(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        if any(c in s for s in (name, value) for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
