"""A fault-injecting HTTP proxy between the daemon and the local S3/STS, for tests.

    with FaultProxy(local_aws.endpoint_url, "s3") as s3, FaultProxy(..., "sts") as sts:
        # point the daemon's [s3] / [sts] endpoint_url at s3.url / sts.url
        s3.add(Fault("reset", after=2))            # the 3rd data GET dies mid-body
        sts.add(Fault("sts503", times=None))       # STS is down until sts.clear()

Design note. The proxy is an aiohttp server on 127.0.0.1 with its own event
loop in a background thread, so synchronous tests (the blocking Client, curl,
subprocesses) drive it without sharing a loop with it. Every request is
forwarded byte for byte: raw path and query as sent, every header including
Host (SigV4 signs it, so the signature made for the proxy's address still
verifies upstream), the body unchanged. Only responses are altered, and only
as a matching `Fault` says: each fault matches requests by a predicate, skips
the first `after` matches, then fires `times` times (None: until cleared).
Kinds:

    reset     headers and part of the body, then a TCP RST
    truncate  headers (full Content-Length) and part of the body, then FIN
    stall     headers and part of the body, then `seconds` of silence, then the rest
    latency   `seconds` of delay before the request is forwarded
    status500 / slowdown / sts503   an error answer, upstream never asked
    redirect  S3's 301 PermanentRedirect for a bucket in another region (us-west-2)
    overwrite `action()` (in a worker thread, e.g. a PUT of new bytes), then forward

STS answers are always read whole: the secret keys and session tokens in them
are recorded (`issued_secrets`, and the process-wide ISSUED) so suites can
grep for them, and with `expires_in` set the Expiration is rewritten to that
many seconds from now, so refreshes happen in seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
CHUNK = 64 * 1024

# Every secret any proxy of this process saw STS issue: the secrets suite greps for them.
ISSUED: set[str] = set()

S3_ERRORS = {
    "status500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "redirect": (
        301,
        "PermanentRedirect",
        "The bucket you are attempting to access must be addressed using the specified endpoint.",
    ),
}
REDIRECT_REGION = "us-west-2"
STS_503 = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
    b"<Type>Receiver</Type><Code>ServiceUnavailable</Code>"
    b"<Message>Service is unavailable (injected by faultproxy)</Message></Error>"
    b"<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


@dataclass(frozen=True)
class Seen:
    """What a fault's predicate sees of a request."""

    method: str
    path: str  # decoded path
    query: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def is_data_get(self) -> bool:
        """A GET of an object's bytes (not a bucket listing)."""
        return self.method == "GET" and "list-type" not in self.query and self.path.count("/") >= 2

    @property
    def is_assume_role(self) -> bool:
        return self.method == "POST" and b"Action=AssumeRole" in self.body


def data_get(req: Seen) -> bool:
    return req.is_data_get


def any_request(req: Seen) -> bool:
    return True


def key_get(key: str) -> Callable[[Seen], bool]:
    """Data GETs of one key (the end of the path)."""
    return lambda req: req.is_data_get and req.path.endswith("/" + key)


@dataclass
class Fault:
    kind: str
    match: Callable[[Seen], bool] = data_get
    after: int = 0  # let this many matching requests through first
    times: int | None = 1  # then fire this many times; None: until cleared
    seconds: float = 0.0  # stall / latency
    fraction: float = 0.5  # how much of the body goes out before reset / truncate / stall
    action: Callable[[], object] | None = None  # overwrite
    seen: int = 0
    fired: int = 0

    KINDS = frozenset(
        {
            "reset",
            "truncate",
            "stall",
            "latency",
            "status500",
            "slowdown",
            "redirect",
            "sts503",
            "overwrite",
        }
    )

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def take(self, req: Seen) -> bool:
        if not self.match(req):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class Counters:
    requests: int = 0
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    body_bytes: collections.Counter[str] = field(default_factory=collections.Counter)  # by path


class FaultProxy:
    def __init__(self, upstream: str, name: str = "proxy", *, expires_in: float | None = None):
        self.upstream = upstream.rstrip("/")
        self.name = name
        self.expires_in = expires_in  # rewrite STS Expiration to now + this
        self.counters = Counters()
        self.issued_secrets: list[str] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{name}")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -- control, from the test's thread -------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def injected(self) -> collections.Counter[str]:
        return self.counters.injected

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the server, on the proxy's loop ------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _pick(self, req: Seen) -> list[Fault]:
        with self._lock:
            self.counters.requests += 1
            picked = [f for f in self._faults if f.take(req)]
        for f in picked:
            self.counters.injected[f.kind] += 1
        return picked

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = Seen(
            request.method, request.path, request.query_string, CIMultiDict(request.headers), body
        )
        faults = {f.kind: f for f in self._pick(req)}
        if "latency" in faults:
            await asyncio.sleep(faults["latency"].seconds)
        if "sts503" in faults:
            return web.Response(status=503, body=STS_503, content_type="text/xml")
        for kind in ("status500", "slowdown", "redirect"):
            if kind in faults:
                status, code, message = S3_ERRORS[kind]
                doc = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
                payload = b"" if request.method == "HEAD" else doc.encode()
                headers = {"x-amz-bucket-region": REDIRECT_REGION} if kind == "redirect" else {}
                return web.Response(
                    status=status, body=payload, content_type="application/xml", headers=headers
                )
        if "overwrite" in faults and (action := faults["overwrite"].action) is not None:
            await asyncio.get_running_loop().run_in_executor(None, action)

        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        url = URL(self.upstream + request.raw_path, encoded=True)
        assert self._session is not None
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as up:
            if req.is_assume_role or b"Action=" in body:
                return await self._sts_answer(up)
            return await self._relay(request, up, req, faults)

    async def _sts_answer(self, up: aiohttp.ClientResponse) -> web.Response:
        raw = await up.read()
        text = raw.decode("utf-8", "replace")
        secrets = re.findall(r"<(?:SecretAccessKey|SessionToken)>([^<]+)<", text)
        self.issued_secrets.extend(secrets)
        ISSUED.update(secrets)
        if self.expires_in is not None and "<Expiration>" in text:
            when = datetime.now(UTC) + timedelta(seconds=self.expires_in)
            stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            text = re.sub(
                r"<Expiration>[^<]*</Expiration>", f"<Expiration>{stamp}</Expiration>", text
            )
            raw = text.encode()
        headers = {
            k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}
        }
        return web.Response(status=up.status, body=raw, headers=headers)

    async def _relay(
        self, request: web.Request, up: aiohttp.ClientResponse, req: Seen, faults: dict[str, Fault]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP_BY_HOP | {"content-length"}:
                resp.headers.add(k, v)
        length = up.content_length
        if length is not None:
            resp.content_length = length
        cut_kind = next((k for k in ("reset", "truncate", "stall") if k in faults), None)
        cut_at = int((length or 0) * faults[cut_kind].fraction) if cut_kind else -1
        sent = 0
        try:
            await resp.prepare(request)
            if request.method == "HEAD" or up.status in (204, 304):
                await resp.write_eof()
                return resp
            while True:
                limit = CHUNK if cut_at < 0 or sent >= cut_at else min(CHUNK, cut_at - sent)
                chunk = await up.content.read(limit) if limit else b""
                if not chunk and not (cut_kind and sent == cut_at):
                    break
                if chunk:
                    await resp.write(chunk)
                    sent += len(chunk)
                    self.counters.body_bytes[req.path] += len(chunk)
                if cut_kind and sent == cut_at:
                    if cut_kind == "stall":
                        await asyncio.sleep(faults["stall"].seconds)
                        cut_kind, cut_at = None, -1
                        continue
                    self._cut(request, reset=cut_kind == "reset")
                    return resp
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            self._cut(request, reset=False)  # the daemon went away (a stall it gave up on)
        return resp

    @staticmethod
    def _cut(request: web.Request, *, reset: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        sock: socket.socket | None = transport.get_extra_info("socket")
        if reset and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
