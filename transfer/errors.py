"""Errors of the data path.

    CodedError                   auth/errors.py: .code .message .request_id .host_id
    └── TransferError            .code is the API error code (docs/design.md, Socket API)
        ├── InvalidUriPath           the job's UriPath is not an accepted S3 form
        ├── InvalidKey               a key or prefix would leave the job's folder, or is malformed
        ├── InvalidRange             the requested byte range lies outside the object
        ├── InvalidContinuationToken a listing's token is not one the store issued
        ├── IncompleteBody           an output's body ended before its Content-Length, or its
        │                            client went away
        ├── ObjectStoreError         S3 answered, finally
        │   ├── NoSuchKey
        │   ├── AccessDenied         S3 refused the job's role
        │   └── SourceChanged        If-Match failed: the object changed during the transfer
        ├── TransientError           worth retrying: .reason is the retry label for metrics
        ├── S3Unavailable            retries exhausted; the message names the last cause
        ├── ChecksumMismatch         bytes did not match what S3 says they are (retried, then final)
        ├── InsufficientStorage      the cache cannot make room
        ├── AclUnsupported           also an OSError: the cache's file system keeps no POSIX ACLs
        └── Cancelled                the job or the reader went away

S3's answers (status, error document, request ids) become these in
transfer/s3/translate.py, the upload calls' in transfer/s3/uploader.py;
translate.py's `Expired` is a signal to refresh and resend, not an error of
this tree.
Messages say what to fix and never contain a secret.
"""

from __future__ import annotations

from s3feed.auth import CodedError


class TransferError(CodedError):
    pass


class InvalidUriPath(TransferError):
    code = "InvalidUriPath"


class InvalidKey(TransferError):
    code = "InvalidKey"


class InvalidRange(TransferError):
    code = "InvalidRange"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class InvalidContinuationToken(TransferError):
    code = "InvalidRequest"


class IncompleteBody(TransferError):
    """The body ended before its Content-Length, or the client went away."""

    code = "IncompleteBody"


class ObjectStoreError(TransferError):
    pass


class NoSuchKey(ObjectStoreError):
    code = "NoSuchKey"


class AccessDenied(ObjectStoreError):
    code = "AccessDenied"


class SourceChanged(ObjectStoreError):
    code = "SourceChanged"


class TransientError(TransferError):
    """A failure worth retrying. `reason` is one of RETRY_REASONS."""

    code = "S3Unavailable"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# The label values of s3feed_range_retries_total{reason}.
RETRY_REASONS = (
    "server_error",  # 5xx other than SlowDown
    "throttled",  # 503 SlowDown, 429, Throttling
    "reset",  # connection reset/refused/closed early
    "truncated",  # body shorter than Content-Length
    "stall",  # no byte for stall_timeout
    "expired_token",  # S3 said ExpiredToken; refreshed and retried
    "checksum",  # bytes did not match a checksum
)


class S3Unavailable(TransferError):
    code = "S3Unavailable"


class ChecksumMismatch(TransferError):
    code = "ChecksumMismatch"


class InsufficientStorage(TransferError):
    code = "InsufficientStorage"


class AclUnsupported(TransferError, OSError):
    """The file system of the cache directory does not store POSIX ACLs.

    An OSError too: callers that set an ACL catch OSError and fail closed
    (transfer/cache/grants.py); `errno` is the one the kernel answered, if any."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class Cancelled(TransferError):
    code = "Cancelled"
