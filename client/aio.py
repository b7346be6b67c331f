"""AsyncClient: the socket API from asyncio code (aiohttp over the Unix
socket); the requests are the ones client/calls.py describes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlencode

if TYPE_CHECKING:
    import aiohttp  # imported when an AsyncClient opens: the CLI starts faster without it

from s3feed.client.calls import (
    Call,
    S3feedError,
    _Calls,
    _deliver_request,
    _delivered,
    _error,
    _fd_message,
    _split_head,
    dumps,
    socket_path,
)
from s3feed.client.documents import (
    Delivery,
    Destination,
    Fetch,
    Health,
    Job,
    ObjectInfo,
    ObjectPage,
    Policy,
    Upload,
)
from s3feed.client.objectfile import AsyncOpening, open_async


class AsyncClient:
    def __init__(self, socket: str | None = None) -> None:
        self.socket = socket_path(socket)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket),
            base_url="http://localhost",
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with AsyncClient() as client`")
        return self._session

    async def _json(self, call: Call) -> Any:
        method, path, body = call
        data = dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self.session.request(method, path, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise _error(resp.status, raw)
            return json.loads(raw) if raw else None

    async def create_job(
        self,
        job_id: str,
        tenant: str,
        uri_path: str,
        role_arn: str,
        duration: int | None = None,
        *,
        destination: Destination | Mapping[str, Any] | None = None,
        encoder_uids: Iterable[int] | None = None,
        **fields: Any,
    ) -> Job:
        """As `Client.create_job`."""
        call = _Calls.create_job(
            job_id,
            tenant,
            uri_path,
            role_arn,
            duration,
            destination=destination,
            encoder_uids=encoder_uids,
            **fields,
        )
        return cast(Job, await self._json(call))

    async def list_jobs(self) -> list[Job]:
        return cast(list[Job], (await self._json(("GET", "/v1/jobs", None)))["Jobs"])

    async def get_job(self, job_id: str) -> Job:
        return cast(Job, await self._json(_Calls.job(job_id)))

    async def delete_job(self, job_id: str) -> None:
        await self._json(_Calls.job(job_id, "DELETE"))

    async def list_objects_page(
        self, job_id: str, prefix: str = "", max_keys: int | None = None, token: str | None = None
    ) -> ObjectPage:
        call = _Calls.list_objects(job_id, prefix, max_keys, token)
        return cast(ObjectPage, await self._json(call))

    async def iter_objects(
        self, job_id: str, prefix: str = "", max_keys: int | None = None
    ) -> AsyncIterator[ObjectInfo]:
        token = None
        while True:
            page = await self.list_objects_page(job_id, prefix, max_keys, token)
            for obj in page["Objects"]:
                yield obj
            token = page.get("NextContinuationToken")
            if token is None:
                return

    async def list_objects(self, job_id: str, prefix: str = "") -> list[ObjectInfo]:
        return [obj async for obj in self.iter_objects(job_id, prefix)]

    async def fetch(self, job_id: str, key: str, wait: bool = True) -> Fetch:
        return cast(Fetch, await self._json(_Calls.fetch(job_id, key, wait)))

    async def get_fetch(self, job_id: str, fetch_id: str) -> Fetch:
        return cast(Fetch, await self._json(_Calls.get_fetch(job_id, fetch_id)))

    async def cancel_fetch(self, job_id: str, fetch_id: str) -> None:
        await self._json(_Calls.get_fetch(job_id, fetch_id, "DELETE"))

    async def trust_policy(self, tenant: str) -> Policy:
        query = urlencode({"TenantName": tenant})
        return cast(Policy, await self._json(("GET", f"/v1/trust-policy?{query}", None)))

    async def health(self) -> Health:
        return cast(Health, await self._json(("GET", "/healthz", None)))

    async def put(
        self,
        job_id: str,
        key: str,
        data: bytes | BinaryIO | AsyncIterator[bytes],
        *,
        content_type: str | None = None,
    ) -> Upload:
        """Upload `data` as the job's output `key` (see Client.put)."""
        headers = {"Content-Type": content_type} if content_type else None
        async with self.session.put(
            _Calls.output_path(job_id, key), data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise _error(resp.status, raw)
            return cast(Upload, json.loads(raw))

    async def read_object(
        self, job_id: str, key: str, byte_range: str | None = None
    ) -> AsyncIterator[bytes]:
        headers = {"Range": f"bytes={byte_range}"} if byte_range else None
        async with self.session.get(_Calls.object_path(job_id, key), headers=headers) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.read())
            from aiohttp import ClientPayloadError

            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except ClientPayloadError as exc:
                raise S3feedError(502, "ShortRead", f"stream ended early: {exc}") from None

    def open(self, job_id: str, key: str) -> AsyncOpening:
        """The object as a seekable file with async `read` and `seek`
        (client/objectfile.py): `async with client.open(job, key) as f`, or
        `f = await client.open(job, key)` and `await f.close()`."""
        return open_async(self.session, job_id, key)

    async def deliver(
        self, job_id: str, key: str, fd: int, byte_range: str | None = None
    ) -> Delivery:
        """As `Client.deliver`: the daemon writes the object into `fd` itself.
        Uses its own connection (aiohttp cannot pass descriptors)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.socket)
            await loop.sock_sendall(sock, _deliver_request(job_id, key, byte_range))
            buf, sent = b"", False
            while True:
                head = _split_head(buf)
                if head is None:
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        raise S3feedError(
                            502,
                            "ShortRead",
                            "the daemon closed the connection before answering (restarting?)",
                        )
                    buf += data
                    continue
                status, headers, buf = head
                if status == 100 and not sent:
                    while True:
                        try:
                            sock.sendmsg(*_fd_message(fd))
                            break
                        except BlockingIOError:  # one byte on a fresh socket: hardly ever
                            writable: asyncio.Future[None] = loop.create_future()
                            loop.add_writer(sock.fileno(), writable.set_result, None)
                            try:
                                await writable
                            finally:
                                loop.remove_writer(sock.fileno())
                    sent = True
                    continue
                while len(buf) < int(headers.get("content-length", 0)):
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        break
                    buf += data
                return cast(Delivery, _delivered(status, headers, buf))
        finally:
            sock.close()
