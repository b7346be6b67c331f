"""`S3ObjectStore`: the ObjectStore of one job's bucket, signed with the job's role.

Control plane (HeadObject, ListObjectsV2) goes through a per-job aiobotocore
client; data plane (ranged GET) through the shared raw client of
transfer/httpclient.py, signed here with botocore's S3SigV4Auth. Both sign
every request with `await credentials.current()`: the aiobotocore client
gets a credentials object that asks the job's CredentialSource on each
request (botocore's RefreshableCredentials would impose its fixed 15/10-min
windows; auth/ owns refresh). S3 errors of both planes are translated into
transfer/errors.py in one function, `_translate`.

Concurrency: a store is used by many tasks of one job at once; it holds no
per-request state. The aiobotocore client is created on first use under a
lock and closed by `close`. `S3Clients` is shared by all jobs: the botocore
data loader (service models parsed once, so a job's client costs ~15 ms
instead of ~130), the raw connection pool, and the S3 config.

ExpiredToken (400 on AWS and ministack; SeaweedFS answers 403
InvalidAccessKeyId once temporary keys lapse) forces a refresh and one retry
of that request; a second expiry is TransientError('expired_token').
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError

from ..auth.botocore_creds import aio_session_for, frozen
from ..auth.credentials import Credentials, CredentialSource
from .config import S3Config
from .errors import (
    AccessDenied,
    InvalidContinuationToken,
    InvalidRange,
    InvalidUriPath,
    NoSuchKey,
    ObjectStoreError,
    SourceChanged,
    TransferError,
    TransientError,
)
from .httpclient import HttpClient
from .observer import TransferObserver
from .store import MAX_KEYS, BodySink, ObjectMeta, ObjectPage, RangeMeta
from .uri import S3Location

T = TypeVar("T")
log = logging.getLogger("s3feed.s3")

CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
EXPIRED_CODES = frozenset({"ExpiredToken", "TokenRefreshRequired"})
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)


class _Expired(Exception):
    """S3 says the signing credentials expired: refresh and retry once."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class S3Clients:
    """What every job's store shares; close it once, after the last store."""

    def __init__(self, s3: S3Config, *, http: HttpClient | None = None) -> None:
        self.s3 = s3
        self.http = http or HttpClient()
        self._loader = AioSession().get_component("data_loader")

    async def control_client(self, location: S3Location, credentials: CredentialSource) -> Any:
        """A new aiobotocore S3 client for one job; the caller closes it."""
        session = aio_session_for(credentials, data_loader=self._loader)
        config = AioConfig(
            region_name=location.region,
            signature_version="s3v4",
            s3={"addressing_style": location.addressing},
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=10,
            read_timeout=30,
            max_pool_connections=4,
        )
        ctx = session.create_client("s3", endpoint_url=location.endpoint_url, config=config)
        return await ctx.__aenter__()

    async def close(self) -> None:
        await self.http.close()


class S3ObjectStore:
    def __init__(
        self,
        location: S3Location,
        credentials: CredentialSource,
        *,
        clients: S3Clients,
        observer: TransferObserver,
    ) -> None:
        self.location = location
        self.bucket = location.bucket
        self.endpoint = location.endpoint_url
        self._credentials = credentials
        self._clients = clients
        self._observer = observer
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    async def _control(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await self._clients.control_client(self.location, self._credentials)
            return self._client

    async def connect(self) -> None:
        # A new aiobotocore client's first request costs 25-40 ms more than the
        # next ones (client, connection pool, endpoint rules): pay it when the
        # job registers, with a one-key listing of its folder, not on the
        # encoder's first read. A refusal here is not the job's failure: the
        # encoder's own requests will report what is wrong.
        client = await self._control()
        args = {"Bucket": self.bucket, "Prefix": self.location.prefix, "MaxKeys": 1}
        with contextlib.suppress(TransferError):
            await self._with_refresh(
                self.location.prefix,
                lambda creds: self._call("ListObjectsV2", client.list_objects_v2, creds, args),
            )

    async def close(self) -> None:
        async with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- control plane ------------------------------------------------------------------

    async def head(self, key: str, *, if_match: str | None = None) -> ObjectMeta:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if if_match is not None:
            args["IfMatch"] = if_match
        client = await self._control()
        r = await self._with_refresh(
            key, lambda creds: self._call("HeadObject", client.head_object, creds, args)
        )
        checksums = {a: r[f"Checksum{a}"] for a in CHECKSUM_ALGORITHMS if r.get(f"Checksum{a}")}
        return ObjectMeta(
            key=key,
            size=int(r["ContentLength"]),
            etag=r["ETag"],
            last_modified=r["LastModified"],
            version_id=r.get("VersionId"),
            checksums=checksums,
            checksum_type=r.get("ChecksumType"),
        )

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        token = None
        while True:
            page = await self.list_page(prefix, token=token)
            for meta in page.objects:
                yield meta
            if page.next_token is None:
                return
            token = page.next_token

    async def list_page(
        self, prefix: str, *, max_keys: int = MAX_KEYS, token: str | None = None
    ) -> ObjectPage:
        client = await self._control()
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if token is not None:
            args["ContinuationToken"] = token
        try:
            page = await self._with_refresh(
                prefix,
                lambda creds: self._call("ListObjectsV2", client.list_objects_v2, creds, args),
            )
        except ObjectStoreError as e:
            if token is not None and type(e) is ObjectStoreError:  # S3's 400 InvalidArgument
                raise InvalidContinuationToken(f"S3 refused the continuation token: {e}") from None
            raise
        objects = [
            ObjectMeta(
                key=o["Key"],
                size=int(o["Size"]),
                etag=o["ETag"],
                last_modified=o["LastModified"],
                checksum_type=o.get("ChecksumType"),
            )
            for o in page.get("Contents", ())
            # S3 applies Prefix whatever the token encodes; a server that let a
            # token reach past it must not list another job's keys.
            if o["Key"].startswith(prefix)
        ]
        truncated = page.get("IsTruncated") and page.get("NextContinuationToken")
        return ObjectPage(objects, page["NextContinuationToken"] if truncated else None)

    async def _call(
        self,
        op: str,
        method: Callable[..., Awaitable[dict[str, Any]]],
        creds: Credentials,
        args: Mapping[str, Any],
    ) -> dict[str, Any]:
        # `creds` is what the client signs with: it asks the same source.
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await method(**args)
        except ClientError as e:
            self._observer.s3_request(op, loop.time() - started)
            meta = e.response.get("ResponseMetadata", {})
            err = e.response.get("Error", {})
            status = int(meta.get("HTTPStatusCode", 0))
            code = str(err.get("Code", ""))
            if code == str(status):
                code = ""  # HEAD answers carry no error document
            error = _translate(
                status,
                code,
                str(err.get("Message", "")),
                f"s3://{self.bucket}/{args.get('Key', args.get('Prefix', ''))}",
                creds,
                meta.get("HTTPHeaders", {}),
                self.location.region,
            )
            self._observer.s3_request_error(op, code or str(status))
            raise error from None
        except BotoCoreError as e:
            self._observer.s3_request_error(op, "reset")
            raise TransientError(f"S3 {op} failed: {e}", "reset") from e
        self._observer.s3_request(op, loop.time() - started)
        return result

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
        return await self._with_refresh(
            key, lambda creds: self._get(creds, key, start, end, sink, if_match, stall_timeout)
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
        url = self.location.url_for(key)
        headers = {"Host": urlsplit(url).netloc, "x-amz-checksum-mode": "ENABLED"}
        if start > 0 or end is not None:  # a whole-object GET works for 0 bytes too
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_match is not None:
            headers["If-Match"] = if_match
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(frozen(creds), "s3", self.location.region).add_auth(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._clients.http.get(
                url, dict(request.headers.items()), stall_timeout=stall_timeout
            ) as resp:
                self._observer.s3_request("GetObject", loop.time() - started)
                if resp.status in (200, 206):
                    meta = _range_meta(resp.status, resp.headers, start, end)
                    pos = start

                    def consume(data: memoryview) -> None:
                        nonlocal pos
                        sink.write(pos, data)
                        pos += len(data)

                    await resp.read_into(consume)
                    return meta
                code, message = _error_document(await resp.read())
        except TransientError as e:  # no answer, or a broken one
            self._observer.s3_request_error("GetObject", e.reason)
            raise
        self._observer.s3_request_error("GetObject", code or str(resp.status))
        raise _translate(
            resp.status, code, message, f"s3://{self.bucket}/{key}", creds, resp.headers,
            self.location.region,
        )  # fmt: skip

    # -- ExpiredToken -------------------------------------------------------------------

    async def _with_refresh(self, key: str, attempt: Callable[[Credentials], Awaitable[T]]) -> T:
        try:
            return await attempt(await self._credentials.current())
        except _Expired:
            pass
        try:
            return await attempt(await self._credentials.refresh_now("expired_token"))
        except _Expired as e:
            raise TransientError(
                f"S3 still answered {e.code} for {key!r} after the job's credentials were "
                "refreshed",
                "expired_token",
            ) from None


def _translate(
    status: int,
    code: str,
    message: str,
    where: str,
    creds: Credentials,
    headers: Mapping[str, str],
    region: str,
) -> Exception:
    """S3's answer -> transfer/errors.py (or _Expired: refresh and retry once),
    carrying S3's request ids in the error, its message and the log."""
    error = _classify(status, code, message, where, creds, headers, region)
    request_id = headers.get("x-amz-request-id") or None
    host_id = headers.get("x-amz-id-2") or None
    log.info(
        "S3 answered an error",
        extra={"status": status, "s3_code": code or None, "where": where,
               "request_id": request_id, "host_id": host_id},
    )  # fmt: skip
    if isinstance(error, TransferError) and request_id:
        error.request_id, error.host_id = request_id, host_id
        error.message += f" (S3 request id {request_id}" + (
            f", host id {host_id})" if host_id else ")"
        )
        error.args = (error.message,)
    return error


def _classify(
    status: int,
    code: str,
    message: str,
    where: str,
    creds: Credentials,
    headers: Mapping[str, str],
    region: str,
) -> Exception:
    temporary = creds.session_token is not None
    lapsed = creds.expiration is not None and creds.expiration <= datetime.now(UTC)
    if (
        code in EXPIRED_CODES
        or (code == "InvalidAccessKeyId" and temporary)  # SeaweedFS, after expiry
        or (not code and status == 400 and temporary)  # HEAD: no body to say ExpiredToken
        or (not code and status == 403 and lapsed)
    ):
        return _Expired(code or str(status))
    said = f"{status} {code}: {message}" if message else f"{status} {code}".strip()
    if (
        status == 301
        or code in ("PermanentRedirect", "IllegalLocationConstraintException")
        or (code == "AuthorizationHeaderMalformed" and "region" in message.lower())
    ):
        actual = headers.get("x-amz-bucket-region")
        return InvalidUriPath(
            f"{where}: S3 says the bucket is in {actual or 'another region'}, not in "
            f"{region} as the job's UriPath says ({said}); register the job with the "
            f"bucket's own region: https://<bucket>.s3.{actual or '<region>'}.amazonaws.com/<folder>/"
        )
    if code == "NoSuchBucket":
        return NoSuchKey(f"{where}: the bucket does not exist")
    if status == 404 or code == "NoSuchKey":
        return NoSuchKey(f"{where} does not exist")
    if status == 403:
        return AccessDenied(
            f"S3 refused the job's role access to {where} ({said}); the role's policy "
            "must allow s3:GetObject and s3:ListBucket there"
        )
    if status == 412:
        return SourceChanged(f"{where} changed during the transfer (its ETag no longer matches)")
    if status == 416:
        size = _content_range(headers.get("content-range", ""))[2]
        return InvalidRange(f"the range lies outside {where} ({size} bytes)", size)
    if status == 429 or (status == 503 and code in ("", "SlowDown")) or code in THROTTLE_CODES:
        return TransientError(f"S3 is throttling: {said}", "throttled")
    if status >= 500 or code in ("RequestTimeout", "InternalError"):
        return TransientError(f"S3 server error: {said}", "server_error")
    return ObjectStoreError(f"S3 answered {said} for {where}")


def _error_document(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


def _content_range(value: str) -> tuple[int, int, int]:
    """'bytes a-b/size' -> (a, b, size); 'bytes */size' -> (-1, -1, size); -1 when absent."""
    unit, _, rest = value.partition(" ")
    span, _, size = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        if unit != "bytes":
            raise ValueError(value)
        total = int(size) if size.isdigit() else -1
        if span == "*":
            return -1, -1, total
        return int(first), int(last), total
    except ValueError:
        return -1, -1, -1


def _range_meta(status: int, headers: Mapping[str, str], start: int, end: int | None) -> RangeMeta:
    length = int(headers.get("content-length", "-1"))
    if status == 206:
        first, last, size = _content_range(headers.get("content-range", ""))
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
        checksums={
            a: headers[f"x-amz-checksum-{a.lower()}"]
            for a in CHECKSUM_ALGORITHMS
            if f"x-amz-checksum-{a.lower()}" in headers
        },
        checksum_type=headers.get("x-amz-checksum-type"),
    )
