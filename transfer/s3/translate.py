"""S3's answers -> transfer/errors.py, in one place for every read (HEAD, LIST, GET).

`translate` maps an error status (and, where S3 sent one, its error
document's Code and Message) to the error the caller acts on, carrying S3's
request ids (docs/design.md, Socket API). `Expired` is not an error of its own:
it tells the store to refresh the job's credentials and send the request once
more (ExpiredToken: 400 on AWS and ministack; SeaweedFS answers 403
InvalidAccessKeyId once temporary keys lapse; a HEAD has no body to say so).
The upload calls' answers are translated in transfer/s3/uploader.py (a 403
names the permission the call needs), with the codes and `Expired` from here.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from s3feed.auth import Credentials, CredentialSource
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    InvalidUriPath,
    NoSuchKey,
    ObjectStoreError,
    SourceChanged,
    TransferError,
    TransientError,
)

log = logging.getLogger("s3feed.s3")

CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
EXPIRED_CODES = frozenset({"ExpiredToken", "TokenRefreshRequired"})
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)


class Expired(Exception):
    """S3 says the signing credentials expired: refresh and retry once."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


T = TypeVar("T")


async def with_refresh(
    credentials: CredentialSource, what: str, attempt: Callable[[Credentials], Awaitable[T]]
) -> T:
    """`attempt` with the job's current credentials; on `Expired`, once more
    with refreshed ones; expired again is a TransientError naming `what`."""
    try:
        return await attempt(await credentials.current())
    except Expired:
        pass
    try:
        return await attempt(await credentials.refresh_now("expired_token"))
    except Expired as e:
        raise TransientError(
            f"S3 still answered {e.code} for {what} after the job's credentials were refreshed",
            "expired_token",
        ) from None


def translate(
    status: int,
    code: str,
    message: str,
    where: str,
    creds: Credentials,
    headers: Mapping[str, str],
    region: str,
) -> Exception:
    """S3's answer -> transfer/errors.py (or Expired: refresh and retry once),
    carrying S3's request ids in the error, its message and the log."""
    error = _classify(status, code, message, where, creds, headers, region)
    request_id = headers.get("x-amz-request-id") or None
    host_id = headers.get("x-amz-id-2") or None
    log.info(
        "S3 answered an error",
        extra={
            "status": status,
            "s3_code": code or None,
            "where": where,
            "request_id": request_id,
            "host_id": host_id,
        },
    )
    if isinstance(error, TransferError) and request_id:
        error.request_id, error.host_id = request_id, host_id
        error.message += f" (S3 request id {request_id}" + (
            f", host id {host_id})" if host_id else ")"
        )
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
        return Expired(code or str(status))
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
        size = content_range(headers.get("content-range", ""))[2]
        return InvalidRange(f"the range lies outside {where} ({size} bytes)", size)
    if status == 429 or (status == 503 and code in ("", "SlowDown")) or code in THROTTLE_CODES:
        return TransientError(f"S3 is throttling: {said}", "throttled")
    if status >= 500 or code in ("RequestTimeout", "InternalError"):
        return TransientError(f"S3 server error: {said}", "server_error")
    return ObjectStoreError(f"S3 answered {said} for {where}")


def error_document(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


def content_range(value: str) -> tuple[int, int, int]:
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
