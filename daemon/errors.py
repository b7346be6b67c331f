"""API errors and the one table from error code to HTTP status.

    CodedError                   auth/errors.py: .code .message .request_id .host_id
    ├── AuthError                auth/errors.py: STS, the job's session
    ├── TransferError            transfer/errors.py: the data path, the cache, S3's answers
    └── ApiError                 the API's own decisions (envelope, ownership, routing,
        │                        limits): .code chosen when raised, .headers (Retry-After)
        ├── FetchFailed          a started fetch failed: its error, and the fetch
        │                        document the answer carries
        └── OutputClosed         a delivery's reader closed its end before the last byte

Any of them answers `{"Error": {"Code", "Message"}}` (plus S3's RequestId and
HostId when S3 answered it) with the status below for its code. An
exception that is not a CodedError is a bug of ours: it answers 500
InternalError with a message that hides the details (they go to the log).
`ConfigError` (daemon/config.py), `SocketInUse` (daemon/service.py) and the
CLI's `CliError` (daemon/cli/exits.py) are not in the tree: they stop
start-up or a command and never answer a request.
"""

from __future__ import annotations

from typing import Any

from s3feed.auth import CodedError
from s3feed.transfer import InvalidRange

STATUS_BY_CODE: dict[str, int] = {
    "InvalidRequest": 400,
    "InvalidProvider": 400,
    "InvalidUriPath": 400,
    "InvalidRoleArn": 400,
    "InvalidDuration": 400,
    "InvalidTenantName": 400,
    "InvalidKey": 400,
    "NoDestination": 400,
    "IncompleteBody": 400,
    "SessionPolicyTooLarge": 400,
    "AssumeRoleDenied": 403,
    "AccessDenied": 403,
    "Forbidden": 403,
    "NoSuchJob": 404,
    "NoSuchKey": 404,
    "NoSuchFetch": 404,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "JobExists": 409,
    "SourceChanged": 409,
    "RequestTimeout": 408,
    "RequestTooLarge": 413,
    "InvalidRange": 416,
    "InternalError": 500,
    "ChecksumMismatch": 502,
    "CredentialsExpired": 503,
    "StsUnavailable": 503,
    "S3Unavailable": 503,
    "ShuttingDown": 503,
    "InsufficientStorage": 507,
    "LimitExceeded": 429,
    "Cancelled": 409,
    "OutputClosed": 409,
}


class ApiError(CodedError):
    """An error the API layer itself decides (envelope, ownership, routing)."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code}")
        super().__init__(message)
        self.code = code
        self.headers = headers or {}


class FetchFailed(ApiError):
    """A started fetch failed (before a byte moved, or while the answer waited
    for it): its error, plus the fetch document the answer carries
    (docs/design.md, Socket API: fetches)."""

    def __init__(self, code: str, message: str, fetch_document: dict[str, Any]) -> None:
        super().__init__(code if code in STATUS_BY_CODE else "InternalError", message)
        self.fetch_document = fetch_document
        error = fetch_document.get("Error", {})
        self.request_id, self.host_id = error.get("RequestId"), error.get("HostId")


class OutputClosed(ApiError):
    """A delivery's output: its reader closed it (EPIPE) before the last byte."""

    def __init__(self, message: str) -> None:
        super().__init__("OutputClosed", message)


def describe(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """(status, code, message, headers) for any exception."""
    if not isinstance(exc, CodedError):
        return 500, "InternalError", "internal error; the daemon's log has the details", {}
    code = exc.code if exc.code in STATUS_BY_CODE else "InternalError"
    headers = exc.headers if isinstance(exc, ApiError) else {}
    if isinstance(exc, InvalidRange):
        headers = {"Content-Range": f"bytes */{exc.size}"}
    return STATUS_BY_CODE[code], code, exc.message, headers


def s3_ids(exc: BaseException) -> dict[str, str]:
    """S3's request ids of an error S3 answered, as Error fields (RequestId, HostId)."""
    if not isinstance(exc, CodedError):
        return {}
    ids = {"RequestId": exc.request_id, "HostId": exc.host_id}
    return {k: v for k, v in ids.items() if isinstance(v, str) and v}


def error_body(
    code: str, message: str, detail: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message, **(detail or {})}, **extra}
