"""`S3Uploader`: the UploadClient of one job's destination bucket.

Each request goes through the daemon's one S3 client (transfer/s3/client.py:
its pool, proxies and CA bundle), signed with `await credentials.current()`
and payload UNSIGNED-PAYLOAD: every body carries its CRC32C, which S3 checks,
so the part is not hashed a second time. The engine (transfer/upload/multipart.py) sees
only the `UploadClient` methods.

ExpiredToken forces a refresh and one retry, as for reads. S3's errors are
translated in `_error`: a 403 names the permission the operation needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from xml.sax.saxutils import escape

from s3feed.auth import Credentials, CredentialSource
from s3feed.transfer.errors import (
    AccessDenied,
    NoSuchKey,
    ObjectStoreError,
    TransferError,
    TransientError,
)
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.translate import (
    EXPIRED_CODES,
    THROTTLE_CODES,
    Expired,
    error_document,
    with_refresh,
)
from s3feed.transfer.upload import CHECKSUM, PartDone
from s3feed.transfer.uri import S3Location

PERMISSION = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
}
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_QUOTE = {'"': "&quot;"}  # ETags carry quotes; escape() does &, < and >


class S3Uploader:
    def __init__(
        self,
        location: S3Location,
        credentials: CredentialSource,
        *,
        client: S3Client,
        observer: TransferObserver,
        stall_timeout: float = 30.0,
    ) -> None:
        self.location = location
        self.bucket = location.bucket
        self._credentials = credentials
        self._client = client
        self._observer = observer
        self._stall = stall_timeout

    # -- UploadClient -------------------------------------------------------------------

    async def put_object(
        self, key: str, body: memoryview, checksum: str, headers: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        h = {**headers, "x-amz-checksum-crc32c": checksum}
        _, head, _ = await self._send("PutObject", "PUT", key, {}, h, body)
        return head.get("etag", ""), _echoed(head)

    async def create_multipart(self, key: str, headers: Mapping[str, str]) -> str:
        h = {**headers, "x-amz-checksum-algorithm": CHECKSUM}
        _, _, doc = await self._send("CreateMultipartUpload", "POST", key, {"uploads": ""}, h)
        upload_id = _find(doc, "UploadId")
        if not upload_id:
            raise TransientError(
                "S3 answered CreateMultipartUpload without an UploadId", "server_error"
            )
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: memoryview, checksum: str
    ) -> str:
        query = {"partNumber": str(number), "uploadId": upload_id}
        h = {"x-amz-checksum-crc32c": checksum}
        _, head, _ = await self._send("UploadPart", "PUT", key, query, h, body)
        return head.get("etag", "")

    async def complete(
        self, key: str, upload_id: str, parts: list[PartDone]
    ) -> tuple[str, dict[str, str]]:
        xml = "".join(
            f"<Part><PartNumber>{p.number}</PartNumber><ETag>{escape(p.etag, _QUOTE)}</ETag>"
            f"<Checksum{CHECKSUM}>{p.checksum}</Checksum{CHECKSUM}></Part>"
            for p in parts
        )
        body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        query = {"uploadId": upload_id}
        _, _, doc = await self._send(
            "CompleteMultipartUpload", "POST", key, query, {}, memoryview(body)
        )
        checksum = _find(doc, f"Checksum{CHECKSUM}")
        return _find(doc, "ETag"), {CHECKSUM: checksum} if checksum else {}

    async def abort(self, key: str, upload_id: str) -> None:
        query = {"uploadId": upload_id}
        with contextlib.suppress(NoSuchKey):  # NoSuchUpload: already gone
            await self._send("AbortMultipartUpload", "DELETE", key, query, {})

    async def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        marker = ""
        while True:
            query = {"prefix": prefix, "uploads": ""}
            if marker:
                query = {"key-marker": marker, **query}
            _, _, doc = await self._send("ListMultipartUploads", "GET", "", query, {})
            root = ET.fromstring(doc) if doc else None
            if root is None:
                return found
            for up in root.iter(f"{_NS}Upload"):
                found.append((up.findtext(f"{_NS}Key") or "", up.findtext(f"{_NS}UploadId") or ""))
            if root.findtext(f"{_NS}IsTruncated") != "true":
                return found
            marker = root.findtext(f"{_NS}NextKeyMarker") or ""
            if not marker:
                return found

    # -- one signed request -------------------------------------------------------------

    async def _send(
        self,
        op: str,
        method: str,
        key: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: memoryview | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        return await with_refresh(
            self._credentials,
            op,
            lambda creds: self._attempt(creds, op, method, key, query, headers, body),
        )

    async def _attempt(
        self,
        creds: Credentials,
        op: str,
        method: str,
        key: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: memoryview | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        size = len(body) if body is not None else 0
        h = {**headers, "Content-Length": str(size)}
        # The stall clock starts when the request is written: give the body time
        # to leave at 1 MiB/s before waiting for the answer counts as a stall.
        stall = self._stall + size / (1024 * 1024)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._client.open(
                self.location,
                creds,
                method,
                key,
                query,
                h,
                body if body is not None else b"",
                stall_timeout=stall,
                unsigned_payload=True,
            ) as resp:
                doc = await resp.read(1024 * 1024)
                status, resp_headers = resp.status, dict(resp.headers)
        except TransientError as e:
            self._observer.s3_request_error(op, e.reason)
            raise
        self._observer.s3_request(op, loop.time() - started)
        code, message = (
            error_document(doc) if (status >= 300 or op == "CompleteMultipartUpload") else ("", "")
        )
        if status < 300 and not code:
            return status, resp_headers, doc
        self._observer.s3_request_error(op, code or str(status))
        raise self._error(op, status, code, message, key, creds, resp_headers)

    def _error(
        self,
        op: str,
        status: int,
        code: str,
        message: str,
        key: str,
        creds: Credentials,
        headers: Mapping[str, str],
    ) -> Exception:
        if code in EXPIRED_CODES or (code == "InvalidAccessKeyId" and creds.session_token):
            return Expired(code)
        where = f"s3://{self.bucket}/{key}"
        said = f"{status} {code}: {message}" if message else f"{status} {code}".strip()
        error: TransferError
        if status == 403:
            error = AccessDenied(
                f"S3 refused the job's role {op} on {where} ({said}); the role's policy must "
                f"allow {PERMISSION.get(op, 's3:PutObject')} on the destination folder"
                + (
                    ", and kms:GenerateDataKey on the destination's KMS key"
                    if "KMS" in message
                    else ""
                )
            )
        elif code in ("NoSuchUpload", "NoSuchBucket") or status == 404:
            error = NoSuchKey(f"{where}: {said}")
        elif status == 429 or code in THROTTLE_CODES or (status == 503 and not code):
            error = TransientError(f"S3 is throttling: {said}", "throttled")
        elif status >= 500 or code in ("RequestTimeout", "InternalError"):
            error = TransientError(f"S3 server error: {said}", "server_error")
        else:
            error = ObjectStoreError(f"S3 answered {said} for {op} on {where}")
        request_id = headers.get("x-amz-request-id")
        if request_id:
            error.request_id, error.host_id = request_id, headers.get("x-amz-id-2")
            error.message += f" (S3 request id {request_id})"
        return error


def _echoed(headers: Mapping[str, str]) -> dict[str, str]:
    value = headers.get(f"x-amz-checksum-{CHECKSUM.lower()}")
    return {CHECKSUM: value} if value else {}


def _find(doc: bytes, name: str) -> str:
    try:
        root = ET.fromstring(doc)
    except ET.ParseError:
        return ""
    return root.findtext(f"{_NS}{name}") or root.findtext(name) or ""
