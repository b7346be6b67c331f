"""API errors and the one table from error code to HTTP status.

auth/ and transfer/ raise their own errors (each with a `.code`); the API
turns any of them into `{"Error": {"Code", "Message"}}` with the status
below. An exception without a known code is a bug of ours: it answers 500
InternalError with a message that hides the details (they go to the log).
"""

from __future__ import annotations

from typing import Any

from s3feed.auth import AuthError
from s3feed.transfer import InvalidRange, TransferError

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


class ApiError(Exception):
    """An error the API layer itself decides (envelope, ownership, routing)."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def describe(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """(status, code, message, headers) for any exception."""
    if isinstance(exc, ApiError):
        return STATUS_BY_CODE[exc.code], exc.code, exc.message, exc.headers
    if isinstance(exc, AuthError | TransferError):
        code = exc.code if exc.code in STATUS_BY_CODE else "InternalError"
        headers = {}
        if isinstance(exc, InvalidRange):
            headers["Content-Range"] = f"bytes */{exc.size}"
        return STATUS_BY_CODE[code], code, exc.message, headers
    return 500, "InternalError", "internal error; the daemon's log has the details", {}


def s3_ids(exc: BaseException) -> dict[str, str]:
    """S3's request ids of an error S3 answered, as Error fields (RequestId, HostId)."""
    ids = {"RequestId": getattr(exc, "request_id", None), "HostId": getattr(exc, "host_id", None)}
    return {k: v for k, v in ids.items() if isinstance(v, str) and v}


def error_body(
    code: str, message: str, detail: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message, **(detail or {})}, **extra}
