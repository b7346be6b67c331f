"""`S3ObjectStore`: the ObjectStore of one job's bucket, signed with the job's role.

Every call goes through the daemon's one `S3Client` (transfer/s3/client.py):
HeadObject, HEAD ?partNumber=1 (the part layout), ListObjectsV2 and ranged
GetObject (uploads are transfer/s3/uploader.py's, through the same client). A
store holds no client, pool or connection of its own, only the job's location,
credential source and observer: a job costs little here (docs/design.md,
Performance notes: Per job). Each request is signed once with `await
credentials.current()`; auth/ owns refresh. S3's errors are translated in one
place (transfer/s3/translate.py).

ExpiredToken (400 on AWS and ministack; SeaweedFS answers 403
InvalidAccessKeyId once temporary keys lapse) forces a refresh and one retry
of that request; a second expiry is TransientError('expired_token'). The
control plane (HEAD, LIST) retries a TransientError twice more after a short
full-jitter backoff, as botocore's standard mode did for it; GETs are retried
by the engine, which knows what was already received.

Concurrency: a store is used by many tasks of one job at once; it holds no
per-request state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_plus

from s3feed.auth import Credentials, CredentialSource
from s3feed.transfer.checksums import etag_parts
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidContinuationToken,
    NoSuchKey,
    ObjectStoreError,
    TransferError,
    TransientError,
)
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.s3.client import S3Client, S3Response
from s3feed.transfer.s3.translate import (
    CHECKSUM_ALGORITHMS,
    content_range,
    error_document,
    translate,
    with_refresh,
)
from s3feed.transfer.store import (
    MAX_KEYS,
    BodySink,
    ObjectMeta,
    ObjectPage,
    RangeMeta,
    every_object,
)
from s3feed.transfer.uri import S3Location

log = logging.getLogger("s3feed.s3")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a HEAD without Last-Modified
CONTROL_ATTEMPTS = 3
CONTROL_BACKOFF = 0.1  # seconds; the n-th retry waits U(0, base * 2^n)


class S3ObjectStore:
    def __init__(
        self,
        location: S3Location,
        credentials: CredentialSource,
        *,
        clients: S3Client,
        observer: TransferObserver,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.location = location
        self.bucket = location.bucket
        self.endpoint = location.endpoint_url
        self._credentials = credentials
        self._client = clients
        self._observer = observer
        self._sleep = sleep

    async def connect(self) -> None:
        # The first request to a host pays for connect (and TLS): have one
        # connection ready when the job registers, not on the encoder's first
        # read. It is the daemon's (shared by every job on that host), and a
        # failure here is not the job's: its own requests will report it.
        try:
            await self._client.warm(self.location)
        except (TransferError, OSError) as e:
            log.debug("no connection ready for %s: %s", self.endpoint, e)

    async def close(self) -> None:
        pass  # nothing of its own: the S3Client is the daemon's

    # -- any request of the store ------------------------------------------------------

    async def request(
        self,
        op: str,
        method: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        stall_timeout: float = 30.0,
    ) -> S3Response:
        """Send one S3 request for `key` (a full key; "" for the bucket), signed
        with the job's current credentials (refreshed and re-signed once on
        ExpiredToken), counted under `op` (e.g. "HeadObject"). A 2xx answer is
        returned whole; any other is raised as transfer/errors.py."""

        async def attempt(creds: Credentials) -> S3Response:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                resp = await self._client.request(
                    self.location,
                    creds,
                    method,
                    key,
                    query,
                    headers,
                    body,
                    stall_timeout=stall_timeout,
                )
            except TransientError as e:
                self._observer.s3_request_error(op, e.reason)
                raise
            self._observer.s3_request(op, loop.time() - started)
            if resp.status < 300:
                return resp
            code, message = error_document(resp.body)
            self._observer.s3_request_error(op, code or str(resp.status))
            raise translate(
                resp.status,
                code,
                message,
                f"s3://{self.bucket}/{key}",
                creds,
                resp.headers,
                self.location.region,
            )

        return await with_refresh(self._credentials, repr(key), attempt)

    async def _control(
        self,
        op: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> S3Response:
        method = "HEAD" if op == "HeadObject" else "GET"
        for n in range(CONTROL_ATTEMPTS):
            try:
                return await self.request(op, method, key, query=query, headers=headers)
            except TransientError as e:
                if n == CONTROL_ATTEMPTS - 1 or e.reason == "expired_token":
                    raise  # an expiry was retried once already, with new credentials
                await self._sleep(random.uniform(0, CONTROL_BACKOFF * 2**n))
        raise AssertionError("unreachable")

    # -- control plane ------------------------------------------------------------------

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        headers = {"x-amz-checksum-mode": "ENABLED"}
        if if_match is not None:
            headers["If-Match"] = if_match
        try:
            resp = await self._control("HeadObject", key, headers=headers)
        except AccessDenied:
            if await self._absent(key):
                raise NoSuchKey(f"s3://{self.bucket}/{key} does not exist") from None
            raise
        return _object_meta(key, resp.headers, int(resp.headers.get("content-length", "-1")))

    async def _absent(self, key: str) -> bool:
        """After a 403 to a HEAD: is the key simply not there? S3 answers a
        missing key with 404 only to a caller allowed s3:ListBucket without
        condition; a job's session policy limits it to its folder
        (docs/design.md, Session policy), so a missing key answers 403. A
        listing of the key as prefix, which that policy allows, tells."""
        try:
            page = await self.list_page(key, max_keys=1)
        except (AccessDenied, TransientError):
            return False
        return not (page.objects and page.objects[0].key == key)

    async def part_size(self, key: str, *, if_match: str | None = None) -> int | None:
        """The size of part 1 (HEAD ?partNumber=1: its Content-Length, with
        x-amz-mp-parts-count); the object's size when it was not uploaded in
        parts; None when the server ignores partNumber (ministack answers the
        whole object without a parts count)."""
        headers = {"If-Match": if_match} if if_match is not None else {}
        resp = await self._control("HeadObject", key, query={"partNumber": "1"}, headers=headers)
        length = resp.headers.get("content-length", "")
        if not length.isdigit():
            raise TransientError("S3 answered HEAD ?partNumber=1 without a length", "server_error")
        if "x-amz-mp-parts-count" not in resp.headers and etag_parts(resp.headers.get("etag", "")):
            return None  # a multipart object, and no word on its parts
        return int(length)

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        return every_object(self, prefix)

    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage:
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        query["encoding-type"] = "url"
        if token is not None:
            query["continuation-token"] = token
        try:
            resp = await self._control("ListObjectsV2", "", query=query)
        except ObjectStoreError as e:
            if token is not None and type(e) is ObjectStoreError:  # S3's 400 InvalidArgument
                raise InvalidContinuationToken(f"S3 refused the continuation token: {e}") from None
            raise
        return _list_page(resp.body, prefix)

    # -- data plane ---------------------------------------------------------------------

    async def get_range(
        self,
        key: str,
        start: int,
        end: int | None,
        sink: BodySink,
        *,
        if_match: str | None = None,
        stall_timeout: float = 30.0,
    ) -> RangeMeta:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range {start}-{end}")
        return await with_refresh(
            self._credentials,
            repr(key),
            lambda creds: self._get(creds, key, start, end, sink, if_match, stall_timeout),
        )

    async def _get(
        self,
        creds: Credentials,
        key: str,
        start: int,
        end: int | None,
        sink: BodySink,
        if_match: str | None,
        stall_timeout: float,
    ) -> RangeMeta:
        headers = {"x-amz-checksum-mode": "ENABLED"}
        if start > 0 or end is not None:  # a whole-object GET works for 0 bytes too
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_match is not None:
            headers["If-Match"] = if_match
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._client.open(
                self.location, creds, "GET", key, headers=headers, stall_timeout=stall_timeout
            ) as resp:
                self._observer.s3_request("GetObject", loop.time() - started)
                status = resp.status
                if status in (200, 206):
                    meta = _range_meta(status, resp.headers, start, end)
                    if if_match is not None and meta.etag and meta.etag != if_match:
                        # A server that ignores If-Match: not one byte of the new object.
                        status = 412
                    else:
                        answered = getattr(sink, "answered", None)
                        if answered is not None:
                            answered(meta)
                        pos = start

                        def consume(data: memoryview) -> None:
                            nonlocal pos
                            sink.write(pos, data)
                            pos += len(data)

                        await resp.read_into(consume)
                        return meta
                    code, message = "PreconditionFailed", "the ETag changed"
                else:
                    code, message = error_document(await resp.read())
        except TransientError as e:  # no answer, or a broken one
            self._observer.s3_request_error("GetObject", e.reason)
            raise
        self._observer.s3_request_error("GetObject", code or str(status))
        raise translate(
            status,
            code,
            message,
            f"s3://{self.bucket}/{key}",
            creds,
            resp.headers,
            self.location.region,
        )


def _object_meta(key: str, headers: Mapping[str, str], size: int) -> ObjectMeta:
    if size < 0:
        raise TransientError(f"S3 answered HEAD {key!r} without a length", "server_error")
    modified = headers.get("last-modified")
    return ObjectMeta(
        key=key,
        size=size,
        etag=headers.get("etag", ""),
        last_modified=parsedate_to_datetime(modified) if modified else _EPOCH,
        version_id=headers.get("x-amz-version-id"),
        checksums=_checksums(headers),
        checksum_type=headers.get("x-amz-checksum-type"),
        encryption=headers.get("x-amz-server-side-encryption"),
    )


def _checksums(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        a: headers[f"x-amz-checksum-{a.lower()}"]
        for a in CHECKSUM_ALGORITHMS
        if headers.get(f"x-amz-checksum-{a.lower()}")
    }


def _list_page(body: bytes, prefix: str) -> ObjectPage:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise TransientError(
            f"S3 answered a listing that is not XML: {e}", "server_error"
        ) from None

    def text(node: ET.Element, name: str) -> str:
        for child in node:
            if child.tag.rpartition("}")[2] == name:
                return child.text or ""
        return ""

    encoded = text(root, "EncodingType") == "url"
    objects = []
    for node in root:
        if node.tag.rpartition("}")[2] != "Contents":
            continue
        key = text(node, "Key")
        if encoded:
            key = unquote_plus(key)
        # S3 applies Prefix whatever the token encodes; a server that let a
        # token reach past it must not list another job's keys.
        if not key.startswith(prefix):
            continue
        objects.append(
            ObjectMeta(
                key=key,
                size=int(text(node, "Size") or 0),
                etag=text(node, "ETag"),
                last_modified=datetime.fromisoformat(text(node, "LastModified")),
                checksum_type=text(node, "ChecksumType") or None,
            )
        )
    token = text(root, "NextContinuationToken")
    truncated = text(root, "IsTruncated") == "true" and token
    return ObjectPage(objects, token if truncated else None)


def _range_meta(status: int, headers: Mapping[str, str], start: int, end: int | None) -> RangeMeta:
    length = int(headers.get("content-length", "-1"))
    if status == 206:
        first, last, size = content_range(headers.get("content-range", ""))
        want = size - 1 if end is None else min(end, size - 1)
        if size < 0 or first != start or last != want or length != last - first + 1:
            raise TransientError(
                f"S3 answered range {headers.get('content-range')!r} "
                f"(Content-Length {length}) for bytes={start}-{'' if end is None else end}",
                "server_error",
            )
    else:
        size = length
        if size < 0 or start != 0 or (end is not None and end < size - 1):
            raise TransientError("S3 answered the whole object to a range request", "server_error")
    modified = headers.get("last-modified")
    return RangeMeta(
        size=size,
        etag=headers.get("etag", ""),
        last_modified=parsedate_to_datetime(modified) if modified else None,
        version_id=headers.get("x-amz-version-id"),
        checksums=_checksums(headers),
        checksum_type=headers.get("x-amz-checksum-type"),
    )
